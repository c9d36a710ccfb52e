"""One stage runner: a stage declares its pending work, the request of each unit and how the
answers merge into its output; the runner does the rest.

The runner owns concurrency, the cache (through the client), retries, progress, the atomic
write of the output and the report. Every valid answer is cached the moment it arrives, so a
crash loses nothing: the re-run takes finished answers from the cache and asks only the rest.
Batch mode (see :mod:`p4r.reasoning.batch`) only fills the same cache before the synchronous
pass, which then finds everything answered.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel
from tqdm import tqdm

from p4r.datasets.models import Row
from p4r.errors import InputError
from p4r.reasoning.client import LLMClient, LLMOutputError, Request
from p4r.reasoning.domains import Domain, as_domain
from p4r.reasoning.rows import write_rows


@dataclass
class StageReport:
    """What one stage did."""

    stage: str
    done: int = 0
    skipped: int = 0
    dropped: int = 0
    failed: int = 0
    output: Path | None = None
    notes: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def fail(self, message: str) -> None:
        """Count one unit whose answers stayed invalid (first five messages kept)."""
        with self._lock:
            self.failed += 1
            if len(self.notes) < 5:
                self.notes.append(message)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for ``--json``."""
        return {"stage": self.stage, "done": self.done, "skipped": self.skipped,
                "dropped": self.dropped, "failed": self.failed, "output": str(self.output),
                "notes": self.notes}


@dataclass
class Context:
    """Where the dataset lives, its domain (a Domain or a built-in name), the client, options."""

    root: Path
    domain: Domain | str
    client: LLMClient
    force: bool = False
    limit: int | None = None
    progress: bool | None = None

    def __post_init__(self) -> None:
        self.domain = as_domain(self.domain)

    @property
    def dom(self) -> Domain:
        """The domain, typed."""
        assert isinstance(self.domain, Domain)
        return self.domain


@dataclass
class Job:
    """One unit of pending work; ``request`` is None when there is nothing to ask."""

    ref: Any
    request: Request | None


@dataclass
class Work:
    """A stage's pending jobs, and how many units were already done."""

    jobs: list[Job]
    skipped: int = 0


class Stage(ABC):
    """A stage: its pending work with one request per unit, and how answers merge."""

    name: ClassVar[str]
    help: ClassVar[str]
    output: ClassVar[str]

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    @abstractmethod
    def pending(self) -> Work:
        """Read the inputs and list the work not done yet."""

    @abstractmethod
    def merge(self, results: list[tuple[Job, BaseModel | None]],
              report: StageReport) -> Sequence[Row]:
        """Fold the answers (None: failed, or nothing asked) into the rows to write."""


STAGES: dict[str, type[Stage]] = {}


def register(cls: type[Stage]) -> type[Stage]:
    """Add a stage to the registry the CLI reads (in running order)."""
    STAGES[cls.name] = cls
    return cls


class Answerer(Protocol):
    """Turns requests into answers (None for a request that failed)."""

    def __call__(self, ctx: Context, requests: list[Request], report: StageReport,
                 desc: str) -> list[BaseModel | None]: ...


def ask_sync(ctx: Context, requests: list[Request], report: StageReport,
             desc: str) -> list[BaseModel | None]:
    """Ask on ``concurrency`` threads, answers in request order, with a progress bar.

    A request whose answers stay invalid after every retry yields None and is counted as
    failed: one stubborn item does not sink a long stage, and the next run asks for it again
    (only valid answers are cached). Transport errors still stop the stage.
    """
    results: list[BaseModel | None] = [None] * len(requests)

    def guarded(request: Request) -> BaseModel | None:
        try:
            return ctx.client.answer(request)
        except LLMOutputError as exc:
            report.fail(str(exc))
            return None

    with ThreadPoolExecutor(max_workers=ctx.client.settings.concurrency) as pool, tqdm(
        total=len(requests), desc=desc, unit="req", leave=False,
        disable=None if ctx.progress is None else not ctx.progress,
    ) as bar:
        futures = {pool.submit(guarded, r): n for n, r in enumerate(requests)}
        try:
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results


def ask_cached_only(ctx: Context, requests: list[Request], report: StageReport,
                    desc: str) -> list[BaseModel | None]:
    """Answers from the cache only (no endpoint configured); the rest count as failed."""
    answers = [ctx.client.cached(r) for r in requests]
    missing = sum(a is None for a in answers)
    if missing:
        report.failed += missing
        report.notes.append(f"{missing} request(s) have no answer and no endpoint is set: "
                            "set P4R_LLM__BASE_URL/API_KEY, or write them with "
                            "--batch-file-only")
    return answers


Prefill = Callable[[Context, str, list[Request], StageReport], None]


def run_stage(ctx: Context, name: str, *, prefill: Prefill | None = None,
              answer: Answerer = ask_sync) -> StageReport:
    """Run one registered stage: pending → (prefill) → answers → merge → atomic write."""
    if name not in STAGES:
        raise InputError(f"unknown stage {name!r} (stages: {', '.join(STAGES)})",
                         field="stage")
    stage = STAGES[name](ctx)
    work = stage.pending()
    jobs = work.jobs if ctx.limit is None else work.jobs[:ctx.limit]
    report = StageReport(name, skipped=work.skipped, output=ctx.root / stage.output)
    asked = [j for j in jobs if j.request is not None]
    requests = [j.request for j in asked if j.request is not None]
    if prefill is not None:
        prefill(ctx, name, requests, report)
    answers = dict(zip(map(id, asked), answer(ctx, requests, report, name), strict=True))
    rows = stage.merge([(j, answers.get(id(j))) for j in jobs], report)
    write_rows(ctx.root / stage.output, rows)
    return report


def run_stages(ctx: Context, stages: Sequence[str], **options: Any) -> list[StageReport]:
    """Run stages in order (``all`` = every registered stage)."""
    return [run_stage(ctx, name, **options) for name in stages]
