"""Turn a raw dump into a dataset folder: ``items.jsonl``, ``reviews.jsonl``, ``split/``.

Order of operations, the same for every source:

1. the adapter streams reviews, keeping those that pass its filters (place, category);
2. duplicates (same user, item and timestamp) are dropped, the first occurrence kept;
3. k-core: users and items with fewer than ``k`` interactions are dropped, repeatedly;
4. optional subsample to at most ``max_interactions``: whole user histories, users drawn in a
   seeded order (see :func:`~p4r.datasets.raw.common.subsample_users`);
5. k-core again after subsampling, because removing users lowers item degrees: the output
   always satisfies the k-core property it advertises, at the price of ending below the budget;
6. items are described (titles, metadata) for the surviving item ids only.

``personas.jsonl`` is not written: it comes from the LLM stages, as do item summaries and review
aspects (written empty here). Each file is replaced atomically and the outputs depend only on
the inputs and options, so re-running gives byte-identical files.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from p4r.datasets.jsonl import write_jsonl_atomic
from p4r.datasets.models import Interaction
from p4r.datasets.raw import open_source
from p4r.datasets.raw.common import RawReview, dedupe, subsample_users
from p4r.datasets.raw.common import kcore as kcore_filter
from p4r.datasets.registry import validate_name
from p4r.datasets.split import leave_one_out, write_split
from p4r.errors import ConfigError, InputError
from p4r.fsutil import atomic_write_text

MANIFEST = "prepare.json"


@dataclass
class PrepareReport:
    """What a preparation produced and what each step removed."""

    dataset: str
    kind: str
    folder: Path
    items: int
    users: int
    interactions: int
    source_reviews: int
    filtered_out: int
    duplicates: int
    dropped_by_kcore: int
    dropped_by_subsample: int
    kcore: int
    files: list[Path] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (paths as strings) for ``--json`` and the manifest."""
        data = asdict(self)
        data["folder"] = str(self.folder)
        data["files"] = [str(p) for p in self.files]
        return data


def _interaction(review: RawReview) -> Interaction:
    """The split works on :class:`Interaction`, the record every later stage reads."""
    return Interaction(user_id=review.user_id, item_id=review.item_id,
                       timestamp=float(review.timestamp), rating=review.rating,
                       text=review.text)


def prepare_dataset(
    name: str,
    source: Path,
    *,
    kind: str | None = None,
    meta: Path | None = None,
    city: str | None = None,
    state: str | None = None,
    categories: Sequence[str] | None = None,
    kcore: int = 5,
    dedupe_text: bool = False,
    max_interactions: int | None = None,
    seed: int = 0,
    out: Path | None = None,
    data_dir: Path | None = None,
) -> PrepareReport:
    """Normalise a raw source into the canonical files of dataset ``name``.

    Args:
        name: dataset name (a slug; it becomes part of collection names).
        source: Yelp folder, or Amazon review file (``.jsonl``/``.json``, optionally ``.gz``).
        kind: ``yelp``, ``amazon2023`` or ``amazon2018``; detected from ``source`` when None.
        meta: Amazon 2023 metadata file; found beside ``source`` when None.
        city, state, categories: source filters; None takes the kind's defaults.
        kcore: k-core threshold; 0 (or 1) disables it.
        dedupe_text: also collapse one user's identical review text posted at the same time
            under several items (product-variant copies).
        max_interactions: subsample budget; None keeps everything.
        seed: seed of the user draw when subsampling.
        out: output folder; default ``<data_dir>/datasets/<name>``.
        data_dir: defaults to ``load_settings().data_dir``.

    Returns:
        The counts and output files.
    """
    validate_name(name)
    if kcore < 0:
        raise ConfigError(f"--kcore must be 0 (off) or positive, got {kcore}")
    if max_interactions is not None and max_interactions < 1:
        raise ConfigError(f"--max-interactions must be positive, got {max_interactions}")
    if out is None:
        if data_dir is None:
            from p4r.settings import load_settings

            data_dir = load_settings().data_dir
        out = data_dir / "datasets" / name

    raw = open_source(source, kind=kind, meta=meta, city=city, state=state,
                      categories=categories)
    read = list(raw.reviews())
    source_reviews = raw.stats["source_reviews"]
    reviews, duplicates = dedupe(read, by_text=dedupe_text)
    cored = kcore_filter(reviews, kcore)
    dropped_by_kcore = len(reviews) - len(cored)
    reviews, dropped_by_subsample = cored, 0
    if max_interactions is not None and len(cored) > max_interactions:
        sampled = subsample_users(cored, max_interactions, seed)
        dropped_by_subsample = len(cored) - len(sampled)
        reviews = kcore_filter(sampled, kcore)
        dropped_by_kcore += len(sampled) - len(reviews)
    if not reviews:
        raise InputError(
            f"no interactions left ({source_reviews} reviews read, {len(read)} passed the "
            f"source filters, {dropped_by_kcore} dropped by {kcore}-core): loosen the filters or "
            f"lower --kcore", file=source)

    reviews.sort(key=lambda r: (r.user_id, r.timestamp, r.item_id))
    items = raw.items(reviews)
    folder = out
    reviews_path, items_path = folder / "reviews.jsonl", folder / "items.jsonl"
    write_jsonl_atomic(reviews_path, [r.to_row() for r in reviews])
    write_jsonl_atomic(items_path, [items[i].to_row() for i in sorted(items)])
    split_paths = write_split(leave_one_out(_interaction(r) for r in reviews), folder / "split")

    report = PrepareReport(
        dataset=name, kind=raw.kind, folder=folder, items=len(items),
        users=len({r.user_id for r in reviews}), interactions=len(reviews),
        source_reviews=source_reviews, filtered_out=source_reviews - len(read),
        duplicates=duplicates, dropped_by_kcore=dropped_by_kcore,
        dropped_by_subsample=dropped_by_subsample, kcore=kcore,
        files=[items_path, reviews_path, *split_paths, folder / MANIFEST])
    # Written last: its presence says the files beside it come from one complete run.
    manifest = {"dataset": name, "kind": raw.kind,
                "source": [str(p.resolve()) for p in raw.files],
                "options": {**raw.options(), "kcore": kcore, "dedupe_text": dedupe_text,
                            "max_interactions": max_interactions,
                            "seed": seed if max_interactions is not None else None},
                "counts": {key: value for key, value in report.as_dict().items()
                           if isinstance(value, int) and key != "kcore"}}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False)
                      + "\n")
    return report
