"""Bounded listings of the served version's users and items, for the explorer's pickers.

They read a prefix of a collection (at most ``SCAN_LIMIT`` points), so their cost does not
grow with the index; they are suggestions for people exploring, not a catalogue API.
"""

from __future__ import annotations

from itertools import islice

from p4r.query import Reranker
from p4r.serve.models import ItemBrief

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
