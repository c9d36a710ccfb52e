"""A structured-output engine in miniature: answers built only from the request's JSON schema.

``instance(schema, extreme)`` returns a value that satisfies ``schema`` and nothing more: at
the ``min`` extreme the fewest items and shortest strings, at ``max`` the most items and the
longest allowed names, with every item identical. Each answer is checked against the schema
with jsonschema-rs, so a test that uses it proves p4r accepts whatever such an engine may say.
"""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema_rs

_WORDS = [" ".join(["Word"] * n) for n in range(1, 12)]


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _string(schema: dict[str, Any], extreme: str) -> str:
    if "enum" in schema:
        return str(schema["enum"][0 if extreme == "min" else -1])
    low, high = schema.get("minLength", 0), schema.get("maxLength", 10_000)
    candidates = _WORDS if extreme == "min" else list(reversed(_WORDS))
    if "pattern" not in schema:
        return "x" * max(low, 1) if extreme == "min" else "y" * min(max(low, 40), high)
    for text in candidates:
        if re.search(schema["pattern"], text) and low <= len(text) <= high:
            return text
    raise AssertionError(f"no candidate fits {schema}")


def instance(schema: dict[str, Any], extreme: str = "min",
             root: dict[str, Any] | None = None) -> Any:
    """A value valid under ``schema`` at the given extreme (``min`` or ``max``)."""
    root = root or schema
    schema = _resolve(schema, root)
    if "anyOf" in schema:
        options = [_resolve(o, root) for o in schema["anyOf"]]
        nulls = [o for o in options if o.get("type") == "null"]
        chosen = nulls[0] if extreme == "min" and nulls else next(
            o for o in options if o.get("type") != "null")
        return instance(chosen, extreme, root)
    kind = schema.get("type")
    if kind == "object":
        return {k: instance(v, extreme, root) for k, v in schema.get("properties", {}).items()}
    if kind == "array":
        count = schema.get("minItems", 0) if extreme == "min" else schema.get("maxItems", 3)
        return [instance(schema["items"], extreme, root) for _ in range(count)]
    if kind == "string":
        return _string(schema, extreme)
    if kind == "null":
        return None
    raise AssertionError(f"unsupported schema {schema}")


def strict_answer(request: dict[str, Any], extreme: str) -> str:
    """The JSON a strict engine may return for a chat request's response format."""
    fmt = request["response_format"]
    schema = fmt["json_schema"]["schema"] if fmt["type"] == "json_schema" else fmt["schema"]
    value = instance(schema, extreme)
    jsonschema_rs.validate(schema, value)  # the answer really is valid under the schema
    return json.dumps(value)
