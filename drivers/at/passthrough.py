"""What a technician may send to a modem by hand (``jbc modem TRUNK at ...``): one command.

A command line is a V.250 command line: after ``AT`` the modem runs every command on it,
basic ones back to back (``ATE0V1``) and extended ones separated by ``;``. So ``AT+CSQ;D112;``
dials 112, and so does ``AT+CSQ\\r\\nATD112;`` (a second line). A call placed behind the
driver's back is hung up by it within moments, which to an emergency service is an abandoned
call. Calls go through the gateway; this only diagnoses. So a passthrough line must be:

* printable ASCII, without CR, LF or any other control character, at most 200 characters;
* ``AT`` followed by exactly one command (no ``;`` chaining, no second basic command);
* not a command that places, answers, holds or ends a call, or sends tones into one
  (:data:`CALL_COMMANDS`, and ``A/``, which repeats the last line), nor ``ATS0=n``, which
  would make the modem answer calls by itself.

Pure: :func:`check_passthrough` returns the command to send or raises
:class:`PassthroughRefused` saying why, in words for the technician.
"""

from __future__ import annotations

import re

from .results import AtError

MAX_LENGTH = 200

CALL_COMMANDS = {
    "D": "dials a call",
    "A": "answers a call",
    "H": "hangs up",
    "O": "returns to a call's data mode",
    "+CHUP": "hangs up",
    "+QHUP": "hangs up",
    "+CHLD": "holds, swaps or releases calls",
    "+CDV": "dials a call",
    "+VTS": "sends tones into a call",
    "+VTX": "starts a voice stream",
    "+VRX": "starts a voice stream",
    "+VTR": "starts a voice stream",
    "+VLS": "takes the line off hook",
}

EXTENDED_STARTS = "+^$#%*-"
_EXTENDED = re.compile(r"[+^$#%*\-][A-Za-z0-9_]+")


class PassthroughRefused(AtError):
    """A technician's command line we will not send, and why."""


def check_passthrough(text: str) -> str:
    """``text`` as it will be sent (surrounding blanks removed), or PassthroughRefused."""
    command = text.strip(" \t")
    if not command:
        raise PassthroughRefused("no command given; e.g. 'AT+CSQ'")
    if len(command) > MAX_LENGTH:
        raise PassthroughRefused(f"the command is longer than {MAX_LENGTH} characters")
    for char in command:
        if not " " <= char <= "~":
            raise PassthroughRefused(
                f"the command contains {_describe(char)}; send one command per request, "
                "without line breaks")
    if command.upper() == "A/":
        raise PassthroughRefused("'A/' repeats the previous command line, which may be a "
                                 "call; calls go through the gateway ('jbc test-call')")
    if command[:2].upper() != "AT":
        raise PassthroughRefused(f"{command!r} is not an AT command; it must start with AT")
    body = command[2:].strip()
    if not body:
        return command
    name = _command_name(body)
    key = name.upper()
    call = CALL_COMMANDS.get(key) or next(
        (what for command, what in CALL_COMMANDS.items()
         if command[0] in EXTENDED_STARTS and key.startswith(command)), None)  # +CDV<number>
    if call:
        raise PassthroughRefused(f"AT{key} {call}; calls go through the gateway (place a test "
                                 "call with 'jbc test-call NUMBER')")
    if ";" in _unquoted(body):
        raise PassthroughRefused("one command per request: ';' chains several (send them "
                                 "one at a time)")
    rest = _unquoted(body[len(name):]).strip(" ")
    if name[0] in EXTENDED_STARTS:
        if rest and rest[0] not in "=?":
            raise PassthroughRefused(f"one command per request: {body!r} has something after "
                                     f"AT{name} that is not its arguments")
    elif rest.strip("0123456789=?"):
        raise PassthroughRefused(f"one command per request: {body!r} holds several basic "
                                 "commands (send them one at a time)")
    if key == "S0" and "=" in rest and rest.split("=", 1)[1].strip(" 0"):
        raise PassthroughRefused("ATS0 with a ring count makes the modem answer calls by "
                                 "itself; calls go through the gateway")
    return command


def _command_name(body: str) -> str:
    match = _EXTENDED.match(body)
    if match:
        return match.group(0)
    if body[:1].upper() == "S":
        return re.match(r"[Ss][0-9]*", body).group(0)
    if body[:1] == "&":
        return body[:2]
    return body[:1]


def _unquoted(text: str) -> str:
    out, quoted = [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif not quoted:
            out.append(char)
    return "".join(out)


def _describe(char: str) -> str:
    names = {"\r": "a carriage return (CR)", "\n": "a line feed (LF)", "\t": "a tab",
             "\x1a": "Ctrl-Z", "\x1b": "ESC"}
    return names.get(char, f"the control character {ord(char):#04x}")
