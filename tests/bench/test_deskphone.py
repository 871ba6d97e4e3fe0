"""The desk phones' server redundancy (jbcbench.deskphone), on fake time."""

from __future__ import annotations

import dataclasses

import pytest

from jbcbench.deskphone import (
    FACTORY,
    TUNED,
    Moved,
    PhoneProfile,
    Register,
    Server,
    ServerChoice,
    Unregister,
)

PRIMARY, BACKUP = Server.PRIMARY, Server.BACKUP


def moved(actions) -> list[Server]:
    return [a.server for a in actions if isinstance(a, Moved)]


def test_a_phone_starts_on_its_primary():
    choice = ServerChoice(FACTORY)
    assert choice.start(0.0) == [Register(PRIMARY)]
    assert choice.on_result(PRIMARY, True, 1.0) == []
    assert choice.registered is PRIMARY and choice.next_deadline() is None


@pytest.mark.parametrize("profile", [FACTORY, TUNED], ids=lambda p: p.name)
def test_the_backup_after_failover_after_failed_attempts_retry_interval_apart(profile):
    choice = ServerChoice(profile)
    choice.start(0.0)
    choice.on_result(PRIMARY, True, 0.0)
    now = 100.0
    for attempt in range(1, profile.failover_after):
        assert choice.on_result(PRIMARY, False, now) == []
        assert choice.next_deadline() == now + profile.retry_interval_s
        now += profile.retry_interval_s
        assert choice.on_timer(now) == [Register(PRIMARY)], f"retry {attempt}"
    actions = choice.on_result(PRIMARY, False, now)
    assert actions[0] == Register(BACKUP) and moved(actions) == [BACKUP]
    assert choice.working is BACKUP and choice.registered is None


def test_factory_defaults_are_the_vendors_defaults():
    assert (FACTORY.expires_s, FACTORY.failover_after, FACTORY.retry_interval_s,
            FACTORY.attempt_timeout_s, FACTORY.primary_probe_s) == (3600, 3, 30.0, 32.0, 120.0)


def on_backup(profile: PhoneProfile, now: float = 0.0) -> ServerChoice:
    choice = ServerChoice(dataclasses.replace(profile, failover_after=1))
    choice.start(now)
    choice.on_result(PRIMARY, False, now)
    choice.on_result(BACKUP, True, now)
    return choice


def test_on_the_backup_the_primary_is_tried_every_primary_probe_s():
    choice = on_backup(TUNED, now=50.0)
    assert choice.next_deadline() == 50.0 + TUNED.primary_probe_s
    assert choice.on_timer(59.0) == []
    assert choice.on_timer(60.0) == [Register(PRIMARY)]
    assert choice.next_deadline() is None, "one probe at a time"
    assert choice.on_result(PRIMARY, False, 64.0) == []
    assert choice.working is BACKUP and choice.registered is BACKUP, "still served"
    assert choice.next_deadline() == 64.0 + TUNED.primary_probe_s


def test_the_primary_answering_a_probe_takes_the_phone_back_and_leaves_the_backup():
    choice = on_backup(TUNED)
    choice.on_timer(TUNED.primary_probe_s)
    actions = choice.on_result(PRIMARY, True, TUNED.primary_probe_s + 0.1)
    assert actions[0] == Unregister(BACKUP) and moved(actions) == [PRIMARY]
    assert choice.working is PRIMARY and choice.registered is PRIMARY
    assert choice.next_deadline() is None


def test_a_backup_refusing_refreshes_sends_the_phone_to_the_primary():
    choice = on_backup(dataclasses.replace(TUNED, primary_probe_s=0.0))
    assert choice.next_deadline() is None, "no probing configured"
    actions = choice.on_result(BACKUP, False, 55.0)  # the appliance's 503 at a refresh
    assert actions[0] == Register(PRIMARY) and choice.working is PRIMARY


def test_a_refusal_during_a_probe_makes_the_probe_the_working_attempt():
    choice = on_backup(TUNED)
    choice.on_timer(TUNED.primary_probe_s)  # probe in flight
    assert choice.on_result(BACKUP, False, 12.0)[0] == Register(PRIMARY)
    assert choice.on_result(PRIMARY, True, 12.5) == []
    assert choice.working is PRIMARY and choice.registered is PRIMARY


def test_late_answers_from_the_server_left_behind_change_nothing():
    choice = on_backup(TUNED)
    assert choice.on_result(PRIMARY, False, 3.0) == []
    assert choice.on_result(PRIMARY, True, 3.0) == [], "no probe was in flight"
    assert choice.working is BACKUP


def test_both_servers_failing_alternates_between_them():
    choice = ServerChoice(dataclasses.replace(TUNED, failover_after=1))
    choice.start(0.0)
    seen = []
    for step in range(4):
        actions = choice.on_result(choice.working, False, float(step))
        seen += moved(actions)
    assert seen == [BACKUP, PRIMARY, BACKUP, PRIMARY]


@pytest.mark.parametrize("profile", [FACTORY, TUNED], ids=lambda p: p.name)
@pytest.mark.parametrize("granted", [20, 60, 300])
@pytest.mark.parametrize("outage_at", [0.0, 0.001, 0.37, 0.99])
def test_the_failover_bound_holds_against_a_simulated_silent_primary(profile, granted,
                                                                     outage_at):
    """A phone whose SIP stack refreshes `refresh_margin_s` before expiry and times out
    unanswered REGISTERs after `attempt_timeout_s`, against a primary that goes silent at
    some point of its registration cycle: on the backup within failover_bound_s."""
    choice = ServerChoice(profile)
    refresh_after = profile.refresh_after_s(granted)
    cut = outage_at * refresh_after
    now = 0.0
    answers: list[tuple[float, Server, bool]] = []  # (when the outcome arrives, server, ok)
    refreshes: list[tuple[float, Server]] = []      # (when the stack re-registers, server)

    def register(server: Server) -> None:
        silent = server is PRIMARY and now >= cut
        answers.append((now + (profile.attempt_timeout_s if silent else 0.05), server,
                        not silent))

    def send(actions) -> None:
        for action in actions:
            if isinstance(action, Register):
                register(action.server)

    send(choice.start(now))
    while choice.registered is not BACKUP:
        deadline = choice.next_deadline()
        now = min([t for t, _, _ in answers] + [t for t, _ in refreshes]
                  + ([deadline] if deadline is not None else []))
        for item in [r for r in refreshes if r[0] <= now]:
            refreshes.remove(item)
            register(item[1])
        for item in [a for a in answers if a[0] <= now]:
            answers.remove(item)
            _, server, ok = item
            send(choice.on_result(server, ok, now))
            if ok:  # the SIP stack refreshes a live registration by itself
                refreshes.append((now + refresh_after, server))
        if deadline is not None and now >= deadline:
            send(choice.on_timer(now))
        assert now < 10000, "never reached the backup"
    assert now - cut <= profile.failover_bound_s(granted) + 0.1
