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


@pytest.mark.parametrize(("damage", "old", "new"), [
    ("no qop", "qop=auth, ", ""),
    ("no cnonce", 'cnonce="c0ffee"', ""),
    ("short nc", "nc=00000001", "nc=1"),
    ("response not hex", 'response="', 'response="zz'),
    ("unknown algorithm", "algorithm=MD5", "algorithm=MD4"),
    ("no username", 'username="101"', ""),
])
def test_malformed_credentials_are_junk_not_a_guess(damage, old, new):
    auth = authenticator()
    challenge = next(v for _, v in auth.challenge(0.0) if "algorithm=MD5" in v)
    request = register_with(challenge)
    value = request.headers.get("authorization")
    assert old in value, damage
    request.headers.set("Authorization", value.replace(old, new))
    assert auth.verify(request, 1.0).verdict is Verdict.MALFORMED


def test_a_wrong_password_is_a_guess_and_says_whether_the_user_exists():
    auth = authenticator()
    challenge = auth.challenge(0.0)[0][1]
    wrong = auth.verify(register_with(challenge, password="guess"), 1.0)
    unknown = auth.verify(register_with(challenge, username="999"), 1.0)
    assert (wrong.verdict, wrong.known_user) == (Verdict.FAILED, True)
    assert (unknown.verdict, unknown.known_user) == (Verdict.FAILED, False)


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


def test_honest_traffic_gives_its_tokens_back():
    guard = AbuseGuard(AbusePolicy(rate_per_s=1, burst=10))
    for _ in range(100):  # REGISTER, challenge, REGISTER with credentials, success
        assert guard.admit("10.0.0.9", 0.0)
        guard.challenged("10.0.0.9")
        assert guard.admit("10.0.0.9", 0.0)
        guard.authenticated("10.0.0.9")
    assert guard.dropped_rate == 0


def test_unanswered_challenges_stay_charged():
    guard = AbuseGuard(AbusePolicy(rate_per_s=1, burst=10))
    admitted = 0
    for _ in range(100):
        if guard.admit("10.0.0.9", 0.0):
            admitted += 1
            guard.challenged("10.0.0.9")
    assert admitted == 10 and guard.dropped_rate == 90


def test_a_success_never_refunds_more_than_it_and_its_challenge_cost():
    guard = AbuseGuard(AbusePolicy(rate_per_s=1, burst=10))
    for _ in range(10):
        assert guard.admit("10.0.0.9", 0.0)
    for _ in range(50):  # successes reusing a nonce (no challenge): each refunds itself only
        guard.authenticated("10.0.0.9")
    assert guard._buckets["10.0.0.9"].tokens == 10
    guard.admit("10.0.0.9", 0.0)
    guard.authenticated("10.0.0.9")
    for _ in range(11):
        guard.admit("10.0.0.9", 0.0)
    assert guard.dropped_rate == 1


def test_guesses_for_one_user_lock_that_user_out_from_that_address_only():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, window_s=10, lockout_s=60))
    assert guard.record_guess("10.0.0.9", "101", 0.0, known_user=True) == []
    assert guard.record_guess("10.0.0.9", "101", 1.0, known_user=True) == []
    engaged = guard.record_guess("10.0.0.9", "101", 2.0, known_user=True)
    assert [(lock.kind, lock.subject, lock.user) for lock in engaged] == [
        ("pair", "10.0.0.9", "101")]
    assert guard.pair_locked("10.0.0.9", "101", 3.0)
    assert not guard.pair_locked("10.0.0.9", "102", 3.0)  # a neighbour behind the same NAT
    assert not guard.pair_locked("10.0.0.8", "101", 3.0)
    assert guard.admit("10.0.0.9", 3.0)
    assert not guard.pair_locked("10.0.0.9", "101", 62.5)


def test_guesses_for_many_users_from_one_address_lock_the_address():
    guard = AbuseGuard(AbusePolicy(users_per_source=3, window_s=10, lockout_s=60))
    assert guard.record_guess("10.0.0.9", "101", 0.0, known_user=True) == []
    assert guard.record_guess("10.0.0.9", "102", 1.0, known_user=False) == []
    engaged = guard.record_guess("10.0.0.9", "103", 2.0, known_user=True)
    assert [(lock.kind, lock.subject) for lock in engaged] == [("source", "10.0.0.9")]
    assert not guard.admit("10.0.0.9", 3.0)
    assert guard.admit("10.0.0.8", 3.0)
    assert guard.admit("10.0.0.9", 62.5)


def test_junk_credentials_lock_the_address_and_never_count_against_a_user():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, failures_per_user=2, window_s=10))
    assert guard.record_junk("10.0.0.9", 0.0) == []
    assert guard.record_junk("10.0.0.9", 1.0) == []
    assert [lock.kind for lock in guard.record_junk("10.0.0.9", 2.0)] == ["source"]
    assert not guard.user_guarded("101", 3.0)


def test_failures_spread_over_more_than_the_window_do_not_lock():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, users_per_source=3, window_s=10,
                                   lockout_s=60))
    for second in (0.0, 8.0, 16.0, 24.0):
        assert guard.record_junk("10.0.0.9", second) == []
        assert guard.record_guess("10.0.0.9", f"u{second}", second, known_user=True) == []
        assert guard.record_guess("10.0.0.7", "101", second, known_user=True) == []


def test_a_user_is_guarded_after_guesses_from_many_addresses_and_only_once_noticed():
    guard = AbuseGuard(AbusePolicy(failures_per_source=3, failures_per_user=5, window_s=60))
    for index in range(4):
        guard.record_guess(f"10.0.1.{index}", "101", float(index), known_user=True)
    assert not guard.user_guarded("101", 5.0)
    engaged = guard.record_guess("10.0.1.9", "101", 5.0, known_user=True)
    assert [(lock.kind, lock.subject) for lock in engaged] == [("user", "101")]
    assert guard.user_guarded("101", 6.0)
    for index in range(5):  # the attack goes on: the guard is extended, not re-announced
        assert guard.record_guess(f"10.0.2.{index}", "101", 7.0, known_user=True) == []
    assert not any(guard.record_guess(f"10.0.3.{i}", "999", 8.0, known_user=False)
                   for i in range(10))
    assert not guard.user_guarded("999", 9.0)  # names that do not exist are never guarded


def test_trusted_peers_are_never_rate_limited_or_locked():
    guard = AbuseGuard(AbusePolicy(rate_per_s=1, burst=1, failures_per_source=1,
                                   users_per_source=2), exempt={"127.0.0.1"})
    assert all(guard.admit("127.0.0.1", 0.0) for _ in range(100))
    assert guard.record_junk("127.0.0.1", 0.0) == []
    assert guard.record_guess("127.0.0.1", "x", 0.0, known_user=False) == []
    assert guard.record_guess("127.0.0.1", "y", 0.0, known_user=False) == []
    assert guard.admit("127.0.0.1", 0.0)


def test_tables_stay_bounded_and_are_swept():
    guard = AbuseGuard(AbusePolicy(max_tracked=100, failures_per_source=2, users_per_source=2,
                                   failures_per_user=2, window_s=10, lockout_s=20))
    for index in range(1000):
        source = f"10.{index // 250}.0.{index % 250}"
        guard.admit(source, float(index))
        guard.record_junk(source, float(index))
        for _ in range(2):
            guard.record_guess(source, f"u{index}", float(index), known_user=True)
    tables = (guard._buckets, guard._junk, guard._pair_guesses, guard._source_users,
              guard._user_guesses, guard._locked_sources, guard._locked_pairs,
              guard._guarded_users)
    assert all(len(table) <= 100 for table in tables)
    guard.sweep(2000.0)
    assert not any(len(table) for table in tables[1:])
