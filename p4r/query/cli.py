"""``p4r-query``: rerank candidates for users from the command line, and benchmark it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import click

from p4r.console import (
    dataset_options,
    echo_json,
    friendly_errors,
    positive_ints,
    preview,
    settings_for,
)
from p4r.errors import InputError, UnknownUserError
from p4r.query import Reranker, RerankRequest, UnknownCandidatesError
from p4r.query.candidates import CandidateLine
from p4r.query.models import PAD
from p4r.settings import Settings
from p4r.store import open_backend


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Rerank candidate items by each user's best-matching persona (no LLM online)."""


def _print_table(user: str, items: list) -> None:
    click.echo(f"Reranked for {user}:")
    for rank, item in enumerate(items, start=1):
        score = f"{item.score:.4f}" if item.score is not None else "   -  "
        click.echo(f"{rank:>3}. {item.item_id:<28} {score}  [{item.explanation}]")
        if item.persona:
            click.echo(f"       persona {item.persona.persona_id} \"{item.persona.name}\": "
                       f"{item.persona.rationale}")


@main.command()
@dataset_options
@click.option("--user-id", "-u", default=None, help="User whose indexed history is the profile.")
@click.option("--candidates", "-c", default=None,
              help="Comma-separated candidate item ids.")
@click.option("--candidates-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Reference-format jsonl: {user_id, results: [{item_id, score}]}.")
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="With --candidates-file: where to write the reranked jsonl.")
@click.option("--k", type=click.IntRange(min=1), default=None, help="Keep only the top K.")
@click.option("--allow-unknown", is_flag=True,
              help="Keep candidates the index does not know (ranked last, 'unscored') instead "
                   "of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list, best first.")
@friendly_errors
def rerank(dataset: str, data_dir: Path | None, backend: str | None, user_id: str | None,
           candidates: str | None, candidates_file: Path | None, out: Path | None,
           k: int | None, allow_unknown: bool, as_json: bool) -> None:
    """Rerank candidates for one user, or a whole reference candidates file.

    Each item is scored by its best persona (cosine with the user's decayed profile); items
    without personas fall back to their summary. The best persona is the explanation.
    """
    settings = settings_for(backend)
    on_unknown: Literal["error", "keep"] = "keep" if allow_unknown else "error"
    if candidates_file is not None:
        if out is None:
            raise click.UsageError("--candidates-file needs --out")
        _rerank_file(settings, dataset, candidates_file, out, k, on_unknown)
        return
    if user_id is None or candidates is None:
        raise click.UsageError("give --user-id and --candidates, or --candidates-file and --out")
    items = [c.strip() for c in candidates.split(",") if c.strip()]
    if not items:
        raise click.UsageError("--candidates is empty")
    with open_backend(settings) as store:
        reranker = Reranker(dataset, store, settings.query, settings.encoder)
        result = reranker.rerank(user_id=user_id, candidates=items, k=k, on_unknown=on_unknown)
    if as_json:
        echo_json([item.as_dict() for item in result.items])
    else:
        _print_table(user_id, result.items)
    if result.unknown:
        click.echo(f"note: {len(result.unknown)} unknown candidate(s) kept unscored: "
                   f"{preview(result.unknown)}", err=True)


def _rerank_line(reranker: Reranker, path: Path, line: CandidateLine, k: int | None,
                 on_unknown: Literal["error", "keep"]) -> tuple[dict[str, Any], list[str]]:
    """One candidates-file line reranked into its output row; errors name the line."""
    try:
        result = reranker.rerank_batch(
            [RerankRequest(candidates=line.item_ids, user_id=line.user_id, k=k)],
            on_unknown=on_unknown)[0]
    except UnknownCandidatesError as exc:
        index = line.item_ids.index(exc.unknown[0])
        raise InputError(str(exc.message) + " (use --allow-unknown to keep them)",
                         file=path, line=line.line, field=f"results[{index}].item_id") from None
    except InputError as exc:
        raise InputError(exc.message, file=path, line=line.line, field=exc.field) from None
    results = [{"item_id": it.item_id, "score": it.score, "explanation": it.explanation,
                **({"persona": it.as_dict()["persona"]} if it.persona else {})}
               for it in result.items]
    pads = [{"item_id": PAD, "score": None, "explanation": "unscored"}
            for c in line.item_ids if c == PAD]
    row = {**line.raw, "results": (results + pads)[:k] if k else results + pads}
    return row, result.unknown


def _unknown_users_error(path: Path, unknown: list[tuple[CandidateLine, str]]) -> InputError:
    """The first line whose user has no history, and how many more lines share the problem."""
    first, message = unknown[0]
    more = (f" ({len(unknown)} lines have unknown users, at lines "
            f"{preview([str(u.line) for u, _ in unknown])})" if len(unknown) > 1 else "")
    return InputError(message + more, file=path, line=first.line, field="user_id")


def _rerank_file(settings: Settings, dataset: str, path: Path, out: Path, k: int | None,
                 on_unknown: Literal["error", "keep"]) -> None:
    """Rerank every line, then write the output at once: an error leaves no partial file."""
    from tqdm import tqdm

    from p4r.datasets.jsonl import write_jsonl_atomic
    from p4r.query.candidates import read_candidates

    lines = read_candidates(path)
    rows: list[dict[str, Any]] = []
    unknown_items: list[str] = []
    unknown_users: list[tuple[CandidateLine, str]] = []
    with open_backend(settings) as store:
        reranker = Reranker(dataset, store, settings.query, settings.encoder)
        for line in tqdm(lines, desc="rerank", unit="user", disable=None, leave=False):
            try:
                row, unknown = _rerank_line(reranker, path, line, k, on_unknown)
            except UnknownUserError as exc:  # keep going: report every such line at once
                unknown_users.append((line, str(exc)))
                continue
            rows.append(row)
            unknown_items.extend(unknown)
    if unknown_users:
        raise _unknown_users_error(path, unknown_users)
    write_jsonl_atomic(out, rows)
    if unknown_items:
        distinct = list(dict.fromkeys(unknown_items))
        click.echo(f"note: {len(distinct)} unknown candidate(s) kept unscored: "
                   f"{preview(distinct)}", err=True)
    click.echo(f"reranked {len(rows)} user(s) → {out}")


@main.command()
@click.option("--sizes", default="125000", show_default=True,
              help="Persona collection sizes to build (5 personas per item).")
@click.option("--million", is_flag=True,
              help="Add the 1M-persona row (builds for a few minutes and needs ~4 GB).")
@click.option("--candidates", "candidate_counts", default="20,100", show_default=True,
              help="Candidates per user.")
@click.option("--users", type=click.IntRange(min=1), default=300, show_default=True,
              help="Timed users per row and round.")
@click.option("--batch", type=click.IntRange(min=2), default=100, show_default=True,
              help="Users per call in batch mode.")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Repeat each row; the median round is reported (shared, noisy machines).")
@click.option("--dim", type=click.IntRange(min=2), default=384, show_default=True)
@click.option("--no-rss", is_flag=True, help="Skip the serving-process memory row.")
@click.option("--maxsim", is_flag=True,
              help="Also build the per-item MaxSim collection (P4R_INDEX__MAXSIM) and add k = 10 "
                   "rows served through it, beside the default bounded persona query.")
@click.option("--float16", is_flag=True,
              help="Store vectors as float16 (P4R_INDEX__VECTOR_DATATYPE): half the vector memory; "
                   "numpy stays the float32 reference.")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where to build the synthetic shards (default: a temp folder, removed).")
@click.option("--json", "as_json", is_flag=True, help='Print {"rows": [...]}.')
@friendly_errors
def bench(sizes: str, million: bool, candidate_counts: str, users: int, batch: int, rounds: int,
          dim: int, no_rss: bool, maxsim: bool, float16: bool, work_dir: Path | None,
          as_json: bool) -> None:
    """Rerank latency per user on synthetic Edge collections, beside exact numpy.

    Rows: 20 and 100 candidates, k = all and k = 10 (a persona query bounded to the points
    that can hold the top 10), one user per call (single: explanations read from the store;
    single cached: from the LRU) and BATCH per call; user_id requests with cold profiles (a
    profile-point read) and warm ones; the build rate; the serving process's RSS against the
    raw vector bytes. Each request is interleaved with its numpy baseline.
    """
    from p4r.bench.query import PER_ITEM, run_bench

    size_list = positive_ints(sizes, "--sizes") + ([1_000_000] if million else [])
    counts = positive_ints(candidate_counts, "--candidates")
    smallest = min(size_list) // PER_ITEM
    if max(counts) > smallest:
        raise click.BadParameter(f"{max(counts)} candidates need at least {max(counts)} items, "
                                 f"but {min(size_list)} personas make {smallest}",
                                 param_hint="--candidates")
    rows = run_bench(sizes=size_list, candidate_counts=counts,
                     users=users, batch=batch, dim=dim, work_dir=work_dir,
                     progress=not as_json, rounds=rounds, rss=not no_rss, maxsim=maxsim,
                     datatype="float16" if float16 else "float32")
    if as_json:
        echo_json({"rows": rows})
        return
    click.echo(f"{'personas':>9} {'cands':>5} {'k':>4} {'mode':>14} {'p50 ms':>8} {'p99 ms':>8} "
               f"{'numpy p50':>9} {'ratio':>6}")
    for row in rows:
        if row["mode"].startswith("build"):
            click.echo(f"{row['personas']:>9} {row['mode']}: {row['points_per_s']} points/s")
        elif row["mode"].startswith("rss"):
            label = "serving RSS" + (" (top k through MaxSim)" if row["mode"] != "rss" else "")
            click.echo(f"{row['personas']:>9} {label} {row['rss_mb']} MB = "
                       f"{row['ratio_to_raw']}x the raw vectors ({row['raw_vectors_mb']} MB); "
                       f"anonymous {row['anon_mb']} MB, mapped files {row['file_mb']} MB; "
                       f"an idle interpreter with p4r imported: {row['interpreter_mb']} MB")
        else:
            click.echo(f"{row['personas']:>9} {row['candidates']:>5} {row['k']!s:>4} "
                       f"{row['mode']:>14} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                       f"{row['numpy_p50_ms']:>9.3f} "
                       f"{row['p50_ms'] / max(row['numpy_p50_ms'], 1e-9):>5.1f}x")

