"""One Edge store, many processes: readers during a build, status during an upsert, two writers.

Every process here is a real, separate Python process on the same store folder.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.conftest import DEMO

PY = sys.executable
# The reader answers until the test closes its stdin (after the v2 build has ended), then
# once more, so it has seen the last version however long the steps took under load.
READER = textwrap.dedent("""
    import json, sys, threading, time
    from p4r.store.edge import EdgeBackend
    from p4r.query import Reranker
    store = EdgeBackend(sys.argv[1])
    reranker = Reranker("demo", store)
    cands = ["cafe-lumen", "tide-sushi", "taqueria-sol"]
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print("ready", flush=True)
    answers, errors, versions = 0, [], set()
    last = False
    while not last:
        last = stop.is_set()  # this round started after the stop: it is the last
        try:
            reranker.refresh()
            result = reranker.rerank(user_id="u-ben", candidates=cands)
            assert len(result.items) == 3 and result.items[0].score is not None
            answers += 1
            versions.add(reranker.version)
        except Exception as exc:  # report, never hide
            errors.append(repr(exc))
        time.sleep(0.01)
    print(json.dumps({"answers": answers, "errors": errors, "versions": sorted(versions)}))
""")
HOLDER = textwrap.dedent("""
    import sys
    from p4r.store.edge import EdgeBackend
    with EdgeBackend(sys.argv[1]).writer("test holder"):
        print("held", flush=True)
        sys.stdin.read()
""")


def _env(data_dir: Path, model: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("P4R_")}
    env.update(P4R_DATA_DIR=str(data_dir), P4R_ENCODER__MODEL=str(model),
               P4R_ENCODER__THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    return env


def _cli(tool: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = f"from p4r.{tool} import main; main()"
    return subprocess.run([PY, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_many_readers_one_writer(tmp_path: Path, tiny_models, processes) -> None:  # type: ignore[no-untyped-def]
    data_dir = tmp_path / "data"
    env = _env(data_dir, tiny_models["a"])
    store = data_dir / "edge"
    first = _cli("cli.index", "upsert", "-d", "demo", env=env)
    assert first.returncode == 0, first.stderr

    # A reader holds the live version open for the whole test and keeps answering.
    reader = subprocess.Popen([PY, "-c", READER, str(store)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(reader)
    assert reader.stdout is not None and reader.stdout.readline().strip() == "ready"

    # Another process holds the writer lock: a second writer fails in one line naming it,
    # while status and queries from other processes still answer.
    holder = subprocess.Popen([PY, "-c", HOLDER, str(store)], env=env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    processes.append(holder)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    blocked = _cli("cli.index", "upsert", "-d", "demo", "--reindex", env=env)
    assert blocked.returncode == 1
    line = blocked.stderr.strip()
    assert "\n" not in line and f"pid {holder.pid} (" in line, line
    status = _cli("cli.index", "status", "-d", "demo", "--json", env=env)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["personas"] == 34
    query = _cli("cli.query", "rerank", "-d", "demo", "-u", "u-ana", "-c", "cafe-lumen",
                 "--json", env=env)
    assert query.returncode == 0 and json.loads(query.stdout)[0]["item_id"] == "cafe-lumen"
    # A writer that waits gets the lock once the holder lets go.
    waiting = subprocess.Popen([PY, "-c", "from p4r.cli.index import main; main()",
                                "migrate", "--json"], env={**env, "P4R_INDEX__LOCK_TIMEOUT": "60"},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(waiting)
    time.sleep(0.5)
    assert waiting.poll() is None, "the waiting writer must still be waiting"
    assert holder.stdin is not None
    holder.stdin.close()
    holder.wait(timeout=30)
    assert waiting.wait(timeout=60) == 0

    # A build of new data (v2) runs while the reader answers; status answers during it.
    data = tmp_path / "demo2"
    shutil.copytree(DEMO, data)
    personas = (data / "personas.jsonl").read_text().splitlines()
    (data / "personas.jsonl").write_text("\n".join(personas[1:]) + "\n")
    build = subprocess.Popen([PY, "-c", "from p4r.cli.index import main; main()", "upsert",
                              "-d", "demo", "--data-dir", str(data)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    processes.append(build)
    statuses = 0
    while build.poll() is None:
        during = _cli("cli.index", "status", "-d", "demo", "--json", env=env)
        assert during.returncode == 0, during.stderr
        assert json.loads(during.stdout)["version"] in (1, 2)
        statuses += 1
    out, err = build.communicate()
    assert build.returncode == 0, err
    assert "version 2 delta" in out and statuses >= 1  # an overlay version on Edge
    # communicate() closes the reader's stdin: its signal to stop (after one more answer).
    report = json.loads(reader.communicate(timeout=60)[0].splitlines()[-1])
    assert report["errors"] == [] and report["answers"] > 10
    assert report["versions"] == [1, 2], "the reader moved to v2 without a failed request"
