"""``p4r-reason``: offline LLM stages that turn reviews into summaries, aspects, personas and
judge alignments."""

from __future__ import annotations

from pathlib import Path

import click

from p4r.console import dataset_options, echo_json, friendly_errors, settings_for

ORDER = ("summary", "aspects", "personas", "align")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Run the offline reasoning stages through any OpenAI-compatible endpoint.

    Settings: P4R_LLM__BASE_URL, P4R_LLM__API_KEY, P4R_LLM__MODEL (gpt-4o-mini),
    P4R_LLM__RESPONSE_FORMAT (json_schema, or json_object for llama.cpp), P4R_LLM__CONCURRENCY.
    Answers are cached under $P4R_DATA_DIR/cache/llm.sqlite: re-runs cost nothing.
    """


def _stage_command(name: str, help_text: str) -> None:
    @main.command(name=name, help=help_text)
    @dataset_options
    @click.option("--domain", type=click.Choice(["auto", "yelp", "amazon"]), default="auto",
                  show_default=True, help="Aspect schema and prompt wording.")
    @click.option("--limit", type=click.IntRange(min=1), default=None,
                  help="At most N requests per stage (try a prompt on a few items first).")
    @click.option("--force", is_flag=True, help="Redo work already written to the outputs.")
    @click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
    @friendly_errors
    def command(dataset: str, data_dir: Path | None, backend: str | None, domain: str,
                limit: int | None, force: bool, as_json: bool) -> None:
        from p4r.datasets.registry import dataset_dir
        from p4r.reasoning.cache import ResponseCache
        from p4r.reasoning.client import LLMClient
        from p4r.reasoning.stages import Context, detect_domain, run_stages

        settings = settings_for(backend)
        root = dataset_dir(dataset, settings.data_dir, data_dir)
        cache = ResponseCache(settings.data_dir / "cache" / "llm.sqlite")
        client = LLMClient(settings.llm, cache)
        ctx = Context(root=root, domain=detect_domain(root) if domain == "auto" else domain,
                      client=client, force=force, limit=limit)
        stages = ORDER if name == "all" else (name,)
        try:
            reports = run_stages(ctx, stages)
        finally:
            cache.close()
        usage = client.usage
        if as_json:
            echo_json({"domain": ctx.domain, "stages": [
                {"stage": r.stage, "done": r.done, "skipped": r.skipped, "dropped": r.dropped,
                 "failed": r.failed, "output": str(r.output), "notes": r.notes}
                for r in reports],
                "usage": {"requests": usage.requests, "cache_hits": usage.cache_hits,
                          "retries": usage.retries, "prompt_tokens": usage.prompt_tokens,
                          "completion_tokens": usage.completion_tokens,
                          "cost_usd": round(usage.cost(settings.llm), 6)}})
            return
        for r in reports:
            failed = f", {r.failed} FAILED (re-run to retry)" if r.failed else ""
            click.echo(f"{r.stage:>9}: {r.done} written, {r.skipped} already done or skipped, "
                       f"{r.dropped} dropped{failed} → {r.output}")
            for note in r.notes:
                click.echo(f"           {note}", err=True)
        click.echo(usage.report(settings.llm))
        if any(r.failed for r in reports):
            raise SystemExit(1)


_stage_command("summary", "Objective item summaries from metadata (or reviews without it).")
_stage_command("aspects", "Aspects per review; mostly-empty tuples are dropped.")
_stage_command("personas", "2–7 grounded personas per item.")
_stage_command("align", "LLM judge: the persona that best explains each training interaction.")
_stage_command("all", "summary, aspects, personas and align, in order.")
