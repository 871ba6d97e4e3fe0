"""Caller ID as voice modems print it between the first and second RING (reference 2.3).

The lines vary (quirk 4): ``DATE = 1015`` or ``DATE=0801``, ``NMBR = P`` (private) or
``NMBR = O`` (out of area), no NAME at all, unknown ``MESG`` records, ``REASON NO NAME``.
:class:`CallerIdRecord` collects whatever comes and turns it into a
:class:`~drivers.trunk.CallerId`; a partial record is still a record.
"""

from __future__ import annotations

import re

from drivers.trunk import CallerId, Presentation

CID_FIELDS = ("DATE", "TIME", "NMBR", "NAME", "MESG", "DDN_NMBR", "DDN", "REASON", "QUAL",
              "REDIRECT")
_FIELD = re.compile(r"^\s*(DATE|TIME|NMBR|NAME|MESG|DDN_NMBR|DDN|REASON|QUAL|REDIRECT)"
                    r"\s*(?:=\s*(.*?)|\s+(.*?))?\s*$", re.IGNORECASE)


def parse_cid_line(line: str) -> tuple[str, str] | None:
    """(field, value) for a caller-ID line, or None."""
    match = _FIELD.match(line)
    if not match:
        return None
    value = match.group(2) if match.group(2) is not None else (match.group(3) or "")
    return match.group(1).upper(), value.strip()


class CallerIdRecord:
    def __init__(self) -> None:
        self.fields: dict[str, str] = {}

    def add(self, field: str, value: str) -> None:
        if field == "DDN_NMBR":
            field = "NMBR"
        self.fields.setdefault(field, value)

    @property
    def has_number(self) -> bool:
        return "NMBR" in self.fields

    @property
    def complete(self) -> bool:
        """NMBR and NAME both seen (or NAME reported missing): nothing more will come."""
        return self.has_number and ("NAME" in self.fields or "REASON" in self.fields)

    def caller(self) -> CallerId:
        number = self.fields.get("NMBR", "").strip()
        name = self.fields.get("NAME", "").strip() or None
        if name is not None and (name.upper() in ("P", "O") or not name.isprintable()):
            name = None  # 'private'/'out of area' markers and FSK junk are not names
        upper = number.upper()
        if upper == "P" or upper.startswith("PRIVATE"):
            return CallerId(number=None, name=name, presentation=Presentation.WITHHELD)
        if not number or upper == "O" or upper.startswith(("OUT", "UNAVAILABLE")):
            return CallerId(number=None, name=name, presentation=Presentation.UNAVAILABLE)
        digits = re.sub(r"[^0-9+*#]", "", number)
        return CallerId(number=digits or None, name=name,
                        presentation=Presentation.ALLOWED if digits else
                        Presentation.UNAVAILABLE)
