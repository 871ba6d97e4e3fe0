"""The LTE trunk's pure judgements: can it carry a call (SIM, registration, VoLTE, settling),
and what a network release cause (AT+CEER) means for the caller."""

from __future__ import annotations

import pytest

from drivers.lte import ceer
from drivers.lte.health import LteStatus, voice_verdict
from drivers.lte.parse import Registration
from drivers.trunk import EndCause

HOME_LTE = Registration(stat=1, act=7)
HOME_UMTS = Registration(stat=1, act=2)
SEARCHING = Registration(stat=2)


def status(**changes) -> LteStatus:
    values = dict(sim="ready", cs=HOME_LTE, ps=HOME_LTE, ims=True, registered_at=0.0)
    values.update(changes)
    return LteStatus(**values)


@pytest.mark.parametrize(("given", "limited", "words"), [
    (status(), False, ""),
    (status(sim="missing"), True, "no SIM card"),
    (status(sim="pin-required"), True, "set 'pin'"),
    (status(sim="busy"), True, "SIM not usable (busy)"),
    (status(cs=SEARCHING, ps=SEARCHING), True, "not registered to a network (searching)"),
    # the EC25 of finding 4: +CREG registered on LTE (a combined attach), IMS not ready
    (status(ims=False), True, "VoLTE (IMS) not ready"),
    (status(ims=False, cs=HOME_UMTS), False, ""),            # 3G voice, no VoLTE needed
    (status(ims=False, cs=Registration(stat=1), cops_act=7), True, "VoLTE"),  # AcT via COPS
    (status(ims=False, cs=Registration(stat=1)), False, ""),  # no AcT anywhere: CS assumed
    (status(ims=False, cs=SEARCHING), True, "VoLTE"),         # data-only attach
    (status(ims=None), False, ""),                            # IMS unknown: benefit of doubt
    (status(registered_at=9.0), True, "settling"),
])
def test_voice_verdict(given, limited, words):
    verdict = voice_verdict(given, now=10.0, settle_s=4.0, pin_configured=False)
    assert verdict.limited is limited
    assert words in verdict.reason
    if "VoLTE" in words:
        assert verdict.no_service == "VoLTE (IMS) not ready"


def test_registration_time_follows_the_registration():
    s = status(registered_at=None, cs=SEARCHING, ps=SEARCHING)
    s.note_time(1.0)
    assert s.registered_at is None
    s.cs = HOME_LTE
    s.note_time(2.0)
    s.note_time(3.0)
    assert s.registered_at == 2.0
    s.cs = s.ps = SEARCHING
    s.note_time(4.0)
    assert s.registered_at is None


@pytest.mark.parametrize(("payload", "code"), [
    ('"CC setup error",1,"Unassigned (unallocated) number"', 1),   # Quectel style
    ('"CC INFO",17', 17),
    ("21", 21),
    ("Call rejected", 21),                                           # SIMCom style
    ("User busy", 17),
    ("Unassigned (unallocated) number", 1),
    ("No Cause", None),
    ('"No report available"', None),
    ("", None),
])
def test_ceer_payloads_of_either_vendor(payload, code):
    assert ceer.parse_ceer(payload) == code


@pytest.mark.parametrize(("code", "alerted", "cause"), [
    (1, False, EndCause.REJECTED), (1, True, EndCause.REJECTED),
    (17, True, EndCause.BUSY), (18, True, EndCause.NO_ANSWER), (19, True, EndCause.NO_ANSWER),
    (21, True, EndCause.REJECTED), (28, False, EndCause.REJECTED),
    (34, False, EndCause.NO_SERVICE), (41, False, EndCause.NO_SERVICE),
    (16, True, EndCause.NO_ANSWER), (16, False, EndCause.REJECTED), (99, False, None),
])
def test_release_causes_mean_the_same_on_every_vendor(code, alerted, cause):
    assert ceer.cause_for(code, alerted=alerted) is cause
