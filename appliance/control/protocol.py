"""The control protocol, pure: one JSON object per line each way.

Request::   {"id": 7, "command": "events", "args": {"since": 3600}}
Response::  {"id": 7, "ok": true, "result": {...}}
Stream::    {"id": 7, "ok": true, "item": {...}}  ...  then  {"id": 7, "ok": true, "done": true}
Error::     {"id": 7, "ok": false, "error": {"code": "permission_denied", "message": "..."}}

``id`` is optional and echoed back. Error codes are stable (scripts may rely on them):
bad_request, unknown_command, permission_denied, too_large, busy, timeout, failed, and any
command-specific code a handler raises.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from appliance import boundedjson

from .errors import ControlError

Json = Any


class ProtocolError(ControlError):
    def __init__(self, code: str, message: str, request_id: Json = None) -> None:
        super().__init__(code, message)
        self.request_id = request_id


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    id: Json
    command: str
    args: Mapping[str, Json]


MAX_DEPTH = 8
"""No command's arguments nest deeper; a deeper request is refused before anything walks it."""


def parse_request(line: bytes) -> Request:
    try:
        data = boundedjson.parse(line, max_bytes=len(line), max_depth=MAX_DEPTH,
                                 what="the request")
    except boundedjson.JsonRefused as error:
        raise ProtocolError("bad_request", str(error)) from None
    if not isinstance(data, dict):
        raise ProtocolError("bad_request", "a request must be a JSON object")
    request_id = data.get("id")
    if not isinstance(request_id, str | int | type(None)) or isinstance(request_id, bool):
        raise ProtocolError("bad_request", "'id' must be a string or an integer")
    command = data.get("command")
    if not isinstance(command, str) or not command:
        raise ProtocolError("bad_request", "missing 'command' (a string)", request_id)
    args = data.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError("bad_request", "'args' must be a JSON object", request_id)
    unknown = set(data) - {"id", "command", "args"}
    if unknown:
        raise ProtocolError("bad_request", f"unknown request field(s): {sorted(unknown)}",
                            request_id)
    return Request(id=request_id, command=command, args=args)


def encode(message: Mapping[str, Json]) -> bytes:
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def result_message(request_id: Json, result: Json) -> bytes:
    return encode({"id": request_id, "ok": True, "result": result})


def item_message(request_id: Json, item: Json) -> bytes:
    return encode({"id": request_id, "ok": True, "item": item})


def done_message(request_id: Json) -> bytes:
    return encode({"id": request_id, "ok": True, "done": True})


def error_message(request_id: Json, code: str, message: str) -> bytes:
    return encode({"id": request_id, "ok": False, "error": {"code": code, "message": message}})


def request_message(command: str, args: Mapping[str, Json] | None = None,
                    request_id: Json = None) -> bytes:
    message: dict[str, Json] = {"command": command, "args": dict(args or {})}
    if request_id is not None:
        message["id"] = request_id
    return encode(message)
