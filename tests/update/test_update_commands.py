"""'jbc update' against the real daemon. RAUC itself is played by a small stand-in program on
PATH that answers 'rauc status' and 'rauc install' the way RAUC 1.8 does (the real RAUC runs
in image/update-test, which installs real bundles in a booted image)."""

from __future__ import annotations

import json
import pathlib
import stat
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

STANDIN = textwrap.dedent('''\
    #!{python}
    """Stand-in for RAUC 1.8's command line: 'status --detailed --output-format=json',
    'install BUNDLE'. Its slots live in state.json next to it."""
    import json, pathlib, sys
    here = pathlib.Path(__file__).resolve().parent
    state_file = here / "state.json"
    state = json.loads(state_file.read_text())
    args = sys.argv[1:]
    (here / "calls.log").open("a").write(" ".join(args) + "\\n")
    if args[:1] == ["status"] and "--output-format=json" in args:
        slots = []
        for name, boot, version in (("rootfs.0", "A", state["A"]), ("rootfs.1", "B", state["B"])):
            slots.append({{name: {{
                "class": "rootfs", "device": "/dev/disk/by-partlabel/rootfs-" + boot.lower(),
                "type": "ext4", "bootname": boot,
                "state": "booted" if boot == state["booted"] else "inactive",
                "boot_status": "good" if version else "bad",
                "slot_status": {{"bundle": {{"version": version}}}} if version else {{}}}}}})
        print(json.dumps({{"compatible": "jbc-appliance-test", "booted": state["booted"],
                          "boot_primary": "rootfs.0", "slots": slots}}))
        sys.exit(0)
    if args[:1] == ["install"]:
        bundle = pathlib.Path(args[1])
        if not bundle.exists():
            print("Failed to check bundle: " + str(bundle) + ": No such file", file=sys.stderr)
            sys.exit(1)
        content = bundle.read_text()
        if content.startswith("unsigned"):
            print("installing `%s`: started" % bundle)
            print("  0% Installing")
            print("  0% Checking bundle")
            print("LastError: Failed to verify bundle: signature verification failed")
            sys.exit(1)
        print("installing `%s`: started" % bundle)
        for percent, what in ((0, "Installing"), (20, "Checking bundle"),
                              (40, "Copying image to rootfs.1"), (100, "Installing done.")):
            print("%3d%% %s" % (percent, what), flush=True)
        other = "B" if state["booted"] == "A" else "A"
        state[other] = content.strip()
        state_file.write_text(json.dumps(state))
        print("installing `%s`: succeeded" % bundle)
        sys.exit(0)
    print("stand-in: unexpected rauc " + " ".join(args), file=sys.stderr)
    sys.exit(2)
    ''')

WAN_ON_LOOPBACK = """
[wan]
interface = "lo"
require_default_route = false

[[wan.targets]]
name = "loopback"
role = "cloud"
region = "here"
kind = "icmp"
address = "127.0.0.1"
"""


@pytest.fixture
def rauc_standin(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = bin_dir / "rauc"
    program.write_text(STANDIN.format(python=sys.executable))
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    (bin_dir / "state.json").write_text(json.dumps({"booted": "A", "A": "1.0", "B": ""}))
    return bin_dir


@pytest.fixture
def image_daemon(daemon_factory, tmp_path, rauc_standin):
    """jbcd as on the image: a RAUC system config, the update state dir, RAUC on PATH."""
    system_conf = tmp_path / "system.conf"
    system_conf.write_text("[system]\ncompatible=jbc-appliance-test\n")
    state = tmp_path / "update"
    state.mkdir()

    def make(extra: str = ""):
        config = (f'[update]\nrauc_system_config = "{system_conf}"\n'
                  f'state_dir = "{state}"\n' + extra)
        env = {"PATH": f"{rauc_standin}:/usr/bin:/bin"}
        return daemon_factory(config, env=env).start()

    return make


def bundle(tmp_path: pathlib.Path, content: str = "2.0") -> pathlib.Path:
    path = tmp_path / "update.raucb"
    path.write_text(content + "\n")
    return path


def test_outside_the_image_updates_say_they_are_unavailable(daemon):
    result = daemon.cli("update", "status")
    assert result.returncode == 1
    assert result.stdout.startswith("updates unavailable: ")
    assert "installed only on the appliance's OS image" in result.stdout
    refused = daemon.cli("update", "install", __file__)
    assert refused.returncode == 1
    assert "updates are installed only on the appliance's OS image" in refused.stderr


def test_status_shows_the_slots_and_the_committed_one(image_daemon):
    daemon = image_daemon()
    result = daemon.cli("update", "status")
    assert result.returncode == 0, result.stderr
    assert "running slot A, committed" in result.stdout
    data = json.loads(daemon.cli("--json", "update", "status").stdout)
    assert data["booted"] == "A" and data["committed"] == "A" and data["trial"] is False
    assert [s["bootname"] for s in data["slots"]] == ["A", "B"]
    assert data["slots"][0]["bundle_version"] == "1.0"
    assert data["may_install_now"] is True


def test_install_reports_progress_and_asks_for_the_reboot(image_daemon, tmp_path,
                                                          rauc_standin):
    daemon = image_daemon()
    result = daemon.cli("update", "install", str(bundle(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert " 40% Copying image to rootfs.1" in result.stdout
    assert "reboot: now" in result.stdout
    request = daemon.runtime_dir / "reboot-requested"
    assert "rebooting into the installed update (asked by root)" in request.read_text()
    state = json.loads((rauc_standin / "state.json").read_text())
    assert state["B"] == "2.0"
    kinds = [e["kind"] for e in daemon.call("events", {"subsystem": "update"})["events"]]
    assert {"install-started", "installed", "reboot-requested"} <= set(kinds)


def test_install_without_reboot_leaves_the_reboot_to_the_admin(image_daemon, tmp_path):
    daemon = image_daemon()
    result = daemon.cli("update", "install", "--no-reboot", str(bundle(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "not requested" in result.stdout
    assert not (daemon.runtime_dir / "reboot-requested").exists()
    rebooted = daemon.cli("update", "reboot")
    assert rebooted.returncode == 0 and "reboot: now" in rebooted.stdout
    assert (daemon.runtime_dir / "reboot-requested").exists()


def test_a_bundle_rauc_rejects_fails_with_raucs_reason(image_daemon, tmp_path):
    daemon = image_daemon()
    result = daemon.cli("update", "install", str(bundle(tmp_path, "unsigned junk")))
    assert result.returncode == 1
    assert "signature verification failed" in result.stderr
    assert not (daemon.runtime_dir / "reboot-requested").exists()
    data = json.loads(daemon.cli("--json", "update", "status").stdout)
    assert data["install"]["state"] == "failed"


def test_a_missing_bundle_is_a_usage_error(image_daemon, tmp_path):
    daemon = image_daemon()
    result = daemon.cli("update", "install", str(tmp_path / "nope.raucb"))
    assert result.returncode == 2
    assert "no such file" in result.stderr


def test_no_install_during_an_outage_unless_forced(image_daemon, tmp_path, rauc_standin):
    daemon = image_daemon(WAN_ON_LOOPBACK)
    forced = daemon.cli("failover", "force", "--reason", "drill")
    assert forced.stdout.startswith("FORCED since "), forced.stderr
    result = daemon.cli("update", "install", str(bundle(tmp_path)))
    assert result.returncode == 1
    assert "not installing now: the appliance is serving the site's phones (WAN forced)" in \
        result.stderr
    assert not (rauc_standin / "calls.log").exists() or "install" not in \
        (rauc_standin / "calls.log").read_text()
    status = json.loads(daemon.cli("--json", "update", "status").stdout)
    assert status["may_install_now"] is False
    kinds = [e["kind"] for e in daemon.call("events", {"subsystem": "update"})["events"]]
    assert "install-refused" in kinds
    result = daemon.cli("update", "install", "--force", str(bundle(tmp_path)))
    assert result.returncode == 0, result.stderr
    assert "reboot: now" in result.stdout


def test_only_admins_may_install(daemon):
    commands = {c["name"]: c["role"] for c in daemon.call("commands")["commands"]}
    assert commands["update.install"] == "admin"
    assert commands["update.reboot"] == "admin"
    assert commands["update.status"] == "technician"


def test_a_bundle_jbcd_cannot_see_is_refused_with_where_to_put_it(image_daemon, tmp_path):
    from appliance.cli.client import ClientError

    daemon = image_daemon()
    with daemon.client() as client, pytest.raises(ClientError) as refused:
        list(client.stream("update.install", {"bundle": str(tmp_path / "hidden.raucb")}))
    assert refused.value.code == "not_found"
    assert "copy update bundles to /data/updates" in refused.value.message
