"""Parsers for the 3GPP TS 27.007 and vendor lines the LTE driver reads. Pure functions."""

from __future__ import annotations

import dataclasses

ACCESS_TECHNOLOGIES = {
    0: "GSM", 1: "GSM compact", 2: "UMTS", 3: "EDGE", 4: "HSDPA", 5: "HSUPA", 6: "HSPA",
    7: "LTE", 8: "EC-GSM-IoT", 9: "NB-IoT", 10: "LTE (5GC)", 11: "NR (5GC)", 12: "NG-RAN",
    13: "E-UTRA-NR",
}
REGISTRATION = {0: "not-registered", 1: "home", 2: "searching", 3: "denied", 4: "unknown",
                5: "roaming"}


def fields(payload: str) -> list[str]:
    """Split a response payload on commas outside quotes, dropping the quotes."""
    out, current, quoted = [], [], False
    for char in payload:
        if char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            out.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    out.append("".join(current).strip())
    return out


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except ValueError:
        return None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Registration:
    stat: int
    act: int | None = None

    @property
    def registered(self) -> bool:
        return self.stat in (1, 5)

    @property
    def name(self) -> str:
        return REGISTRATION.get(self.stat, f"stat-{self.stat}")


def parse_registration(payload: str, *, unsolicited: bool = False) -> Registration | None:
    """``+CREG:``/``+CEREG:`` payload: the read form starts with <n>, the URC does not."""
    parts = fields(payload)
    if not unsolicited:
        parts = parts[1:]
    stat = _int(parts[0]) if parts else None
    if stat is None:
        return None
    act = _int(parts[3]) if len(parts) > 3 else None
    return Registration(stat=stat, act=act)


def registration_urc(payload: str) -> Registration | None:
    """A +CREG/+CEREG URC: ``<stat>[,<lac>,<ci>[,<AcT>]]``. Told apart from the read form
    (``<n>,<stat>...``) by its second field, which is quoted (lac) or absent."""
    parts = fields(payload)
    if len(parts) >= 2 and parts[1].isdigit():
        return parse_registration(payload)  # the read form after all
    return parse_registration(payload, unsolicited=True)


def signal_dbm(rssi: int | None) -> int | None:
    """+CSQ <rssi> 0..31 -> -113 + 2 rssi dBm; 99 (unknown) -> None."""
    if rssi is None or not 0 <= rssi <= 31:
        return None
    return -113 + 2 * rssi


def signal_bars(dbm: int | None) -> int:
    if dbm is None:
        return 0
    for bars, floor in ((5, -73), (4, -83), (3, -93), (2, -103), (1, -109)):
        if dbm >= floor:
            return bars
    return 0


def parse_csq(payload: str) -> int | None:
    """``+CSQ: <rssi>,<ber>`` (also ``+QIND: "csq",<rssi>,<ber>`` after its tag)."""
    parts = fields(payload)
    return _int(parts[0]) if parts else None


def parse_cops(payload: str) -> tuple[str | None, int | None]:
    """``+COPS: <mode>[,<format>,<oper>[,<AcT>]]`` -> (operator, AcT)."""
    parts = fields(payload)
    operator = parts[2] if len(parts) > 2 and parts[2] else None
    act = _int(parts[3]) if len(parts) > 3 else None
    return operator, act


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class CallReport:
    """One call as a modem lists or reports it, in +CLCC numbering (reference 1.4)."""

    idx: int
    direction: int  # 0 mobile originated, 1 mobile terminated
    stat: int       # 0 active 1 held 2 dialing 3 alerting 4 incoming 5 waiting; -1 released
    number: str
    number_type: int | None = None
    voice: bool = True


def parse_clcc(payload: str) -> CallReport | None:
    """``+CLCC: <id>,<dir>,<stat>,<mode>,<mpty>[,"<num>",<type>]``; SIMCom URCs add stat 6
    (ended), which we report as -1 like Quectel's ccinfo."""
    return _call_report(fields(payload))


def parse_ccinfo(payload: str) -> CallReport | None:
    """Quectel ``+QIND: "ccinfo",<idx>,<dir>,<stat>,<mode>,<mpty>,"<num>",<type>``."""
    parts = fields(payload)
    if not parts or parts[0] != "ccinfo":
        return None
    return _call_report(parts[1:])


def _call_report(parts: list[str]) -> CallReport | None:
    if len(parts) < 5:
        return None
    idx, direction, stat, mode = (_int(p) for p in parts[:4])
    if None in (idx, direction, stat):
        return None
    return CallReport(idx=idx, direction=direction, stat=-1 if stat == 6 else stat,
                      number=parts[5] if len(parts) > 5 else "",
                      number_type=_int(parts[6]) if len(parts) > 6 else None,
                      voice=mode in (0, None))


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Clip:
    number: str
    number_type: int | None
    validity: int  # 0 allowed, 1 withheld, 2 unavailable


def parse_clip(payload: str) -> Clip:
    """``+CLIP: "<number>",<type>[,<subaddr>,<satype>,<alpha>,<CLI validity>]``."""
    parts = fields(payload)
    number = parts[0] if parts else ""
    number_type = _int(parts[1]) if len(parts) > 1 else None
    validity = _int(parts[5]) if len(parts) > 5 else None
    if validity is None:
        validity = 0 if number else 2
    return Clip(number=number, number_type=number_type, validity=validity)


def parse_quectel_ims(payload: str) -> bool | None:
    """``+QCFG: "ims",<cfg>,<state>`` -> state == 1 (VoLTE ready)."""
    parts = fields(payload)
    if len(parts) >= 3 and parts[0].lower() == "ims":
        return parts[2] == "1"
    return None


def parse_cireg(payload: str) -> bool | None:
    """``+CIREG: <n>,<reg_info>`` -> reg_info == 1 (registered to IMS)."""
    parts = fields(payload)
    if len(parts) >= 2:
        return parts[1] == "1"
    return None


def parse_pin_retries(payload: str) -> int | None:
    """Quectel ``+QPINC: "SC",<pin>,<puk>`` or SIMCom ``+SPIC: <pin>,<puk>,...``."""
    parts = fields(payload)
    if parts and parts[0].upper() == "SC":
        parts = parts[1:]
    return _int(parts[0]) if parts else None
