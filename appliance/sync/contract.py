"""The cloud API contract (``cloud-api.json``, OpenAPI 3.1) and a checker for it.

Both sides of the link check what they exchange against the same document: the appliance's
client checks every response it receives, the bench's fake cloud checks every request it
receives (and, in tests, every response it sends). The checker implements the part of JSON
Schema the document uses: type (including type lists with "null"), properties, required,
additionalProperties, items, minItems/maxItems, enum, minimum, minLength, pattern and local
``$ref``; annotation keywords (description, contentEncoding) are ignored. A keyword it does not
know is an error, so the document cannot silently outgrow the checker.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

from .errors import SyncError

DOCUMENT = pathlib.Path(__file__).with_name("cloud-api.json")

_ANNOTATIONS = {"description", "contentEncoding", "title", "example", "format"}
_KNOWN = _ANNOTATIONS | {"type", "properties", "required", "additionalProperties", "items",
                         "minItems", "maxItems", "enum", "minimum", "minLength", "pattern",
                         "$ref"}


class ContractViolation(SyncError):
    """A message does not follow cloud-api.json. ``str()`` names the operation and the path."""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    operation_id: str
    method: str
    path: str
    """The path template, e.g. /v1/devices/{device_id}/bundle."""
    pattern: re.Pattern[str]
    request_schema: Mapping[str, Any] | None
    responses: Mapping[str, Mapping[str, Any]]
    needs_client_certificate: bool

    def response_schema(self, status: int) -> Mapping[str, Any] | None:
        spec = self.responses.get(str(status))
        if spec is None:
            raise ContractViolation(f"{self.operation_id}: status {status} is not in the contract")
        content = spec.get("content", {}).get("application/json")
        return None if content is None else content["schema"]

    def required_response_headers(self, status: int) -> list[str]:
        spec = self.responses.get(str(status), {})
        return [name for name, h in spec.get("headers", {}).items() if h.get("required")]


class Contract:
    def __init__(self, document: Mapping[str, Any]) -> None:
        self.document = document
        self.operations: dict[str, Operation] = {}
        for path, item in document["paths"].items():
            regex = re.compile("^" + re.sub(r"\\\{([a-z_]+)\\\}", r"(?P<\1>[A-Za-z0-9._-]{1,64})",
                                            re.escape(path)) + "$")
            for method, spec in item.items():
                if method == "parameters":
                    continue
                body = spec.get("requestBody", {}).get("content", {}).get("application/json")
                self.operations[spec["operationId"]] = Operation(
                    operation_id=spec["operationId"], method=method.upper(), path=path,
                    pattern=regex, request_schema=body["schema"] if body else None,
                    responses=spec["responses"],
                    needs_client_certificate=bool(spec.get("security", [{}])))

    @classmethod
    @functools.cache
    def load(cls) -> Contract:
        return cls(json.loads(DOCUMENT.read_text(encoding="utf-8")))

    def operation(self, operation_id: str) -> Operation:
        return self.operations[operation_id]

    def match(self, method: str, path: str) -> tuple[Operation, dict[str, str]] | None:
        for op in self.operations.values():
            found = op.pattern.match(path)
            if found and op.method == method:
                return op, found.groupdict()
        return None

    # -- checking ----------------------------------------------------------------------------

    def check_request(self, operation_id: str, body: Any) -> None:
        op = self.operation(operation_id)
        if op.request_schema is None:
            if body is not None:
                raise ContractViolation(f"{operation_id}: takes no request body")
            return
        self._raise_first(op.operation_id + " request", op.request_schema, body)

    def check_response(self, operation_id: str, status: int, body: Any,
                       headers: Mapping[str, str] | None = None) -> None:
        op = self.operation(operation_id)
        schema = op.response_schema(status)
        for name in op.required_response_headers(status):
            if headers is None or name.lower() not in {k.lower() for k in headers}:
                raise ContractViolation(f"{operation_id} {status}: missing header {name}")
        if schema is None:
            return
        self._raise_first(f"{operation_id} {status} response", schema, body)

    def problems(self, schema: Mapping[str, Any], value: Any, where: str = "$") -> Iterator[str]:
        yield from self._check(schema, value, where)

    def _raise_first(self, what: str, schema: Mapping[str, Any], value: Any) -> None:
        for problem in self._check(schema, value, "$"):
            raise ContractViolation(f"{what}: {problem}")

    def _resolve(self, schema: Mapping[str, Any]) -> Mapping[str, Any]:
        while "$ref" in schema:
            ref = schema["$ref"]
            if not ref.startswith("#/"):
                raise ContractViolation(f"only local $ref is supported, not {ref!r}")
            node: Any = self.document
            for part in ref[2:].split("/"):
                node = node[part]
            schema = node
        return schema

    def _check(self, schema: Mapping[str, Any], value: Any, where: str) -> Iterator[str]:
        schema = self._resolve(schema)
        unknown = set(schema) - _KNOWN
        if unknown:
            raise ContractViolation(f"schema keyword(s) {sorted(unknown)} at {where} are not "
                                    "supported by the checker")
        if "type" in schema:
            types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            if not any(_is_type(value, t) for t in types):
                yield f"{where}: expected {' or '.join(types)}, got {_json_type(value)}"
                return
        if "enum" in schema and value not in schema["enum"]:
            yield f"{where}: {value!r} is not one of {schema['enum']}"
        if "minimum" in schema and _is_number(value) and value < schema["minimum"]:
            yield f"{where}: {value} is below the minimum {schema['minimum']}"
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0):
                yield f"{where}: shorter than {schema['minLength']} characters"
            if "pattern" in schema and not re.search(schema["pattern"], value):
                yield f"{where}: does not match {schema['pattern']}"
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0):
                yield f"{where}: fewer than {schema['minItems']} items"
            if "maxItems" in schema and len(value) > schema["maxItems"]:
                yield f"{where}: more than {schema['maxItems']} items"
            if "items" in schema:
                for index, item in enumerate(value):
                    yield from self._check(schema["items"], item, f"{where}[{index}]")
        if isinstance(value, dict):
            properties = schema.get("properties", {})
            for name in schema.get("required", ()):
                if name not in value:
                    yield f"{where}: missing required {name!r}"
            extra = schema.get("additionalProperties", True)
            for name, item in value.items():
                if name in properties:
                    yield from self._check(properties[name], item, f"{where}.{name}")
                elif extra is False:
                    yield f"{where}: unexpected property {name!r}"
                elif isinstance(extra, dict):
                    yield from self._check(extra, item, f"{where}.{name}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_type(value: Any, name: str) -> bool:
    return {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": _is_number,
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }[name](value)


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _is_type(value, name):
            return name
    return type(value).__name__
