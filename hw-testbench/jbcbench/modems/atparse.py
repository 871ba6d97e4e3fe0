"""The modem side of AT command lines: splitting ``ATE0V1+CMEE=2;+CREG?`` into commands."""

from __future__ import annotations

import dataclasses

EXTENDED_STARTS = "+^$#%-*"


@dataclasses.dataclass(frozen=True, slots=True)
class Cmd:
    name: str
    """Upper-case command name: 'E', 'D', '+CREG', '&W', 'S7'."""
    op: str
    """'' (action), '?' (read), '=?' (test), '=' (set)."""
    args: str
    """What follows '=' (or the dial string for D, the digits for basic commands)."""

    def params(self) -> list[str]:
        """Comma-separated arguments with quotes removed."""
        out, current, quoted = [], [], False
        for char in self.args:
            if char == '"':
                quoted = not quoted
            elif char == "," and not quoted:
                out.append("".join(current).strip())
                current = []
            else:
                current.append(char)
        if current or out:
            out.append("".join(current).strip())
        return out


def split_line(line: str) -> list[Cmd] | None:
    """The commands on one command line, or None if it is not an AT line."""
    text = line.strip()
    if text.upper() == "A/":
        return [Cmd("A/", "", "")]
    if text[:2].upper() != "AT":
        return None
    body = text[2:]
    commands: list[Cmd] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char in " ;":
            i += 1
            continue
        if char in EXTENDED_STARTS:
            j, quoted = i + 1, False
            while j < len(body) and (quoted or body[j] != ";"):
                if body[j] == '"':
                    quoted = not quoted
                j += 1
            commands.append(_extended(body[i:j]))
            i = j + 1
        elif char.upper() == "D":
            j = body.find(";", i)
            if j < 0:
                commands.append(Cmd("D", "", body[i + 1:]))
                break
            commands.append(Cmd("D", "", body[i + 1:j + 1]))
            i = j + 1
        elif char == "&":
            j = i + 2
            while j < len(body) and body[j].isdigit():
                j += 1
            commands.append(Cmd(body[i:i + 2].upper(), "", body[i + 2:j]))
            i = j
        elif char.upper() == "S" and i + 1 < len(body) and body[i + 1].isdigit():
            j = i + 1
            while j < len(body) and body[j].isdigit():
                j += 1
            name = "S" + body[i + 1:j]
            if body[j:j + 1] == "?":
                commands.append(Cmd(name, "?", ""))
                i = j + 1
            elif body[j:j + 1] == "=":
                k = j + 1
                while k < len(body) and body[k].isdigit():
                    k += 1
                commands.append(Cmd(name, "=", body[j + 1:k]))
                i = k
            else:
                commands.append(Cmd(name, "", ""))
                i = j
        elif char.isalpha():
            j = i + 1
            while j < len(body) and body[j].isdigit():
                j += 1
            commands.append(Cmd(char.upper(), "", body[i + 1:j]))
            i = j
        else:
            commands.append(Cmd(char, "", ""))  # junk: the caller answers ERROR
            i += 1
    return commands


def _extended(text: str) -> Cmd:
    name_end = len(text)
    for k, char in enumerate(text):
        if char in "=?":
            name_end = k
            break
    name = text[:name_end].upper()
    rest = text[name_end:]
    if rest.startswith("=?"):
        return Cmd(name, "=?", "")
    if rest.startswith("?"):
        return Cmd(name, "?", "")
    if rest.startswith("="):
        return Cmd(name, "=", rest[1:])
    return Cmd(name, "", "")
