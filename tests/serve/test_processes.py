"""Real processes: several workers on one store, and a re-index by another process while
serving (each asserts the answers, not just exit codes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from p4r.settings import Settings
from tests.conftest import DEMO
from tests.serve.conftest import REPO, LiveServer, rerank_at_once, start_server, stop_server
from tests.serve.test_api import metric

pytestmark = pytest.mark.system  # every test starts `p4r serve` processes

BODY = {"user_id": "u-ben", "candidates": ["polar-scoop-gelato", "cafe-lumen", "tide-sushi"]}


def wait_until(probe, timeout: float = 60.0) -> Any:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def test_two_workers_serve_one_store_and_sum_their_metrics(demo_settings: Settings,
                                                           tmp_path: Path) -> None:
    server = start_server(tmp_path, "--dataset", "demo", "--workers", "2",
                          env={"P4R_SERVE__API_KEY": "test-write-key"}, key="test-write-key")
    try:
        def versions() -> list[str]:
            text = server.request("GET", "/metrics")[1]
            found = re.findall(r'^p4r_served_version\{pid="\d+"\} (\S+)$', text, re.MULTILINE)
            return sorted(found)

        # One sample per worker; -1 while a worker is still starting, then each serves v1.
        wait_until(lambda: versions() == ["1.0", "1.0"])
        answers = [server.request("POST", "/v1/rerank", BODY) for _ in range(30)]
        assert all(a == answers[0] for a in answers) and answers[0][0] == 200
        # Whichever worker answers the scrape, the counter is the sum over both. A worker
        # counts a request after it has sent the answer, so the last one may land a moment
        # after the client saw it.
        wait_until(lambda: metric(server.request("GET", "/metrics")[1],
                                  'p4r_http_requests_total{method="POST",route="/v1/rerank",'
                                  'status="200"}') == 30.0, timeout=20)

        # Read your writes: one worker logs the interaction; whichever answers next shows it.
        new = {"user_id": "u-ben", "item_id": "tide-sushi", "timestamp": 1.75e9,
               "text": "Best omakase in town."}
        status, report = server.request("POST", "/v1/interactions", {"interactions": [new]})
        assert (status, report["accepted"]) == (200, 1)
        profiles = [server.request("GET", "/v1/users/u-ben")[1] for _ in range(20)]
        assert all(p["live"] == 1 and p["interactions"][-1]["item_id"] == "tide-sushi"
                   for p in profiles), profiles
        moved = [server.request("POST", "/v1/rerank", BODY)[1] for _ in range(20)]
        assert all(m == moved[0] for m in moved) and moved[0] != answers[0][1]
    finally:
        stop_server(server)


def _demo_v2(root: Path) -> Path:
    """The demo files plus personas for the gelato shop (which has only a summary in v1)."""
    data = root / "demo-v2"
    shutil.copytree(DEMO, data)
    line = {"item_id": "polar-scoop-gelato", "personas": [
        {"persona_id": "P1", "name": "Late-Night Scooper",
         "description": "Wants dessert after 10pm.",
         "rationale": "Open until midnight with rotating flavours."}]}
    with (data / "personas.jsonl").open("a", encoding="utf-8") as out:
        out.write(json.dumps(line) + "\n")
    return data


def _hammer(server: LiveServer, answers: list[tuple[int, Any]], stop: threading.Event) -> None:
    while not stop.is_set():
        answers.append(server.request("POST", "/v1/rerank", BODY))


def test_a_reindex_by_another_process_is_served_without_failing_a_request(
        demo_settings: Settings, tmp_path: Path) -> None:
    server = start_server(tmp_path, "--dataset", "demo", "--reload-interval", "0.2")
    answers: list[tuple[int, Any]] = []
    stop = threading.Event()
    hammer = threading.Thread(target=_hammer, args=(server, answers, stop))
    try:
        status, v1 = server.request("POST", "/v1/rerank", BODY)
        assert status == 200
        hammer.start()
        upsert = subprocess.run(
            [sys.executable, "-c", "from p4r.cli.index import main; main()", "upsert",
             "--dataset", "demo", "--data-dir", str(_demo_v2(tmp_path))],
            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
            timeout=300)
        assert upsert.returncode == 0, upsert.stdout + upsert.stderr
        # The changed catalog goes in as version 2: a delta (an overlay on Edge).
        assert "version 2 delta" in upsert.stdout
        wait_until(lambda: server.request("GET", "/readyz")[1]["version"] == 2, timeout=30)
        # Two more answers: one of them was asked after v2 was ready (not a fixed sleep,
        # which a loaded machine can outlast before the hammer's next answer).
        after = len(answers)
        wait_until(lambda: len(answers) >= after + 2)
    finally:
        stop.set()
        if hammer.is_alive():
            hammer.join()
        status, v2 = server.request("POST", "/v1/rerank", BODY)
        stop_server(server)
    assert status == 200
    gelato = {r["item_id"]: r for r in v2["items"]}["polar-scoop-gelato"]
    assert gelato["persona"]["name"] == "Late-Night Scooper"
    assert {r["item_id"]: r for r in v1["items"]}["polar-scoop-gelato"]["explanation"] == (
        "summary")
    assert (v1["version"], v2["version"]) == (1, 2)
    # Every answer during the swap came whole from one version: never an error, never a mix.
    assert all(status == 200 for status, _ in answers)
    kinds = [("v1" if a == v1 else "v2" if a == v2 else "mixed") for _, a in answers]
    assert "mixed" not in kinds
    assert kinds.count("v1") > 0 and kinds.count("v2") > 0
    assert kinds == sorted(kinds)  # once switched, never back


def test_a_real_server_groups_requests_that_arrive_together_and_answers_lone_ones_at_once(
        demo_settings: Settings, tmp_path: Path) -> None:
    """Under a real `p4r serve` process, requests sent at once on eight connections are
    answered together (counted by p4r_rerank_coalesced_total, which requests sent one after
    another leave at zero) with exactly the answers each gets alone. (That lone requests
    skip the coalescer's turn is checked in process, tests/serve/test_lean.py.)"""
    server = start_server(tmp_path, "--dataset", "demo")
    users = ["u-ana", "u-ben", "u-chloe", "u-dev"] * 2
    bodies = [{**BODY, "user_id": u} for u in users]
    try:
        alone = [server.request("POST", "/v1/rerank", body) for body in bodies]
        assert all(status == 200 for status, _ in alone)
        coalesced = 'p4r_rerank_coalesced_total'
        assert metric(server.request("GET", "/metrics")[1], coalesced) == 0.0

        together = rerank_at_once(server.port, bodies)
        assert together == alone * 20
        assert metric(server.request("GET", "/metrics")[1], coalesced) >= 2
    finally:
        stop_server(server)
