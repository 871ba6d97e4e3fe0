"""The control socket: roles from peer credentials, and no client can crash or block it."""

from __future__ import annotations

import contextlib
import errno
import grp
import json
import os
import pathlib
import shutil
import socket
import stat
import sys
import tempfile
import time

import pytest

from appliance.cli.main import main as cli_main
from appliance.control.socket_access import ACL_XATTR, decode_acl
from jbcbench.daemon import DaemonProcess
from jbcbench.localusers import HeldConnections, shared_workdir

pytestmark = pytest.mark.integration

NOBODY = 65534


def _group(name: str) -> int | None:
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        return None


TECH_GROUP, ADMIN_GROUP = "users", "staff"  # present on every Debian system


def converse(path: pathlib.Path, lines: list[bytes], *, timeout: float = 5.0) -> list[dict]:
    """Send raw lines on one connection, read one JSON response per line (or until EOF)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        responses, buffer = [], b""
        for line in lines:
            with contextlib.suppress(BrokenPipeError):  # refused at accept: read the reason
                sock.sendall(line)
            while b"\n" not in buffer:
                chunk = sock.recv(65536)
                if not chunk:
                    return responses
                buffer += chunk
            raw, buffer = buffer.split(b"\n", 1)
            responses.append(json.loads(raw))
        return responses


def converse_on(sock: socket.socket, lines: list[bytes]) -> list[dict]:
    sock.settimeout(5)
    responses = []
    for line in lines:
        sock.sendall(line)
        buffer = b""
        while not buffer.endswith(b"\n"):
            chunk = sock.recv(65536)
            assert chunk, "connection closed"
            buffer += chunk
        responses.append(json.loads(buffer))
    return responses


def request(command: str, **args) -> bytes:
    return json.dumps({"id": 1, "command": command, "args": args}).encode() + b"\n"


def as_user(path: pathlib.Path, uid: int, gids: list[int], command: str, **args) -> dict:
    """Fork, drop to ``uid`` with supplementary ``gids``, send one request, return the answer."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(read_end)
            os.setgroups(gids)
            os.setgid(gids[0] if gids else NOBODY)
            os.setuid(uid)
            try:
                answer = converse(path, [request(command, **args)])[0]
            except PermissionError as error:
                answer = {"connect_error": error.errno}
            os.write(write_end, json.dumps(answer).encode())
        except BaseException as error:  # report anything to the parent
            os.write(write_end, json.dumps({"child_error": repr(error)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    os.waitpid(pid, 0)
    answer = json.loads(data)
    assert "child_error" not in answer, answer
    return answer


@pytest.fixture
def shared_daemon():
    """A daemon whose socket other users can reach (pytest's tmp dirs are root-only)."""
    if os.geteuid() != 0:
        pytest.skip("role tests switch to other users and need root")
    if _group(TECH_GROUP) is None or _group(ADMIN_GROUP) is None:
        pytest.skip(f"needs the standard groups {TECH_GROUP!r} and {ADMIN_GROUP!r}")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="jbcd-roles-"))
    workdir.chmod(0o755)
    daemon = DaemonProcess(workdir, f"""
[daemon]
debug_commands = true
[control]
admin_group = "{ADMIN_GROUP}"
technician_group = "{TECH_GROUP}"
""")
    daemon.start()
    daemon.runtime_dir.chmod(0o755)
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def test_technician_may_read_status_and_events(shared_daemon):
    tech = [_group(TECH_GROUP)]
    assert as_user(shared_daemon.socket_path, NOBODY, tech, "status")["ok"] is True
    assert as_user(shared_daemon.socket_path, NOBODY, tech, "events")["ok"] is True


def test_technician_may_not_change_behaviour(shared_daemon):
    answer = as_user(shared_daemon.socket_path, NOBODY, [_group(TECH_GROUP)], "debug.stall",
                     seconds=0.01)
    assert answer["ok"] is False
    assert answer["error"]["code"] == "permission_denied"
    assert "admin role" in answer["error"]["message"] and ADMIN_GROUP in answer["error"]["message"]


def test_user_in_neither_group_cannot_connect_and_jbc_says_what_to_do(shared_daemon):
    answer = as_user(shared_daemon.socket_path, NOBODY, [NOBODY], "status")
    assert answer == {"connect_error": errno.EACCES}
    code, stderr = cli_as(NOBODY, [NOBODY], ["--socket", str(shared_daemon.socket_path),
                                              "status"])
    assert code == 4, stderr
    assert "ask an admin to add you to the jbc-tech group" in stderr


def cli_as(uid: int, gids: list[int], argv: list[str]) -> tuple[int, str]:
    """Run 'jbc' (its main(), in a forked child) as ``uid``; returns (exit status, stderr)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        code = 99
        try:
            os.dup2(write_end, 2)
            sys.stderr = os.fdopen(2, "w", closefd=False)
            os.setgroups(gids)
            os.setgid(gids[0])
            os.setuid(uid)
            code = cli_main(argv)
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), data.decode()


def test_the_socket_admits_only_its_owner_root_and_the_control_groups(shared_daemon):
    path = shared_daemon.socket_path
    assert stat.S_IMODE(path.stat().st_mode) == 0o660  # the group bits show the ACL's mask
    entries = decode_acl(os.getxattr(path, ACL_XATTR))
    assert entries == [("user_obj", None, 6), ("group_obj", None, 0),
                       *sorted(("group", gid, 6) for gid in (_group(TECH_GROUP),
                                                              _group(ADMIN_GROUP))),
                       ("mask", None, 6), ("other", None, 0)]


def test_without_the_acl_a_user_without_a_role_is_closed_at_once_and_journalled(
        shared_daemon):
    path = shared_daemon.socket_path
    os.removexattr(path, ACL_XATTR)
    path.chmod(0o666)  # as if the file system had no ACLs
    for _ in range(20):
        answer = as_user(path, NOBODY, [NOBODY], "status")
        assert answer["error"]["code"] == "permission_denied"
        assert TECH_GROUP in answer["error"]["message"]
    refused = [e for e in shared_daemon.call("events", {"subsystem": "control"})["events"]
               if e["kind"] == "access-refused"]
    assert len(refused) == 1  # rate-limited: one entry a minute per user and refusal
    assert refused[0]["actor"].startswith("nobody (uid 65534, no access)")
    assert refused[0]["details"]["code"] == "permission_denied"
    assert shared_daemon.call("status")["subsystems"][0]["details"]["refusals"] == 20


def test_a_technicians_refused_command_is_journalled(shared_daemon):
    as_user(shared_daemon.socket_path, NOBODY, [_group(TECH_GROUP)], "debug.stall", seconds=0.01)
    refused = [e for e in shared_daemon.call("events", {"subsystem": "control"})["events"]
               if e["kind"] == "access-refused"]
    assert [(e["details"]["command"], e["details"]["code"]) for e in refused] == [
        ("debug.stall", "permission_denied")]


def test_admin_group_member_may_act_and_the_action_is_journalled_with_who(shared_daemon):
    answer = as_user(shared_daemon.socket_path, NOBODY, [_group(ADMIN_GROUP)], "debug.stall",
                     seconds=0.01)
    assert answer == {"id": 1, "ok": True, "result": {"stalled_s": 0.01}}
    events = shared_daemon.call("events", {"subsystem": "control"})["events"]
    (action,) = [e for e in events if e["kind"] == "technician-action"]
    assert action["reason"] == "debug.stall: done"
    assert action["actor"].startswith("nobody (uid 65534, admin)")
    assert action["details"]["args"] == {"seconds": 0.01}


def test_garbage_gets_a_json_error_and_the_connection_keeps_working(daemon):
    answers = converse(daemon.socket_path, [
        b"\x00\xff\xfe not json at all\n",
        b"[1, 2, 3]\n",
        b'{"command": 5}\n',
        b'{"command": "status", "args": "x"}\n',
        b'{"command": "status", "surprise": 1}\n',
        request("no.such.command"),
        request("status"),
    ])
    codes = [a.get("error", {}).get("code") for a in answers]
    assert codes == ["bad_request"] * 5 + ["unknown_command", None]
    assert answers[-1]["ok"] is True and answers[-1]["result"]["state"] == "unconfigured"


def test_bad_arguments_are_refused_not_crashed_on(daemon):
    (answer,) = converse(daemon.socket_path, [request("events", limit="many")])
    assert answer["error"]["code"] == "bad_request" and "'limit'" in answer["error"]["message"]


def test_oversized_request_is_refused_while_other_clients_are_served(daemon_factory):
    daemon = daemon_factory("[control]\nmax_request_bytes = 4096\n").start()
    with socket.socket(socket.AF_UNIX) as hog:
        hog.connect(str(daemon.socket_path))
        hog.sendall(b'{"command": "status", "args": {"pad": "' + b"x" * 10000)
        # While the hog's request is being refused, another client is served normally.
        assert daemon.call("status")["state"] == "unconfigured"
        hog.settimeout(5)
        answer = json.loads(hog.recv(65536).split(b"\n")[0])
        assert answer["error"]["code"] == "too_large"
        assert hog.recv(65536) == b""  # closed after the refusal
    assert daemon.call("status")["state"] == "unconfigured"


def test_a_client_that_stalls_mid_request_blocks_nobody_and_is_timed_out(daemon_factory):
    daemon = daemon_factory("[control]\nidle_timeout_s = 1\n").start()
    with socket.socket(socket.AF_UNIX) as staller:
        staller.connect(str(daemon.socket_path))
        staller.sendall(b'{"command": "sta')
        started = time.monotonic()
        for _ in range(5):
            assert daemon.call("status")["state"] == "unconfigured"
        assert time.monotonic() - started < 1.0
        staller.settimeout(5)
        answer = json.loads(staller.recv(65536).split(b"\n")[0])
        assert answer["error"]["code"] == "timeout"


def test_clients_beyond_the_limit_are_told_to_retry(daemon_factory):
    daemon = daemon_factory("[control]\nmax_clients = 2\nadmin_reserved_clients = 1\n").start()
    held = []
    try:
        for _ in range(2):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(daemon.socket_path))
            held.append(sock)
            (served,) = converse_on(sock, [request("status")])  # admitted: holds a slot
            assert served["ok"] is True
        (answer,) = converse(daemon.socket_path, [request("status")])
        assert answer["error"]["code"] == "busy"
    finally:
        for sock in held:
            sock.close()
    assert wait_served(daemon)["state"] == "unconfigured"


def wait_served(daemon, timeout_s: float = 10.0) -> dict:
    """'status' once a slot is free again (closed connections are released as they end)."""
    deadline = time.monotonic() + timeout_s
    while True:
        (answer,) = converse(daemon.socket_path, [request("status")])
        if answer["ok"] or time.monotonic() > deadline:
            return answer.get("result", answer)


def test_a_second_daemon_refuses_to_steal_a_live_socket(daemon, daemon_factory):
    second = daemon_factory(runtime_dir=daemon.runtime_dir)
    second.start(wait=False)
    assert second.proc.wait(15) == 1
    assert "another jbcd is already serving" in second.log()
    assert daemon.call("status")["state"] == "unconfigured"


def test_a_stale_socket_from_a_crashed_daemon_is_replaced(daemon_factory):
    daemon = daemon_factory()
    daemon.runtime_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(daemon.socket_path))
    stale.close()  # bound, never listening: what a SIGKILLed daemon leaves behind
    daemon.start()
    assert daemon.call("status")["state"] == "unconfigured"


@pytest.fixture
def limited_daemon():
    """A daemon with room for 6 clients, 2 of them kept for admins, 3 per technician."""
    if os.geteuid() != 0:
        pytest.skip("connection-limit tests switch to other users and need root")
    if _group(TECH_GROUP) is None:
        pytest.skip(f"needs the standard group {TECH_GROUP!r}")
    workdir = shared_workdir("jbcd-limits-")
    daemon = DaemonProcess(workdir, f"""
[control]
technician_group = "{TECH_GROUP}"
max_clients = 6
admin_reserved_clients = 2
max_clients_per_user = 3
""")
    daemon.start()
    daemon.runtime_dir.chmod(0o755)
    yield daemon
    daemon.stop()
    shutil.rmtree(workdir, ignore_errors=True)


def test_technicians_are_limited_per_user_and_can_never_lock_out_an_admin(limited_daemon):
    path, tech = limited_daemon.socket_path, [_group(TECH_GROUP)]
    with HeldConnections(path, uid=NOBODY, gids=tech, count=4) as first:
        assert first.codes() == [None, None, None, "busy"]
        assert "already has 3 control connections" in first.answers[3]["error"]["message"]
        with HeldConnections(path, uid=NOBODY - 1, gids=tech, count=2) as second:
            assert second.codes() == [None, "busy"]
            assert "kept for admins" in second.answers[1]["error"]["message"]
            with HeldConnections(path, uid=0, gids=[0], count=3) as admins:
                assert admins.codes() == [None, None, "busy"]  # the reserved slots, then full
    assert wait_served(limited_daemon)["state"] == "unconfigured"


def test_a_request_nested_5000_deep_is_refused_without_a_traceback(daemon):
    deep = b'{"command": "status", "args": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}\n"
    first, second = converse(daemon.socket_path, [deep, request("status")])
    assert first["error"]["code"] == "bad_request" and "nested deeper" in first["error"]["message"]
    assert second["ok"] is True
    assert "Traceback" not in daemon.log() and "RecursionError" not in daemon.log()
