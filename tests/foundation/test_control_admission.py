"""The control socket's admission rules, pure: roles at accept, per-user limits, admin slots,
and rate-limited journalling of refusals."""

from __future__ import annotations

from appliance.control.admission import ConnectionLimits, RefusalLog
from appliance.control.commands import Peer, Role


def peer(uid: int, role: Role) -> Peer:
    return Peer(pid=uid, uid=uid, gid=uid, user=f"u{uid}", role=role)


NOBODY, TECH, TECH2, ROOT = (peer(9, Role.NONE), peer(1000, Role.TECHNICIAN),
                             peer(1001, Role.TECHNICIAN), peer(0, Role.ADMIN))


def test_a_peer_without_a_role_never_takes_a_slot():
    limits = ConnectionLimits(max_clients=4, per_user=4, admin_reserved=1)
    for _ in range(100):
        assert limits.admit(NOBODY, "ask an admin").code == "permission_denied"
    assert limits.open == 0
    assert limits.admit(ROOT, "-") is None


def test_technicians_leave_the_reserved_slots_to_admins():
    limits = ConnectionLimits(max_clients=4, per_user=2, admin_reserved=2)
    assert [limits.admit(p, "-") for p in (TECH, TECH2)] == [None, None]
    refusal = limits.admit(TECH, "-")
    assert refusal.code == "busy" and "kept for admins" in refusal.message
    assert [limits.admit(ROOT, "-") for _ in range(2)] == [None, None]
    assert "the most allowed" in limits.admit(ROOT, "-").message
    limits.release(TECH)
    assert limits.admit(ROOT, "-") is None


def test_one_technician_cannot_take_more_than_their_share():
    limits = ConnectionLimits(max_clients=32, per_user=3, admin_reserved=4)
    assert [limits.admit(TECH, "-") for _ in range(3)] == [None] * 3
    assert "already has 3" in limits.admit(TECH, "-").message
    assert limits.admit(TECH2, "-") is None
    limits.release(TECH)
    assert limits.admit(TECH, "-") is None


def test_refusals_are_journalled_once_a_minute_per_user_and_code_with_the_count():
    log = RefusalLog(interval_s=60)
    assert log.note(NOBODY, "permission_denied", 0.0)["left_out_since_last_entry"] == 0
    assert [log.note(NOBODY, "permission_denied", t) for t in (1.0, 30.0, 59.0)] == [None] * 3
    assert log.note(TECH, "busy", 2.0) is not None  # another user: its own entry
    assert log.note(NOBODY, "busy", 3.0) is not None  # another kind of refusal too
    again = log.note(NOBODY, "permission_denied", 61.0)
    assert again["left_out_since_last_entry"] == 3 and log.total == 7
