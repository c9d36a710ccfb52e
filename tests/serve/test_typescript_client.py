"""A client in another language, generated from ``/openapi.json``, calls every route.

``openapi-typescript`` (with its default options, as an app would run it) turns the document
into types; a small TypeScript program written against those types, by operation id, is
compiled with ``tsc --strict`` and run with node against a real ``p4r serve``. It compiles
only if the contract says what apps send: optional fields (``allow_unknown``, ``k``, ``text``)
must be optional, answers must have the fields the program reads.

The npm packages are installed once into a cache folder outside the repository
(``$P4R_NPM_CACHE``, default ``~/.cache/p4r-npm``); without node and npm the test skips,
saying so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from p4r.settings import Settings
from tests.serve.conftest import start_server, stop_server

pytestmark = pytest.mark.system  # npm, tsc, node and a `p4r serve` process

PACKAGES = {"openapi-typescript": "7.13.0", "typescript": "5.9.3"}
WRITE_KEY = "ts-client-write-key-0001"

CLIENT = r"""
import type { components, operations } from "./api";

type Schemas = components["schemas"];
type Body<Op extends keyof operations> =
  operations[Op] extends { requestBody: { content: { "application/json": infer B } } } ? B : never;
type Ok<Op extends keyof operations> =
  operations[Op]["responses"] extends { 200: { content: { "application/json": infer R } } }
    ? R : never;

const [base, key] = process.argv.slice(2);
const results: Record<string, unknown> = {};

async function call<Op extends keyof operations>(
  op: Op, method: string, path: string, body?: Body<Op>,
): Promise<{ status: number; json: Ok<Op> | Schemas["ErrorOut"] }> {
  const response = await fetch(base + path, {
    method,
    headers: { "content-type": "application/json", "api-key": key },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const json = (await response.json()) as Ok<Op> | Schemas["ErrorOut"];
  return { status: response.status, json };
}

function ok<T>(answer: { status: number; json: T | Schemas["ErrorOut"] }): T {
  if (answer.status !== 200) throw new Error(JSON.stringify(answer.json));
  return answer.json as T;
}

async function main(): Promise<void> {
  // Optional fields left out: allow_unknown, k, history, vector (they must be optional).
  const one: Body<"rerank"> = { user_id: "u-chloe", candidates: ["tide-sushi", "cafe-lumen"] };
  const ranked = ok(await call("rerank", "POST", "/v1/rerank", one));
  const best: Schemas["RankedItemOut"] = ranked.items[0];
  results.rerank = { version: ranked.version, first: best.item_id,
                     persona: best.persona?.name ?? null, unscored: ranked.unscored.length };

  const batch = ok(await call("rerank_batch", "POST", "/v1/rerank/batch", {
    requests: [one, { user_id: "u-ben", candidates: ["taqueria-sol", "taqueria-sol"], k: 1 }],
  }));
  results.rerank_batch = { version: batch.version, users: batch.results.map((r) => r.user_id),
                           unscored: batch.results[1].unscored.map((u) => u.reason) };

  // text, rating and aspects left out.
  const interaction: Schemas["LiveInteraction"] = {
    user_id: "u-ben", item_id: "tide-sushi", timestamp: "2025-06-15T15:06:40Z" };
  const added = ok(await call("add_interactions", "POST", "/v1/interactions",
                              { interactions: [interaction] }));
  results.add_interactions = { accepted: added.accepted, version: added.version };

  const profile = ok(await call("get_user", "GET", "/v1/users/u-ben"));
  results.get_user = { live: profile.live, last: profile.interactions.at(-1)?.item_id };

  const personas = ok(await call("get_item_personas", "GET", "/v1/items/tide-sushi/personas"));
  results.get_item_personas = { item: personas.item_id, count: personas.personas.length };

  const users = ok(await call("list_users", "GET", "/v1/users?limit=2"));
  const items = ok(await call("list_items", "GET", "/v1/items?limit=3"));
  results.list_users = users.users;
  results.list_items = items.items.map((i) => i.item_id).length;

  const found = ok(await call("lookup_items", "GET", "/v1/items/lookup?ids=tide-sushi&ids=ghost"));
  results.lookup_items = { title: found.items[0].title, not_found: found.not_found };
  const history = ok(await call("get_user_history", "GET", "/v1/users/u-ben/history?limit=2"));
  const last = history.interactions.at(-1);
  results.get_user_history = { shown: history.interactions.length, last: last?.item_id,
                               origin: last?.origin ?? null };

  const forgot = ok(await call("forget_user", "DELETE", "/v1/users/u-dev"));
  results.forget_user = { user: forgot.user_id, removed: forgot.interactions > 0 };

  const gone = await call("get_user", "GET", "/v1/users/u-dev");
  const error = (gone.json as Schemas["ErrorOut"]).error;
  results.error = { status: gone.status, code: error.code, index: error.request_index ?? null };

  const health = ok(await call("healthz", "GET", "/healthz"));
  const ready = ok(await call("readyz", "GET", "/readyz"));
  results.healthz = health.status;
  results.readyz = { ready: ready.ready, version: ready.version };
  const metrics = await fetch(base + "/metrics");
  results.metrics = { status: metrics.status,
                      text: (await metrics.text()).includes("p4r_http_requests_total") };
  console.log(JSON.stringify(results));
}

main().catch((error) => { console.error(String(error)); process.exit(1); });
"""


def npm_tools() -> Path:
    """The cache folder with openapi-typescript and typescript installed (once)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("needs node and npm (the generated-client test runs where they exist)")
    cache = Path(os.environ.get("P4R_NPM_CACHE") or Path.home() / ".cache" / "p4r-npm")
    cache.mkdir(parents=True, exist_ok=True)
    installed = all((cache / "node_modules" / name / "package.json").exists()
                    and json.loads((cache / "node_modules" / name / "package.json").read_text())
                    .get("version") == version for name, version in PACKAGES.items())
    if not installed:
        (cache / "package.json").write_text(json.dumps(
            {"name": "p4r-openapi-client-test", "private": True, "version": "0.0.0",
             "devDependencies": PACKAGES}, indent=2))
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=cache,
                              capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["npm install failed"])[-1]
            pytest.skip(f"cannot install {', '.join(PACKAGES)} with npm: {last}")
    return cache / "node_modules" / ".bin"


def run(*args: str, cwd: Path) -> str:
    done = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_typescript_client_generated_from_openapi_calls_every_route(
        demo_settings: Settings, tmp_path: Path) -> None:
    tools = npm_tools()
    live = start_server(tmp_path, "--dataset", "demo",
                        env={"P4R_SERVE__API_KEY": WRITE_KEY}, key=WRITE_KEY)
    try:
        work = tmp_path / "ts-client"
        work.mkdir()
        status, doc = live.request("GET", "/openapi.json")
        assert status == 200
        (work / "openapi.json").write_text(json.dumps(doc))
        run(str(tools / "openapi-typescript"), "openapi.json", "-o", "api.ts", cwd=work)
        generated = (work / "api.ts").read_text()
        assert "allow_unknown?: boolean" in generated and "text?: string" in generated
        (work / "client.ts").write_text(CLIENT)
        # The one Node global the program uses (no @types/node to install).
        (work / "node.d.ts").write_text(
            "declare const process: { argv: string[]; exit(code: number): never };\n")
        run(str(tools / "tsc"), "--strict", "--target", "es2022", "--module", "commonjs",
            "--lib", "es2023,dom", "--skipLibCheck", "client.ts", "node.d.ts", cwd=work)
        results = json.loads(run("node", "client.js", live.url, WRITE_KEY, cwd=work))
    finally:
        stop_server(live)
    assert results["rerank"]["version"] == 1 and results["rerank"]["unscored"] == 0
    assert results["rerank_batch"] == {"version": 1, "users": ["u-chloe", "u-ben"],
                                       "unscored": ["duplicate"]}
    assert results["add_interactions"] == {"accepted": 1, "version": 1}
    assert results["get_user"] == {"live": 1, "last": "tide-sushi"}
    assert results["get_item_personas"]["count"] > 0
    assert len(results["list_users"]) == 2 and results["list_items"] == 3
    assert results["lookup_items"] == {"title": "Tide Sushi", "not_found": ["ghost"]}
    assert results["get_user_history"] == {"shown": 2, "last": "tide-sushi", "origin": "live"}
    assert results["forget_user"] == {"user": "u-dev", "removed": True}
    assert results["error"] == {"status": 404, "code": "unknown_user", "index": None}
    assert results["healthz"] == "ok" and results["readyz"] == {"ready": True, "version": 1}
    assert results["metrics"] == {"status": 200, "text": True}

