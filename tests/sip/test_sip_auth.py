"""Digest authentication (MD5, SHA-256, qop=auth, stale nonces, nonce counts), lockouts and
rate limits, and how the core answers: never revealing which extensions exist."""

from __future__ import annotations

import pytest

from appliance.sip.abuse import AbuseGuard, AbusePolicy
from appliance.sip.digest import Credential, DigestAuthenticator, Verdict, ha1
from appliance.sip.parser import parse_datagram
from jbcbench import sipua

REALM = "jbc"


def authenticator(**kwargs) -> DigestAuthenticator:
    auth = DigestAuthenticator(REALM, **kwargs)
    auth.set_credentials([Credential("101", "alice-desk", "101", {
        "MD5": ha1("MD5", "101", REALM, "pw"), "SHA-256": ha1("SHA-256", "101", REALM, "pw")})])
    return auth


def register_with(challenge: str, *, username: str = "101", password: str = "pw", nc: int = 1,
                  cnonce: str = "c0ffee"):
    authorization = sipua.digest_answer(challenge, method="REGISTER", uri="sip:127.0.0.1",
                                        username=username, password=password, nc=nc,
                                        cnonce=cnonce)
    return parse_datagram(sipua.register(username, "127.0.0.1", local=("10.0.0.5", 5070),
                                         call_id="a", cseq=2, authorization=authorization))


@pytest.mark.parametrize("algorithm", ["MD5", "SHA-256"])
def test_right_password_verifies_with_either_algorithm(algorithm):
    auth = authenticator()
    challenge = next(v for _, v in auth.challenge(10.0) if f"algorithm={algorithm}" in v)
    result = auth.verify(register_with(challenge), 11.0)
    assert result.verdict is Verdict.OK and result.credential.device_id == "alice-desk"


@pytest.mark.parametrize("order", [("SHA-256", "MD5"), ("MD5", "SHA-256")])
def test_challenges_offer_the_algorithms_in_the_configured_order_with_qop_auth(order):
    values = [v for _, v in authenticator(algorithms=order).challenge(0.0)]
    assert f"algorithm={order[0]}" in values[0] and f"algorithm={order[1]}" in values[1]
    assert all('qop="auth"' in v and 'realm="jbc"' in v for v in values)


def test_wrong_password_and_unknown_user_fail_the_same_way():
    auth = authenticator()
    challenge = auth.challenge(0.0)[0][1]
    wrong = auth.verify(register_with(challenge, password="nope"), 1.0)
    unknown = auth.verify(register_with(challenge, username="999"), 1.0)
    assert wrong.verdict is unknown.verdict is Verdict.FAILED
    assert wrong.reason == unknown.reason


def test_missing_credentials_ask_for_a_challenge():
    auth = authenticator()
    request = parse_datagram(sipua.register("101", "127.0.0.1", local=("10.0.0.5", 5070),
                                            call_id="a", cseq=1))
    assert auth.verify(request, 0.0).verdict is Verdict.MISSING


def test_expired_nonce_with_right_password_is_stale_not_a_failure():
    auth = authenticator(nonce_lifetime_s=30.0)
    challenge = auth.challenge(0.0)[0][1]
    assert auth.verify(register_with(challenge), 31.0).verdict is Verdict.STALE
    assert auth.verify(register_with(challenge, password="x"), 31.0).verdict is Verdict.FAILED


def test_nonce_from_another_process_run_is_stale():
    old = authenticator()
    challenge = old.challenge(0.0)[0][1]
    assert authenticator().verify(register_with(challenge), 1.0).verdict is Verdict.STALE


def test_nonce_count_must_rise_replays_are_refused():
    auth = authenticator()
    challenge = auth.challenge(0.0)[0][1]
    assert auth.verify(register_with(challenge, nc=1), 1.0).verdict is Verdict.OK
    assert auth.verify(register_with(challenge, nc=1), 2.0).verdict is Verdict.STALE
    assert auth.verify(register_with(challenge, nc=2, cnonce="x"), 3.0).verdict is Verdict.OK
    assert auth.verify(register_with(challenge, nc=2, cnonce="y"), 4.0).verdict is Verdict.STALE


def test_forgetting_nonce_counts_never_lets_a_replay_through():
    auth = authenticator(max_tracked_nonces=10)
    first = auth.challenge(0.0)[0][1]
    assert auth.verify(register_with(first), 1.0).verdict is Verdict.OK
    for index in range(20):  # push the first nonce out of the table
        other = auth.challenge(2.0 + index)[0][1]
        assert auth.verify(register_with(other), 2.0 + index).verdict is Verdict.OK
    assert auth.verify(register_with(first), 30.0).verdict is Verdict.STALE


def test_qop_is_required():
    auth = authenticator()
    challenge = auth.challenge(0.0)[0][1]
    request = register_with(challenge)
    value = request.headers.get("authorization").replace("qop=auth, ", "")
    request.headers.set("Authorization", value)
    assert auth.verify(request, 1.0).verdict is Verdict.FAILED


def test_credentials_for_another_realm_are_ignored():
    auth = authenticator()
    challenge = auth.challenge(0.0)[0][1].replace('realm="jbc"', 'realm="cloud"')
    assert auth.verify(register_with(challenge), 1.0).verdict is Verdict.MISSING


# -- the guard --------------------------------------------------------------------------------

def test_rate_limit_drops_beyond_the_burst_and_refills_with_time():
    guard = AbuseGuard(AbusePolicy(rate_per_s=10, burst=5))
    assert [guard.admit("10.0.0.9", 0.0) for _ in range(7)] == [True] * 5 + [False] * 2
    assert guard.admit("10.0.0.9", 0.1)  # one token back after 0.1 s
    assert guard.admit("10.0.0.8", 0.1)  # other sources are not affected
    assert guard.dropped_rate == 2


def test_source_lockout_engages_after_n_failures_in_the_window_and_expires():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, window_s=10, lockout_s=60))
    assert guard.record_failure("10.0.0.9", "101", 0.0) == []
    assert guard.record_failure("10.0.0.9", "102", 1.0) == []
    engaged = guard.record_failure("10.0.0.9", "103", 2.0)
    assert [(lock.kind, lock.subject) for lock in engaged] == [("source", "10.0.0.9")]
    assert not guard.admit("10.0.0.9", 3.0)
    assert guard.admit("10.0.0.8", 3.0)
    assert guard.admit("10.0.0.9", 62.5)


def test_failures_spread_over_more_than_the_window_do_not_lock():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, window_s=10, lockout_s=60))
    for second in (0.0, 8.0, 16.0, 24.0):
        assert guard.record_failure("10.0.0.9", None, second) == []


def test_user_lockout_needs_more_failures_than_a_source_lockout():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, failures_per_user=5, window_s=60))
    for index in range(4):
        guard.record_failure(f"10.0.1.{index}", "101", float(index))
    assert not guard.user_locked("101", 5.0)
    engaged = guard.record_failure("10.0.1.9", "101", 5.0)
    assert [(lock.kind, lock.subject) for lock in engaged] == [("user", "101")]
    assert guard.user_locked("101", 6.0)


def test_trusted_peers_are_never_rate_limited_or_locked():
    guard = AbuseGuard(AbusePolicy(rate_per_s=1, burst=1, failures_per_source=1),
                       exempt={"127.0.0.1"})
    assert all(guard.admit("127.0.0.1", 0.0) for _ in range(100))
    assert guard.record_failure("127.0.0.1", None, 0.0) == []


def test_tables_stay_bounded():
    guard = AbuseGuard(AbusePolicy(max_tracked=100, failures_per_source=50))
    for index in range(1000):
        guard.admit(f"10.{index // 250}.0.{index % 250}", float(index))
        guard.record_failure(f"10.{index // 250}.0.{index % 250}", f"u{index}", float(index))
    assert len(guard._buckets) <= 100
    assert len(guard._source_failures) <= 100 and len(guard._user_failures) <= 100
