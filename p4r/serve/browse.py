"""What the explorer reads besides reranks: pickers, item details and a user's history.

The listings read a prefix of a collection (at most ``SCAN_LIMIT`` points), so their cost
does not grow with the index; they are suggestions for people exploring, not a catalogue API.
Item details are point reads of the served version's summaries (written as yielded steps, so
a server store is awaited, see :mod:`p4r.query.calls`); a history reads the user state.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import islice
from typing import Any

from p4r.errors import ConfigError, UnknownUserError
from p4r.query import Reranker
from p4r.query.binding import ServedVersion
from p4r.query.calls import Call, Steps, run
from p4r.serve.models import MAX_SEEN, ItemBrief
from p4r.store.base import Backend
from p4r.store.naming import point_id, summary_key

SCAN_LIMIT = 20_000


def some_users(reranker: Reranker, limit: int) -> list[str]:
    """Up to ``limit`` user ids that have a profile in the served user state, sorted."""
    users = reranker.served.users
    return users.sample_users(limit) if users is not None else []


def some_items(reranker: Reranker, limit: int) -> list[ItemBrief]:
    """Up to ``limit`` items with personas or a summary, sorted by id, with titles if known."""
    titles: dict[str, str] = {}
    if reranker.summaries is not None:
        records = reranker.backend.scroll(reranker.summaries, payload_keys=["item_id", "title"])
        for record in islice(records, SCAN_LIMIT):
            payload = record.payload or {}
            titles[str(payload.get("item_id", ""))] = str(payload.get("title") or "")
    found: dict[str, str] = {}
    records = reranker.backend.scroll(reranker.personas, payload_keys=["item_id"])
    for record in islice(records, SCAN_LIMIT):
        item_id = str((record.payload or {}).get("item_id", ""))
        found.setdefault(item_id, titles.get(item_id, ""))
        if len(found) >= limit:
            break
    for item_id, title in titles.items():  # items known by their summary only (cold start)
        if len(found) >= limit:
            break
        found.setdefault(item_id, title)
    found.pop("", None)
    return [ItemBrief(item_id=i, title=t) for i, t in sorted(found.items())]


def item_details(backend: Backend, served: ServedVersion, dataset: str,
                 item_ids: Sequence[str]) -> Steps[dict[str, dict[str, str]]]:
    """``{item_id: {"title", "summary"}}`` of the ids the served version holds a summary for.

    An overlay (a catalog delta on Edge) is read first, then its base for the ids it neither
    holds nor masks (a masked id was changed or removed by the delta: the base's is stale).
    """
    view = served.views.get("summaries")
    if view is None or not item_ids:
        return {}
    ids = {point_id(*summary_key(dataset, i)): i for i in dict.fromkeys(item_ids)}
    found = yield Call(backend, "retrieve_payloads", (view.primary, list(ids)))
    rest = [pid for pid in ids if pid not in found and ids[pid] not in view.masked]
    if rest and view.base is not None:
        found = {**found, **(yield Call(backend, "retrieve_payloads", (view.base, rest)))}
    return {ids[pid]: {"title": str(payload.get("title") or ""),
                       "summary": str(payload.get("summary") or "")}
            for pid, payload in found.items() if pid in ids}


def lookup(reranker: Reranker, item_ids: Sequence[str]) -> Steps[dict[str, Any]]:
    """The answer of ``GET /v1/items/lookup``: details in the order asked, and the rest."""
    served = reranker.served  # read once: one version answers
    wanted = list(dict.fromkeys(item_ids))
    found = yield from item_details(reranker.backend, served, reranker.dataset, wanted)
    return {"items": [{"item_id": i, **found[i]} for i in wanted if i in found],
            "not_found": [i for i in wanted if i not in found], "version": served.version}


def user_history(reranker: Reranker, user_id: str, limit: int) -> dict[str, Any]:
    """The answer of ``GET /v1/users/{user_id}/history``: the last ``limit`` interactions with
    their titles, which of them the profile averages, and every item the user has seen.

    Raises:
        UnknownUserError: the user has neither interactions nor a profile (or was forgotten).
    """
    served = reranker.served
    store = served.users
    if store is None:
        raise ConfigError(f"the served version of {reranker.dataset!r} records no encoder, so "
                          "it has no user state; re-index it")
    records = store.interactions(user_id)
    profile = store.profiles([user_id]).get(user_id)
    if not records and profile is None:
        raise UnknownUserError(f"user {user_id!r} has no interactions in dataset "
                               f"{reranker.dataset!r}", user_id=user_id)
    last_n = reranker.query.last_n
    averaged = {e.key for e in profile.recent[-last_n:]} if profile is not None else set()
    shown = records[-limit:]
    details = run(item_details(reranker.backend, served, reranker.dataset,
                               [r.item_id for r in shown]))
    return {
        "user_id": user_id, "count": len(records), "last_n": last_n,
        "interactions": [{
            "item_id": r.item_id, "title": details.get(r.item_id, {}).get("title", ""),
            "timestamp": r.timestamp, "rating": r.rating, "text": r.text, "origin": r.origin,
            "in_profile": r.key(reranker.dataset) in averaged} for r in shown],
        "seen": sorted({r.item_id for r in records})[:MAX_SEEN],
        "version": served.version,
    }
