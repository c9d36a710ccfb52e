"""The API contract fuzzed from its own OpenAPI document: no input ever answers a 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from p4r.settings import Settings
from tests.serve.conftest import start_server, stop_server

pytestmark = pytest.mark.system  # a `p4r serve` process, fuzzed

EXAMPLES = 30  # per operation and mode: about 600 requests, a few seconds


def test_generated_requests_never_answer_5xx(demo_settings: Settings, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--dataset", "demo")
    try:
        schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert {f"{op.method.upper()} {op.path}" for op in operations} >= {
            "POST /v1/rerank", "POST /v1/interactions", "GET /v1/users/{user_id}",
            "GET /v1/items/{item_id}/personas", "GET /readyz", "GET /metrics"}
        seen: dict[int, int] = {}
        for operation in operations:
            fuzz(operation, GenerationMode.POSITIVE, seen)
            if operation.body or list(operation.iter_parameters()):  # something to break
                fuzz(operation, GenerationMode.NEGATIVE, seen)
        # The fuzzing reached the library, not only the validation layer.
        assert seen.get(200, 0) > 50 and seen.get(422, 0) > 20, seen
    finally:
        stop_server(server)
    assert "Traceback" not in server.output(), server.output()


def fuzz(operation, mode: GenerationMode, seen: dict[int, int]) -> None:  # type: ignore[no-untyped-def]
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def check(case) -> None:  # type: ignore[no-untyped-def]
        response = case.call(timeout=60)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (
            f"{case.method} {case.formatted_path} body={case.body!r} → "
            f"{response.status_code} {response.text[:500]}")

    try:
        check()
    except schemathesis.errors.SerializationNotPossible:
        pytest.fail(f"cannot fuzz {operation.label}: no serializer for its media type")
