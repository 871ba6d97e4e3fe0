"""The control protocol's pure parser and encoder."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.control import protocol
from appliance.control.commands import CommandContext, CommandError, Peer, Role
from appliance.control.peer import RolePolicy


def test_a_well_formed_request_parses():
    request = protocol.parse_request(b'{"id": 3, "command": "events", "args": {"limit": 5}}')
    assert (request.id, request.command, dict(request.args)) == (3, "events", {"limit": 5})


@pytest.mark.parametrize(("line", "words"), [
    (b"", "not JSON"),
    (b"\xff\xfe", "not JSON"),
    (b'{"command": "x", "args": ' + b'[' * 5000 + b']' * 5000 + b'}', "nested deeper than 8"),
    (b'{"command": "x", "args": {"a": ' * 9 + b'1' + b'}' * 18, "nested deeper than 8"),
    (b'{"command": "x", "args": {"n": NaN}}', "finite numbers only"),
    (b'{"command": "x", "args": {"n": 1e999}}', "finite numbers only"),
    (b"[]", "must be a JSON object"),
    (b'{"args": {}}', "missing 'command'"),
    (b'{"command": ""}', "missing 'command'"),
    (b'{"command": "x", "args": []}', "'args' must be a JSON object"),
    (b'{"command": "x", "id": true}', "'id' must be"),
    (b'{"command": "x", "id": [1]}', "'id' must be"),
    (b'{"command": "x", "extra": 1}', "unknown request field"),
])
def test_malformed_requests_raise_a_bad_request(line, words):
    with pytest.raises(protocol.ProtocolError) as caught:
        protocol.parse_request(line)
    assert caught.value.code == "bad_request" and words in caught.value.message


@given(st.binary(max_size=200))
def test_no_input_makes_the_parser_raise_anything_but_a_protocol_error(data):
    with contextlib.suppress(protocol.ProtocolError):
        protocol.parse_request(data)


def test_messages_are_single_json_lines():
    for message in (protocol.result_message(1, {"a": "b\nc"}), protocol.item_message(1, [1]),
                    protocol.done_message(1), protocol.error_message(None, "x", "y")):
        assert message.endswith(b"\n") and message.count(b"\n") == 1
        json.loads(message)


def test_roles_come_from_uid_and_groups():
    policy = RolePolicy(admin_gids=frozenset({50}), technician_gids=frozenset({100}),
                        daemon_uid=999)
    assert policy.role_for(0, []) is Role.ADMIN
    assert policy.role_for(999, []) is Role.ADMIN
    assert policy.role_for(1000, [1000, 50]) is Role.ADMIN
    assert policy.role_for(1000, [1000, 100]) is Role.TECHNICIAN
    assert policy.role_for(1000, [1000]) is Role.NONE


def _context(**args) -> CommandContext:
    peer = Peer(pid=1, uid=0, gid=0, user="root", role=Role.ADMIN)
    return CommandContext(peer=peer, args=args)


def test_command_arguments_are_type_checked():
    assert _context(limit=5).arg("limit", int) == 5
    assert _context(seconds=2).arg("seconds", float) == 2.0
    assert _context().arg("limit", int, 200) == 200
    with pytest.raises(CommandError, match="missing argument 'limit'"):
        _context().arg("limit", int)
    with pytest.raises(CommandError, match="must be an integer"):
        _context(limit=True).arg("limit", int)
    with pytest.raises(CommandError, match="must be one of"):
        _context(mode="x").arg("mode", str, choices=("a", "b"))
