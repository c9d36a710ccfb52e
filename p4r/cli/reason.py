"""``p4r reason`` (alias ``p4r-reason``): offline LLM stages that turn reviews into summaries,
aspects, personas and judge alignments; ``plan`` prices them first, ``domains`` lists the
built-in domains."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from p4r.cli.common import (
    Group,
    dataset_options,
    echo_json,
    friendly_errors,
    json_option,
    no_backend_option,
    settings_for,
    store_options,
)
from p4r.errors import ConfigError
from p4r.reasoning.domains import known_names
from p4r.reasoning.stages import STAGES  # importing the stages fills the registry

F = TypeVar("F", bound=Callable[..., Any])


@click.group("reason", cls=Group,
             short_help="Offline LLM stages: summaries, aspects, personas, alignments.")
def main() -> None:
    """Write summaries, aspects, personas and alignments with an LLM, offline (no store;
    `live` alone updates the user state).

    Stages run through any OpenAI-compatible endpoint; `plan` prices them first and `domains`
    lists the built-in domains. `live` extracts aspects for live interactions recorded with
    text only and re-embeds them in the user state.

    Settings: P4R_LLM__BASE_URL, P4R_LLM__API_KEY, P4R_LLM__MODEL (gpt-4o-mini),
    P4R_LLM__RESPONSE_FORMAT (json_schema, or json_object for llama.cpp), P4R_LLM__CONCURRENCY,
    P4R_LLM__BATCH_PRICE_FACTOR (0.5), P4R_LLM__BATCH_POLL_SECONDS (30).
    Answers are cached under $P4R_DATA_DIR/cache/llm.sqlite: re-runs cost nothing.
    """


def domain_options(fn: F) -> F:
    """``--domain`` (choices from the built-in domain files) and ``--domain-file``."""
    fn = click.option("--domain-file", type=click.Path(path_type=Path, dir_okay=False),
                      default=None, help="A domain TOML file (see the README's example).")(fn)
    return click.option("--domain", type=click.Choice(["auto", *known_names()]),
                        default="auto", show_default=True,
                        help="Built-in domain; auto detects it from the dataset.")(fn)


@contextmanager
def _context(dataset: str, data_dir: Path | None, domain: str, domain_file: Path | None,
             **options: Any) -> Iterator[Any]:
    """Settings, dataset folder, domain, cache and client for one command."""
    from p4r.datasets.registry import dataset_dir
    from p4r.reasoning.cache import ResponseCache
    from p4r.reasoning.client import LLMClient
    from p4r.reasoning.domains.detect import resolve_domain
    from p4r.reasoning.runner import Context

    settings = settings_for(None)
    root = dataset_dir(dataset, settings.data_dir, data_dir)
    resolved = resolve_domain(domain, domain_file, root)
    cache = ResponseCache(settings.data_dir / "cache" / "llm.sqlite")
    try:
        yield Context(root=root, domain=resolved, client=LLMClient(settings.llm, cache),
                      **options)
    finally:
        cache.close()


def _mode(ctx: Any, batch: bool, results: Path | None) -> dict[str, Any]:
    """Runner options for sync, ``--batch`` or ``--batch-results``."""
    from p4r.reasoning.batch import BatchMode, ResultsFile, runner_options

    if batch:
        return runner_options(ctx, BatchMode(poll_seconds=ctx.client.settings.batch_poll_seconds,
                                             progress=ctx.progress))
    if results is not None:
        return runner_options(ctx, ResultsFile(results))
    return {}


def _print(ctx: Any, reports: list[Any], as_json: bool) -> None:
    usage, settings = ctx.client.usage, ctx.client.settings
    if as_json:
        echo_json({"domain": ctx.dom.name, "stages": [r.as_dict() for r in reports],
                   "usage": {"requests": usage.requests, "cache_hits": usage.cache_hits,
                             "retries": usage.retries, "prompt_tokens": usage.prompt_tokens,
                             "completion_tokens": usage.completion_tokens,
                             "batch_requests": usage.batch_requests,
                             "batch_prompt_tokens": usage.batch_prompt_tokens,
                             "batch_completion_tokens": usage.batch_completion_tokens,
                             "cost_usd": round(usage.cost(settings), 6)}})
        return
    for r in reports:
        failed = f", {r.failed} FAILED (re-run to retry)" if r.failed else ""
        click.echo(f"{r.stage:>9}: {r.done} written, {r.skipped} already done or skipped, "
                   f"{r.dropped} dropped{failed} → {r.output}")
        for note in r.notes:
            click.echo(f"           {note}", err=True)
    click.echo(usage.report(settings))


def _stage_command(name: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @dataset_options
    @no_backend_option
    @domain_options
    @click.option("--limit", type=click.IntRange(min=1), default=None,
                  help="At most N requests per stage (try a prompt on a few items first).")
    @click.option("--force", is_flag=True, help="Redo work already written to the outputs.")
    @click.option("--batch", is_flag=True,
                  help="Send pending requests through the Batch API at the batch price; an "
                       "interrupted run resumes the recorded batch.")
    @click.option("--batch-file-only", is_flag=True,
                  help="Only write the pending requests as a batch JSONL (for vLLM run_batch "
                       "or another account); no request is made.")
    @click.option("--batch-results", type=click.Path(path_type=Path, dir_okay=False),
                  default=None, help="Ingest a batch results JSONL, then finish the stage.")
    @json_option("Print the reports as JSON.")
    @friendly_errors
    def command(dataset: str, data_dir: Path | None, domain: str, domain_file: Path | None,
                limit: int | None, force: bool, batch: bool, batch_file_only: bool,
                batch_results: Path | None, as_json: bool) -> None:
        stages = list(STAGES) if name == "all" else [name]
        if sum([batch, batch_file_only, batch_results is not None]) > 1:
            raise ConfigError("choose one of --batch, --batch-file-only, --batch-results")
        if (batch_file_only or batch_results) and len(stages) > 1:
            raise ConfigError("batch files hold one stage's requests: run one stage at a time "
                              f"({', '.join(STAGES)})")
        with _context(dataset, data_dir, domain, domain_file, force=force,
                      limit=limit) as ctx:
            if batch_file_only:
                _export(ctx, name, dataset, as_json)
                return
            from p4r.reasoning.runner import run_stages

            reports = run_stages(ctx, stages, **_mode(ctx, batch, batch_results))
            _print(ctx, reports, as_json)
        if any(r.failed for r in reports):
            raise SystemExit(1)


def _export(ctx: Any, stage: str, dataset: str, as_json: bool) -> None:
    from p4r.reasoning.batch import export_requests

    count, path = export_requests(ctx, stage)
    if as_json:
        echo_json({"stage": stage, "requests": count, "file": str(path)})
        return
    click.echo(f"wrote {count} request(s) to {path}\nrun it (OpenAI Batch API, or vLLM: "
               f"python -m vllm.entrypoints.openai.run_batch -i {path} -o results.jsonl "
               f"--model ...), then: p4r reason {stage} -d {dataset} --batch-results "
               f"results.jsonl")


for _name, _stage in STAGES.items():
    _stage_command(_name, _stage.help)
_stage_command("all", f"{', '.join(STAGES)}, in order.")


@main.command()
@dataset_options
@no_backend_option
@domain_options
@click.option("--stage", "stages", type=click.Choice(list(STAGES)), multiple=True,
              help="Plan only these stages (default: all).")
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Plan at most N requests per stage.")
@json_option("Print the plan as JSON.")
@friendly_errors
def plan(dataset: str, data_dir: Path | None, domain: str, domain_file: Path | None,
         stages: tuple[str, ...], limit: int | None, as_json: bool) -> None:
    """Requests after the cache, input tokens and cost (sync and batch) per stage."""
    from p4r.reasoning.plan import as_dicts
    from p4r.reasoning.plan import plan as make_plan

    with _context(dataset, data_dir, domain, domain_file, limit=limit) as ctx:
        plans, method = make_plan(ctx, list(stages) or list(STAGES))
        settings = ctx.client.settings
    if as_json:
        echo_json({"domain": ctx.dom.name, "model": settings.model, "tokens": method,
                   "stages": as_dicts(plans)})
        return
    click.echo(f"domain {ctx.dom.name}, model {settings.model}; input tokens {method}; "
               f"output tokens are typical answer lengths")
    click.echo(f"{'stage':>9} {'requests':>9} {'cached':>7} {'input tok':>11} "
               f"{'output tok':>11} {'sync $':>10} {'batch $':>10}")
    for p in plans:
        click.echo(f"{p.stage:>9} {p.requests:>9,} {p.cached:>7,} {p.input_tokens:>11,} "
                   f"{p.output_tokens:>11,} {p.cost_sync:>10.4f} {p.cost_batch:>10.4f}")
        if p.note:
            click.echo(f"           {p.note}")
    click.echo(f"{'total':>9} {sum(p.requests for p in plans):>9,} "
               f"{sum(p.cached for p in plans):>7,} {sum(p.input_tokens for p in plans):>11,} "
               f"{sum(p.output_tokens for p in plans):>11,} "
               f"{sum(p.cost_sync for p in plans):>10.4f} "
               f"{sum(p.cost_batch for p in plans):>10.4f}")
    click.echo("Later stages are planned on the current files: run earlier stages first for "
               "exact counts (e.g. personas need aspects, align needs personas).")


@main.command()
@store_options
@domain_options
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="At most N pending interactions (default: all).")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Interactions asked, re-embedded and committed together.")
@json_option("Print the report as JSON.")
@friendly_errors
def live(dataset: str, data_dir: Path | None, backend: str | None, domain: str,
         domain_file: Path | None, limit: int | None, batch_size: int, as_json: bool) -> None:
    """Aspects for live interactions that arrived with text only, then re-embed them.

    Each pending live interaction is asked with the domain's aspects prompt and schema (as
    `p4r reason aspects` asks for file reviews; answers are cached), re-embedded from its
    aspects and the item summary with the training template, and replaced in the user state:
    the user's profile follows. Safe to re-run and to interrupt: each batch is committed.
    """
    from p4r.query import open_reranker
    from p4r.query.live_aspects import extract_live_aspects
    from p4r.store import open_backend

    settings = settings_for(backend)
    with _live_context(settings, dataset, data_dir, domain, domain_file) as ctx, \
            open_backend(settings) as store:
        reranker = open_reranker(settings, dataset, backend=store)
        say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
        report = extract_live_aspects(
            reranker, ctx, limit=limit, batch_size=batch_size,
            on_batch=lambda r: say(f"batch {r.batches}: {r.extracted} re-embedded from "
                                   f"aspects, {r.empty} too empty (kept on their text), "
                                   f"{r.failed} failed"))
        usage = ctx.client.usage
        if as_json:
            echo_json({"dataset": dataset, "domain": ctx.dom.name, **report.as_dict(),
                       "usage": {"requests": usage.requests, "cache_hits": usage.cache_hits,
                                 "cost_usd": round(usage.cost(ctx.client.settings), 6)}})
        else:
            click.echo(f"{dataset}: {report.extracted} live interaction(s) re-embedded from "
                       f"aspects, {report.empty} too empty (kept on their text), "
                       f"{report.failed} failed (re-run to retry), {report.skipped} of "
                       "forgotten users skipped")
            for note in report.notes:
                click.echo(f"  {note}", err=True)
            click.echo(usage.report(ctx.client.settings))
    if report.failed:
        raise SystemExit(1)


@contextmanager
def _live_context(settings: Any, dataset: str, data_dir: Path | None, domain: str,
                  domain_file: Path | None) -> Iterator[Any]:
    """The LLM client and domain for live reviews: the dataset's folder is needed only to
    detect the domain (a serving host may have only the store)."""
    from p4r.datasets.registry import dataset_dir
    from p4r.errors import NotFoundError
    from p4r.reasoning.cache import ResponseCache
    from p4r.reasoning.client import LLMClient
    from p4r.reasoning.domains.detect import resolve_domain
    from p4r.reasoning.runner import Context

    try:
        root = dataset_dir(dataset, settings.data_dir, data_dir)
    except NotFoundError:
        if domain_file is None and domain == "auto":
            raise ConfigError(f"cannot detect the domain of {dataset!r} without its files: "
                              "pass --domain (or --data-dir)") from None
        root = settings.data_dir
    resolved = resolve_domain(domain, domain_file, root)
    cache = ResponseCache(settings.data_dir / "cache" / "llm.sqlite")
    try:
        yield Context(root=root, domain=resolved, client=LLMClient(settings.llm, cache))
    finally:
        cache.close()


@main.command()
@json_option("Print the domains as JSON.")
@friendly_errors
def domains(as_json: bool) -> None:
    """The built-in domains: name, aspect slots, how they are detected and their file."""
    from p4r.reasoning.domains import builtin_domains

    found = builtin_domains()
    if as_json:
        echo_json([{"name": d.name, "description": d.description, "slots": d.slots,
                    "detect": d.detect.model_dump(), "file": str(d.source)}
                   for d in found.values()])
        return
    for d in found.values():
        click.echo(f"{d.name:<14} {d.description}\n{'':<14} slots: {', '.join(d.slots)}\n"
                   f"{'':<14} kinds: {', '.join(d.detect.kinds) or '-'}; categories: "
                   f"{', '.join(d.detect.categories) or '-'}\n{'':<14} {d.source}")
