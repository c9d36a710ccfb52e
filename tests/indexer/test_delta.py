"""Catalog deltas: a changed catalog with the same encoder is written item by item (in place
on a server, as an overlay version on Edge), and answers exactly what a full rebuild of the
same data answers: same items, same order, same personas, scores within 1e-6."""

from __future__ import annotations

import copy
from dataclasses import replace

import numpy as np

from p4r.datasets.models import Dataset, Item, Persona
from p4r.query import Reranker
from p4r.store import catalog
from p4r.store.base import Backend
from p4r.store.lifecycle import check_dataset, prune_versions
from tests.conftest import upsert

USERS = ["u-ana", "u-ben", "u-chloe", "u-dev"]


def _edit(data: Dataset, step: int) -> Dataset:
    """A day of catalog changes: a persona rewritten, one added, one replaced by another, an
    item removed, an item added (with personas and a summary), a summary changed."""
    data = copy.deepcopy(data)
    if step >= 1:
        personas = data.personas["cafe-lumen"]
        personas[0] = replace(personas[0], rationale="Quiet tables and a strong flat white.")
        data.personas["tide-sushi"].append(Persona("tide-sushi", "P3", "Omakase Regular",
                                                   "Books the counter.",
                                                   "Counts on the chef's choice."))
        data.personas.pop("the-copper-still")
        data.items.pop("the-copper-still")
        noodle = data.personas["noodle-harbor"]  # a persona replaced by another: same count
        noodle[1] = replace(noodle[1], persona_id="P9", name="Broth Scholar")
    if step >= 2:
        data.items["lantern-ramen"] = Item("lantern-ramen", "Lantern Ramen",
                                           "A small ramen bar with rich tonkotsu broth.")
        data.personas["lantern-ramen"] = [
            Persona("lantern-ramen", "P1", "Broth Devotee", "Judges a bowl by its broth.",
                    "Rich tonkotsu."),
            Persona("lantern-ramen", "P2", "Late Eater", "Eats after midnight.", "Open late.")]
        noodle = data.items["noodle-harbor"]
        data.items["noodle-harbor"] = replace(noodle, summary=noodle.summary + " Now open late.")
    return data


def _answers(backend: Backend, data: Dataset) -> dict[str, list[tuple]]:
    reranker = Reranker("demo", backend)
    cands = sorted({*data.items, *data.personas, "the-copper-still"})
    out = {}
    for user in USERS:
        for k in (None, 3):
            result = reranker.rerank(user_id=user, candidates=cands, k=k, on_unknown="keep")
            out[f"{user}/{k}"] = [(i.item_id, i.explanation, i.persona, i.score)
                                  for i in result.items]
    return out


def _same(a: dict[str, list[tuple]], b: dict[str, list[tuple]]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert [row[:3] for row in a[key]] == [row[:3] for row in b[key]], key
        scores = [(x[3], y[3]) for x, y in zip(a[key], b[key], strict=True)]
        for x, y in scores:
            assert (x is None) == (y is None)
            if x is not None:
                assert abs(x - y) <= 1e-6, key


def test_a_delta_answers_what_a_full_rebuild_answers(two, demo_dataset, tiny_encoder) -> None:  # type: ignore[no-untyped-def]
    delta_store, full_store = two
    upsert(demo_dataset, delta_store, tiny_encoder)
    for step in (1, 2):  # two deltas in a row: each against the same base on Edge
        changed = _edit(demo_dataset, step)
        report = upsert(changed, delta_store, tiny_encoder, delta_limit=0.5)
        assert report.action == "delta", report
        # In place: the day's items; an overlay: every item that differs from its base.
        assert report.delta_items == 4 if step == 1 else report.delta_items in (2, 5)
        assert report.encoded <= 20, "only the touched items' texts are embedded"
        rebuilt = upsert(changed, full_store, tiny_encoder, full=True)
        assert rebuilt.action == "created"
        _same(_answers(delta_store, changed), _answers(full_store, changed))
        assert check_dataset(delta_store, "demo")["ok"]
        assert upsert(changed, delta_store, tiny_encoder).action == "unchanged"
        drop_store = full_store  # the next full build starts from nothing
        for kinds in catalog.versions(drop_store, "demo").values():
            for name in kinds.values():
                drop_store.drop_collection(name)
        drop_store.set_aliases({a: None for a in drop_store.get_aliases()
                                if a.startswith("p4r_demo")})
    answers = _answers(delta_store, _edit(demo_dataset, 2))
    assert not any(row[0] == "the-copper-still" and row[1] != "unscored"
                   for rows in answers.values() for row in rows), "a removed item is unknown"


def test_full_and_encoder_change_build_versions_and_prune_keeps_the_base(  # type: ignore[no-untyped-def]
        backend: Backend, demo_dataset, tiny_encoder) -> None:
    upsert(demo_dataset, backend, tiny_encoder)
    assert upsert(_edit(demo_dataset, 2), backend, tiny_encoder, delta_limit=0.1).action \
        == "created", "a change past the limit is a new version"
    upsert(demo_dataset, backend, tiny_encoder)
    delta = upsert(_edit(demo_dataset, 1), backend, tiny_encoder, delta_limit=0.5)
    assert delta.action == "delta"
    prune_versions(backend, "demo")
    assert check_dataset(backend, "demo")["ok"], "prune never removes the base of an overlay"
    full = upsert(_edit(demo_dataset, 2), backend, tiny_encoder, full=True, delta_limit=1.0)
    assert full.action in ("created", "reused") and full.version > delta.version
    assert catalog.read_manifest(backend, "demo", full.version).base is None


def test_growing_an_item_past_the_largest_builds_a_version(backend: Backend, demo_dataset,  # type: ignore[no-untyped-def]
                                                           tiny_encoder) -> None:
    """A top-k query is bounded by the most personas one item has: a change that raises it
    is a full build, so no reader ever uses a bound too small."""
    upsert(demo_dataset, backend, tiny_encoder)
    grown = copy.deepcopy(demo_dataset)
    grown.personas["saffron-lane"] += [
        Persona("saffron-lane", "P9", "Extra", "One more.", "More."),
        Persona("saffron-lane", "P8", "Another", "And another.", "Yes.")]
    report = upsert(grown, backend, tiny_encoder)
    assert report.action == "created" and report.version == 2
    reranker = Reranker("demo", backend)
    full = reranker.rerank(user_id="u-ana", candidates=sorted(grown.personas))
    top = reranker.rerank(user_id="u-ana", candidates=sorted(grown.personas), k=2)
    assert [i.item_id for i in top.items] == [i.item_id for i in full.items[:2]]
    assert np.allclose([i.score for i in top.items], [i.score for i in full.items[:2]])
