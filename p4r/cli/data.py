"""``p4r data`` (alias ``p4r-data``): prepare canonical dataset folders from raw public
dumps."""

from __future__ import annotations

from pathlib import Path

import click

from p4r.cli.common import (
    Group,
    dataset_option,
    echo_json,
    friendly_errors,
    json_option,
    out_dir_option,
)
from p4r.datasets.prepare import prepare_dataset
from p4r.datasets.raw import KINDS


@click.group("data", cls=Group,
             short_help="Prepare canonical datasets from raw Yelp and Amazon dumps.")
def main() -> None:
    """Prepare datasets: raw Yelp or Amazon dumps in, canonical jsonl files out.

    Output goes to $P4R_DATA_DIR/datasets/NAME unless --out-dir is given; the LLM stages
    (`p4r reason`) add summaries, aspects and personas.
    """


def _categories(values: tuple[str, ...]) -> list[str] | None:
    """``--categories A,B`` and ``--categories A --categories B`` both give ``[A, B]``."""
    if not values:
        return None
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


@main.command()
@dataset_option(help="Dataset name, e.g. yelp or beauty.")
@click.option("--source", "-s", required=True,
              type=click.Path(exists=True, path_type=Path),
              help="Yelp: the folder with yelp_academic_dataset_*.json. Amazon: the review "
                   "file (.jsonl/.json, optionally .gz).")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="Source format; detected from the files when omitted.")
@click.option("--meta", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None,
              help="amazon2023: item metadata file (default: the meta_*.jsonl(.gz) beside "
                   "--source).")
@click.option("--city", default=None,
              help="yelp: keep businesses in this city (default Philadelphia; '' for all).")
@click.option("--state", default=None,
              help="yelp: keep businesses in this state (default PA; '' for all).")
@click.option("--categories", multiple=True,
              help="Keep items in any of these categories, comma-separated or repeated; "
                   "case-insensitive (yelp default: Restaurants,Food; '' for all).")
@click.option("--kcore", type=click.IntRange(min=0), default=5, show_default=True,
              help="Drop users and items with fewer interactions, repeatedly; 0 disables.")
@click.option("--dedupe-text", is_flag=True,
              help="Also collapse one user's identical review posted at the same time under "
                   "several items (product-variant copies in Amazon 2018 files).")
@click.option("--max-interactions", type=click.IntRange(min=1), default=None,
              help="Subsample whole user histories down to at most N interactions.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the user draw for --max-interactions.")
@out_dir_option(help="Output folder (default: $P4R_DATA_DIR/datasets/NAME).")
@json_option("Print the summary as JSON.")
@friendly_errors
def prepare(dataset: str, source: Path, kind: str | None, meta: Path | None, city: str | None,
            state: str | None, categories: tuple[str, ...], kcore: int, dedupe_text: bool,
            max_interactions: int | None, seed: int, out_dir: Path | None,
            as_json: bool) -> None:
    """Write items.jsonl, reviews.jsonl and the leave-one-out split of a raw dataset.

    Filters, removes duplicate reviews, applies the k-core and optional subsample, and
    replaces each output file atomically; re-running gives identical files. Summaries,
    aspects and personas are left to the LLM stages.
    """
    report = prepare_dataset(dataset, source, kind=kind, meta=meta, city=city, state=state,
                             categories=_categories(categories), kcore=kcore,
                             dedupe_text=dedupe_text, max_interactions=max_interactions,
                             seed=seed, out=out_dir)
    if as_json:
        echo_json(report.as_dict())
        return
    sampled = (f", {report.dropped_by_subsample} by subsampling"
               if report.dropped_by_subsample else "")
    click.echo(f"{report.dataset} ({report.kind}): {report.items} items, {report.users} users, "
               f"{report.interactions} interactions ({report.duplicates} duplicates, "
               f"{report.dropped_by_kcore} dropped by {report.kcore}-core{sampled}) "
               f"→ {report.folder}")
