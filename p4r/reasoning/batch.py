"""Batch mode: a stage's pending requests go through the OpenAI Batch API (or any server with
the same file format, such as vLLM's ``run_batch``) at the batch price.

A batch only fills the response cache. Each answer is validated exactly as a synchronous one
(:meth:`LLMClient.validate`), invalid answers are retried synchronously with the error fed
back, and the stage then runs as usual and finds everything answered. The submitted batch's
id is recorded in ``<dataset>/batches/<stage>.json`` so an interrupted run resumes the same
batch instead of paying for it twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from tqdm import tqdm

from p4r.errors import BackendError, InputError
from p4r.fsutil import atomic_write_text
from p4r.reasoning.client import LLMClient, LLMOutputError, Request
from p4r.reasoning.runner import STAGES, Answerer, Context, StageReport, ask_sync

ENDPOINT = "/v1/chat/completions"
WINDOW = "24h"
TERMINAL = {"completed", "failed", "expired", "cancelled"}
MAX_REQUESTS = 50_000  # OpenAI: at most 50,000 requests per batch input file
MAX_BYTES = 190 * 2**20  # and at most 200 MB per file
MAX_ROUNDS = 3  # follow-up batches for requests an expired or cancelled batch never ran


def batch_dir(root: Path) -> Path:
    """Where batch records and request files of a dataset live."""
    return root / "batches"


def record_path(root: Path, stage: str) -> Path:
    """The record of the batch submitted for ``stage`` and not yet ingested."""
    return batch_dir(root) / f"{stage}.json"


def uncached(client: LLMClient, requests: Iterable[Request]) -> dict[str, Request]:
    """Requests without a cached answer, by key (identical prompts once), in order."""
    todo: dict[str, Request] = {}
    for request in requests:
        key = request.key(client.settings.model)
        if key not in todo and not (client.cache is not None and client.cache.has(key)):
            todo[key] = request
    return todo


def request_lines(client: LLMClient, todo: dict[str, Request]) -> str:
    """The batch input file: one chat-completions request per line, ``custom_id`` = key."""
    return "".join(json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT,
                               "body": client.body(r.messages(), r.schema)},
                              ensure_ascii=False) + "\n" for key, r in todo.items())


def pending_requests(ctx: Context, stage: str) -> list[Request]:
    """The requests ``stage`` would make now (``--limit`` applied), cached or not."""
    jobs = STAGES[stage](ctx).pending().jobs
    jobs = jobs if ctx.limit is None else jobs[:ctx.limit]
    return [j.request for j in jobs if j.request is not None]


def export_requests(ctx: Context, stage: str, path: Path | None = None) -> tuple[int, Path]:
    """``--batch-file-only``: write the uncached requests as a batch input file."""
    todo = uncached(ctx.client, pending_requests(ctx, stage))
    path = path or batch_dir(ctx.root) / f"{stage}-requests.jsonl"
    atomic_write_text(path, request_lines(ctx.client, todo))
    return len(todo), path


@dataclass
class Ingest:
    """Validates batch result lines into the cache; invalid answers are repaired in sync."""

    client: LLMClient
    todo: dict[str, Request]
    report: StageReport
    given_up: set[str] = field(default_factory=set)
    processed: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        ("valid", "invalid", "errored", "unknown"), 0))

    def lines(self, rows: Iterable[tuple[int, dict[str, Any]]]) -> None:
        """Ingest result lines ``(line number, object)`` in the OpenAI batch output format."""
        for _, row in rows:
            key = str(row.get("custom_id"))
            request = self.todo.get(key)
            if request is None:
                self.counts["unknown"] += 1  # inputs changed or answered since: harmless
                continue
            self.processed.add(key)
            content = _content(row, self.client)
            if content is None:
                self.counts["errored"] += 1  # left to the synchronous pass
                continue
            self._one(request, content)

    def _one(self, request: Request, content: str) -> None:
        try:
            parsed: BaseModel = self.client.validate(request, content)
        except (json.JSONDecodeError, ValidationError, ValueError) as exc:
            self.counts["invalid"] += 1
            if self.client.configured:
                self._repair(request, content, exc)
            return
        self.client.accept(request, parsed)
        self.counts["valid"] += 1

    def _repair(self, request: Request, content: str, exc: Exception) -> None:
        try:
            self.client.repair(request, content, exc)
        except LLMOutputError as err:
            self.given_up.add(request.key(self.client.settings.model))
            self.report.fail(f"batch answer stayed invalid after synchronous retries: {err}")

    def note(self, source: str) -> None:
        """One line for the report."""
        c = self.counts
        self.report.notes.append(
            f"{source}: {c['valid']} valid, {c['invalid']} invalid (retried synchronously), "
            f"{c['errored']} errored (asked synchronously), {c['unknown']} no longer pending")


def _content(row: dict[str, Any], client: LLMClient) -> str | None:
    """The answer text of one result line, counting its tokens at the batch price."""
    response = row.get("response") or {}
    if row.get("error") or response.get("status_code") != 200:
        return None
    body = response.get("body") or {}
    usage = body.get("usage") or {}
    client.usage.add(batch_requests=1, batch_prompt_tokens=usage.get("prompt_tokens") or 0,
                     batch_completion_tokens=usage.get("completion_tokens") or 0)
    choices = body.get("choices") or [{}]
    return (choices[0].get("message") or {}).get("content") or ""


def _json_lines(lines: Iterable[str], source: Path | str) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` per non-blank line; a bad line names source and line."""
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise InputError(f"malformed JSON ({exc.msg})", file=source, line=number) from None
        if not isinstance(obj, dict):
            raise InputError("expected a JSON object", file=source, line=number)
        yield number, obj


def skipping(given_up: set[str], inner: Answerer = ask_sync) -> Answerer:
    """The synchronous pass after a batch: answers given up on are failed once, not re-asked."""

    def answer(ctx: Context, requests: list[Request], report: StageReport,
               desc: str) -> list[BaseModel | None]:
        model = ctx.client.settings.model
        keep = [r for r in requests if r.key(model) not in given_up]
        answers = dict(zip(map(id, keep), inner(ctx, keep, report, desc), strict=True))
        return [answers.get(id(r)) for r in requests]

    return answer


@dataclass
class BatchMode:
    """``--batch``: submit (or resume) a stage's batches, wait, ingest into the cache.

    Pending requests are split into batches within OpenAI's limits (50,000 requests and
    200 MB per file). Requests a batch never processed (it expired or was cancelled) go into
    a follow-up batch, up to ``MAX_ROUNDS`` rounds; requests it answered with an error go to
    the synchronous pass.
    """

    poll_seconds: float = 30.0
    progress: bool | None = None
    sleep: Callable[[float], None] = time.sleep
    max_requests: int = MAX_REQUESTS
    max_bytes: int = MAX_BYTES
    given_up: set[str] = field(default_factory=set)

    def prefill(self, ctx: Context, stage: str, requests: list[Request],
                report: StageReport) -> None:
        """Resume the recorded batches, then submit what is still unanswered."""
        path = record_path(ctx.root, stage)
        processed: set[str] = set()
        if path.exists():
            processed |= self._finish(ctx, stage, _load_record(path), requests, report)
        for _ in range(MAX_ROUNDS):
            todo = {k: r for k, r in uncached(ctx.client, requests).items()
                    if k not in processed}
            if not todo:
                return
            processed |= self._finish(ctx, stage, self._submit(ctx, stage, todo), requests,
                                      report)

    def _submit(self, ctx: Context, stage: str, todo: dict[str, Request]) -> dict[str, Any]:
        """Upload and create each chunk, recording every batch as soon as it exists."""
        api, path = ctx.client.openai, record_path(ctx.root, stage)
        record: dict[str, Any] = {"stage": stage, "model": ctx.client.settings.model,
                                  "requests": len(todo), "submitted_at": time.time(),
                                  "batches": []}
        for n, (count, data) in enumerate(_chunks(ctx.client, todo, self.max_requests,
                                                  self.max_bytes), start=1):
            upload = api.files.create(file=(f"p4r-{ctx.root.name}-{stage}-{n}.jsonl", data,
                                            "application/jsonl"), purpose="batch")
            batch = api.batches.create(input_file_id=upload.id, endpoint=ENDPOINT,
                                       completion_window=WINDOW,
                                       metadata={"p4r_stage": stage,
                                                 "p4r_dataset": ctx.root.name})
            record["batches"].append({"batch_id": batch.id, "input_file_id": upload.id,
                                      "requests": count})
            atomic_write_text(path, json.dumps(record, indent=2) + "\n")
        return record

    def _wait(self, ctx: Context, entry: dict[str, Any]) -> Any:
        api = ctx.client.openai
        batch = api.batches.retrieve(entry["batch_id"])
        with tqdm(total=entry.get("requests") or 0, desc=f"batch {entry['batch_id']}",
                  unit="req", leave=False,
                  disable=None if self.progress is None else not self.progress) as bar:
            while batch.status not in TERMINAL:
                counts = batch.request_counts
                if counts is not None:
                    bar.n = counts.completed + counts.failed
                    bar.set_postfix_str(batch.status)
                    bar.refresh()
                self.sleep(self.poll_seconds)
                batch = api.batches.retrieve(entry["batch_id"])
        return batch

    def _finish(self, ctx: Context, stage: str, record: dict[str, Any],
                requests: list[Request], report: StageReport) -> set[str]:
        """Wait for every recorded batch and ingest it; returns the keys they processed."""
        todo, processed, failed = uncached(ctx.client, requests), set(), []
        for entry in record["batches"]:
            batch = self._wait(ctx, entry)
            if batch.status == "failed":
                errors = batch.errors.data if batch.errors and batch.errors.data else []
                why = "; ".join(e.message or e.code or "?" for e in errors)
                failed.append(f"{batch.id} ({why or 'no reason given'})")
                continue
            ingest = Ingest(ctx.client, todo, report)
            for file_id in (batch.output_file_id, batch.error_file_id):
                if file_id:
                    text = ctx.client.openai.files.content(file_id).text
                    ingest.lines(_json_lines(text.splitlines(), f"batch file {file_id}"))
            self.given_up |= ingest.given_up
            processed |= ingest.processed
            ingest.note(f"batch {batch.id} ({batch.status})")
        record_path(ctx.root, stage).unlink(missing_ok=True)
        if failed:
            raise BackendError(f"batch {', '.join(failed)} failed; the answers of the others "
                               f"are cached: re-run to submit again, or run without --batch")
        return processed


def _load_record(path: Path) -> dict[str, Any]:
    """A batch record; a damaged one is an error naming the file and what to do."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(record.get("batches"), list):
            raise ValueError("no 'batches' list")
        return record  # type: ignore[no-any-return]
    except (ValueError, AttributeError, UnicodeDecodeError) as exc:
        raise InputError(f"damaged batch record ({exc}); delete it to submit again (a batch "
                         f"already running on the server is then paid twice)",
                         file=path) from None


def _chunks(client: LLMClient, todo: dict[str, Request], max_requests: int,
            max_bytes: int) -> Iterator[tuple[int, bytes]]:
    """Batch input files within the request and size limits: ``(requests, data)``."""
    lines: list[bytes] = []
    size = 0
    for key, request in todo.items():
        line = request_lines(client, {key: request}).encode()
        if lines and (len(lines) >= max_requests or size + len(line) > max_bytes):
            yield len(lines), b"".join(lines)
            lines, size = [], 0
        lines.append(line)
        size += len(line)
    if lines:
        yield len(lines), b"".join(lines)


@dataclass
class ResultsFile:
    """``--batch-results FILE``: ingest results produced elsewhere (e.g. vLLM run_batch)."""

    path: Path
    given_up: set[str] = field(default_factory=set)

    def prefill(self, ctx: Context, stage: str, requests: list[Request],
                report: StageReport) -> None:
        """Validate every result line into the cache (streamed: result files can be large)."""
        ingest = Ingest(ctx.client, uncached(ctx.client, requests), report)
        try:
            with self.path.open(encoding="utf-8") as handle:
                ingest.lines(_json_lines(handle, self.path))
        except FileNotFoundError:
            raise InputError("batch results file not found", file=self.path) from None
        except UnicodeDecodeError as exc:
            raise InputError(f"not UTF-8 ({exc.reason})", file=self.path) from None
        self.given_up |= ingest.given_up
        ingest.note(str(self.path))


def runner_options(ctx: Context, mode: BatchMode | ResultsFile) -> dict[str, Any]:
    """``run_stage`` options for a batch mode: its prefill, then the synchronous pass (cache
    only when no endpoint is configured, e.g. results produced elsewhere)."""
    from p4r.reasoning.runner import ask_cached_only

    inner = ask_sync if ctx.client.configured else ask_cached_only
    return {"prefill": mode.prefill, "answer": skipping(mode.given_up, inner)}
