"""``p4r query`` (alias ``p4r-query``): rerank candidates for users from the command line."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import click

from p4r.cli import bench
from p4r.cli.common import (
    Group,
    echo_json,
    friendly_errors,
    json_option,
    k_option,
    moved,
    out_file_option,
    preview,
    settings_for,
    store_options,
)
from p4r.errors import InputError, UnknownUserError
from p4r.query import RankedItem, Reranker, RerankRequest, UnknownCandidatesError
from p4r.query.candidates import CandidateLine
from p4r.query.models import PAD
from p4r.settings import Diversify, Settings, UserMode
from p4r.store import open_backend

F = TypeVar("F", bound=Callable[..., Any])


@click.group("query", cls=Group,
             short_help="Rerank candidates by each user's best-matching persona.")
def main() -> None:
    """Rerank candidate items by each user's best-matching persona (no LLM online).

    Reads the live index `p4r index upsert` published; `p4r serve` answers the same over HTTP.
    """


def _print_table(user: str, items: list[RankedItem]) -> None:
    """One user's ranking as a table, each persona's rationale and the past interaction
    behind it under its item."""
    click.echo(f"Reranked for {user}:")
    for rank, item in enumerate(items, start=1):
        score = f"{item.score:.4f}" if item.score is not None else "   -  "
        click.echo(f"{rank:>3}. {item.item_id:<28} {score}  [{item.explanation}]")
        if item.persona:
            click.echo(f"       persona {item.persona.persona_id} \"{item.persona.name}\": "
                       f"{item.persona.rationale}")
        if item.because:
            click.echo(f"       because you liked {item.because.item_id} "
                       f"({_date(item.because.timestamp)})")


def _date(timestamp: float) -> str:
    """A timestamp as a UTC calendar date (the time of day says little here)."""
    try:
        return datetime.fromtimestamp(timestamp, tz=UTC).date().isoformat()
    except (OverflowError, OSError, ValueError):
        return str(timestamp)


def mode_options(fn: F) -> F:
    """``--mode`` and ``--diversify`` (default: P4R_QUERY__USER_MODE / P4R_QUERY__DIVERSIFY)."""
    fn = click.option("--diversify", type=click.Choice(list(get_args(Diversify))),
                      default=None, help="proportional: share the top K among the user's "
                                         "interests by weight (default "
                                         "P4R_QUERY__DIVERSIFY, none).")(fn)
    return click.option("--mode", type=click.Choice(list(get_args(UserMode))), default=None,
                        help="interests: attention over the last n interactions (default "
                             "P4R_QUERY__USER_MODE, default).")(fn)


@main.command()
@store_options
@click.option("--user-id", "-u", default=None, help="User whose indexed history is the profile.")
@click.option("--candidates", "-c", default=None,
              help="Comma-separated candidate item ids.")
@click.option("--candidates-file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Reference-format jsonl: {user_id, results: [{item_id, score}]}.")
@out_file_option(help="With --candidates-file: where to write the reranked jsonl.")
@k_option(default=None, help="Keep only the top K.")
@click.option("--allow-unknown", is_flag=True,
              help="Keep candidates the index does not know (ranked last, 'unscored') instead "
                   "of failing.")
@mode_options
@json_option("Print a JSON list, best first (with --candidates-file: a JSON summary).")
@friendly_errors
def rerank(dataset: str, data_dir: Path | None, backend: str | None, user_id: str | None,
           candidates: str | None, candidates_file: Path | None, out: Path | None,
           k: int | None, allow_unknown: bool, mode: UserMode | None,
           diversify: Diversify | None, as_json: bool) -> None:
    """Rerank candidates for one user, or a whole reference candidates file.

    Each item is scored by its best persona (cosine with the user's decayed profile, or, with
    --mode interests, attention over their last interactions); items without personas fall
    back to their summary. The best persona is the explanation, and the past interaction
    behind it is printed as "because you liked ...".
    """
    settings = settings_for(backend)
    if mode is not None or diversify is not None:
        settings = settings.model_copy(update={"query": settings.query.model_copy(update={
            name: value for name, value in (("user_mode", mode), ("diversify", diversify))
            if value})})
    on_unknown: Literal["error", "keep"] = "keep" if allow_unknown else "error"
    if candidates_file is not None:
        if out is None:
            raise click.UsageError("--candidates-file needs --out")
        _rerank_file(settings, dataset, candidates_file, out, k, on_unknown, as_json)
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
                **({"persona": it.as_dict()["persona"]} if it.persona else {}),
                **({"because": it.because.as_dict()} if it.because else {})}
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
                 on_unknown: Literal["error", "keep"], as_json: bool) -> None:
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
    distinct = list(dict.fromkeys(unknown_items))
    if distinct:
        click.echo(f"note: {len(distinct)} unknown candidate(s) kept unscored: "
                   f"{preview(distinct)}", err=True)
    if as_json:
        echo_json({"users": len(rows), "out": str(out), "unknown": distinct})
        return
    click.echo(f"reranked {len(rows)} user(s) → {out}")


main.add_command(moved(bench.query_bench, "p4r bench query"), "bench")
