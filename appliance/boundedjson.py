"""JSON from anyone we do not control (a local client, the cloud, a bundle), bounded in size
and depth, with finite numbers only.

``json.loads`` alone is not enough: a request nested 5000 deep raises ``RecursionError``
(which nobody catches and which puts a traceback in the log), ``NaN`` and ``Infinity`` are
accepted, and everything that walks the result afterwards (schema checks, redaction) recurses
again. :func:`parse` refuses all of that with a :class:`JsonRefused`, a ``ValueError``, so
callers that already treat ``ValueError`` as "not JSON" need no change::

    data = parse(body, max_bytes=64 * 1024, max_depth=16, what="control request")
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import stat
from typing import Any

DEFAULT_MAX_DEPTH = 32


class JsonRefused(ValueError):
    """The document is not JSON, too big, nested too deep or holds a non-finite number."""


def parse(data: bytes | str, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
          what: str = "document") -> Any:
    if len(data) > max_bytes:
        raise JsonRefused(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    try:
        value = json.loads(data, parse_constant=_refuse_constant, parse_float=_finite_float)
    except RecursionError:
        raise JsonRefused(f"{what} is nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, ValueError) as error:
        if isinstance(error, JsonRefused):
            raise
        raise JsonRefused(f"{what} is not JSON: {error}") from None
    if depth_exceeds(value, max_depth):
        raise JsonRefused(f"{what} is nested deeper than {max_depth} levels")
    return value


def parse_file(path: pathlib.Path, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
               what: str = "the file") -> Any:
    """:func:`parse` of a file, which must be a regular file (a FIFO or a device would block
    or never end) of at most ``max_bytes``. OSError (missing, unreadable) is the caller's."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise JsonRefused(f"{what} is not a regular file")
        if info.st_size > max_bytes:
            raise JsonRefused(f"{what} is {info.st_size} bytes; the limit is {max_bytes}")
        data = file.read(max_bytes + 1)
    return parse(data, max_bytes=max_bytes, max_depth=max_depth, what=what)


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """True if containers nest deeper than ``max_depth`` (a scalar is depth 0). Iterative, so
    a hostile value cannot exhaust the stack here either."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth + 1 > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JsonRefused(f"{text[:20]} is out of range (finite numbers only)")
    return value


def _refuse_constant(name: str) -> Any:
    raise JsonRefused(f"{name} is not a number JSON allows (finite numbers only)")
