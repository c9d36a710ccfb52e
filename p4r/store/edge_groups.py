"""Grouping on Edge: each collection's group → point ids map (written at sealing), query
planning bounded to the candidates' points, and decoding hits into the best point per group.

Queries ask the engine for ids and scores only and decode hits through a small map of the
request's own candidates: Edge spends most of a small query materialising payload, and a
process-wide point → group dict of a million entries costs ~0.6 µs of cache misses per hit
(measured).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import qdrant_edge as qe

from p4r.errors import DamagedStoreError, first_line
from p4r.store.base import GroupAnswer, GroupHit, PointId, top_groups_bound

# Filtered sets are small, so exact search costs nothing and rules out index misses.
_EXACT = qe.SearchParams(exact=True)

# Candidate values kept in cached query plans per collection (~380 bytes each: filter, point
# → group map), the oldest plans leaving first: the last ~50 sets of 20 candidates, for a
# list re-ranked or paged through. A bigger cache slowed every request that misses it:
# 8,192 values cost a fresh 20-candidate query 20-100 us more (its plans crowd the engine's
# data out of the CPU caches), 1,024 about 12 us, within the noise of no cache (measured at
# 125K personas, interleaved, load ~5); a hit saves ~60-80 us.
PLAN_CACHE_VALUES = 1024
# Candidate sets remembered (by hash) so that a plan is cached only when its set comes back.
SIGHTINGS = 4096


class Plan(NamedTuple):
    """What a query needs of one candidate set, apart from the user's vector: the engine
    filter (None when no candidate has points), the engine limit, how many groups to collect,
    point → group for the candidates' points (decodes hits), and the candidates that have
    points."""

    filter: qe.Filter | None
    limit: int
    groups: int
    group_of: dict[object, str]
    present: tuple[str, ...]


class GroupMap:
    """Group (item) → its point ids for one collection, read once per process, and the query
    plans of recent candidate sets.

    Ids are kept as the engine returns them (ints; ``uuid.UUID`` for stores of id scheme 1,
    converted here once), so decoding a hit is one dict lookup with no per-hit conversion.
    A plan is built once per candidate set (and limit) and reused while it stays cached: the
    binding spends ~0.5 µs per candidate building a ``MatchAny`` filter (measured), which a
    repeated candidate set (a user's list re-ranked, a page of a listing) then skips.
    """

    def __init__(self, members: dict[str, tuple[PointId, ...]], multivector: bool) -> None:
        first = next(iter(members.values()), ())
        if first and type(first[0]) is not int:  # id scheme 1: the engine returns UUIDs
            members = {g: tuple(uuid.UUID(str(p)) for p in ids) for g, ids in members.items()}
        self.members: dict[str, tuple[object, ...]] = members  # type: ignore[assignment]
        self.multivector = multivector
        # Oldest first; an OrderedDict pops its oldest entry in O(1), where a dict's first
        # key after many deletions is found by scanning the deleted slots before it.
        self._plans: OrderedDict[tuple[str, int | None, tuple[str, ...]], Plan] = OrderedDict()
        self._planned = 0  # candidate values held by the cached plans
        self._seen: OrderedDict[int, None] = OrderedDict()  # hashes of recent sets, oldest first
        self._lock = threading.Lock()

    def plan(self, values: Sequence[str], key: str, limit: int | None) -> Plan:
        """The plan of candidates ``values`` (a query on payload ``key``, best ``limit``
        groups or all), cached by the exact candidate tuple: two candidate sets never share
        a plan. A plan is cached the second time its set is seen within the last
        :data:`SIGHTINGS` sets, so sets that come once (most) leave the cache alone."""
        cache_key = (key, limit, tuple(values))
        plan = self._plans.get(cache_key)
        if plan is None:
            plan = make_plan(values, self.members, key, limit, self.multivector)
            if self._sighted(hash(cache_key)):
                self._remember(cache_key, plan)
        return plan

    def _sighted(self, digest: int) -> bool:
        """Whether a set of this hash was planned recently; notes it otherwise. A hash
        collision only caches a plan one sighting early: plans are looked up by the set."""
        seen = self._seen
        if digest in seen:
            return True
        with self._lock:
            seen[digest] = None
            if len(seen) > SIGHTINGS:
                seen.popitem(last=False)
        return False

    def _remember(self, cache_key: tuple[str, int | None, tuple[str, ...]], plan: Plan) -> None:
        size = len(cache_key[2])
        if size > PLAN_CACHE_VALUES:
            return
        with self._lock:
            if cache_key in self._plans:
                return
            while self._plans and self._planned + size > PLAN_CACHE_VALUES:
                oldest, _ = self._plans.popitem(last=False)
                self._planned -= len(oldest[2])
            self._plans[cache_key] = plan
            self._planned += size

    def forget_plans(self) -> None:
        """Drop every cached plan."""
        with self._lock:
            self._plans.clear()
            self._planned = 0
            self._seen.clear()

    @property
    def cached_plans(self) -> int:
        """How many candidate sets' plans are cached."""
        return len(self._plans)


def groups_file(folder: Path, key: str) -> Path:
    """Where a collection's groups file for payload key ``key`` lives."""
    return folder / f"groups.{key}.npz"


def write_groups(path: Path, members: dict[str, list[PointId]]) -> None:
    """Store group → point ids in one file, replaced atomically (integer ids as an int64
    array; the uuid strings of id scheme 1 as JSON)."""
    names = list(members)
    flat = [pid for group in names for pid in members[group]]
    ids: np.ndarray = np.asarray(flat, dtype=np.int64) if all(type(p) is int for p in flat) \
        else np.frombuffer(json.dumps(flat).encode("utf-8"), dtype=np.uint8)
    sizes = np.fromiter((len(members[group]) for group in names), dtype=np.int64,
                        count=len(names))
    blob = np.frombuffer(json.dumps(names).encode("utf-8"), dtype=np.uint8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        np.savez(out, **{"ids" if ids.dtype == np.int64 else "uuids": ids}, sizes=sizes,
                 names=blob)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def read_groups(path: Path, fix: str) -> dict[str, tuple[PointId, ...]]:
    """Load a groups file; damage is one line naming the file and the fix."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids = data["ids"].tolist() if "ids" in data else \
                json.loads(data["uuids"].tobytes().decode("utf-8"))
            sizes = data["sizes"].tolist()
            names = json.loads(data["names"].tobytes().decode("utf-8"))
        if len(names) != len(sizes) or sum(sizes) != len(ids):
            raise ValueError("group sizes do not add up")
    except Exception as exc:  # zip, npy, JSON or shape errors: all mean damage
        raise DamagedStoreError(f"{path} (point groups) is damaged: {first_line(exc)}; "
                                f"{fix}") from None
    members: dict[str, tuple[PointId, ...]] = {}
    start = 0
    for name, size in zip(names, sizes, strict=True):
        members[name] = tuple(ids[start:start + size])
        start += size
    return members


def make_plan(values: Sequence[str], members: dict[str, tuple[object, ...]], key: str,
              limit: int | None, multi: bool) -> Plan:
    """The plan of one candidate set (see :class:`Plan`).

    The engine limit is every point of the candidates, or, for the best ``limit`` groups, just
    enough points that ``limit`` distinct groups must be among them (:func:`top_groups_bound`).
    """
    wanted = list(dict.fromkeys(values))
    found = [(v, ids) for v, ids in zip(wanted, map(members.get, wanted), strict=True) if ids]
    group_of = {pid: v for v, ids in found for pid in ids}
    present = [v for v, _ in found]
    n_groups = len(found)
    engine_limit = len(group_of)
    if limit is not None and limit < n_groups:
        n_groups = limit
        engine_limit = limit if multi else top_groups_bound([len(ids) for _, ids in found],
                                                            limit)
    if not engine_limit:
        return Plan(None, 0, 0, group_of, tuple(present))
    # Only candidates with points: the others match nothing, and each costs the binding.
    flt = qe.Filter(must=[qe.FieldCondition(key=key, match=qe.MatchAny(present))])
    return Plan(flt, engine_limit, n_groups, group_of, tuple(present))


def query_request(plan: Plan, vector: np.ndarray, multi: bool) -> qe.QueryRequest:
    """The engine request of one user's vector on a plan that has points."""
    row = vector.tolist()  # the binding takes a list faster than an array
    return qe.QueryRequest(limit=plan.limit, query=qe.Query.Nearest([row] if multi else row),
                           filter=plan.filter, with_payload=False, with_vector=False,
                           params=_EXACT)


def plan_query(
    vector: np.ndarray, values: Sequence[str], members: dict[str, tuple[object, ...]],
    key: str, limit: int | None, multi: bool,
) -> tuple[qe.QueryRequest | None, Plan]:
    """The engine request of one user (None if no candidate has points) and its plan,
    without the plan cache."""
    plan = make_plan(values, members, key, limit, multi)
    return (query_request(plan, vector, multi) if plan.filter is not None else None), plan


def decode(answers: Sequence[Sequence[object]], plans: Sequence[Plan]) -> list[GroupAnswer]:
    """Each plan's best point per group from the engine's score-sorted hits (ties by group),
    and the groups that have points; ``answers`` holds one hit list per plan with a filter."""
    it = iter(answers)
    results: list[GroupAnswer] = []
    for plan in plans:
        best: list[GroupHit] = []
        if plan.filter is not None:
            seen: set[str] = set()
            get = plan.group_of.get
            wanted = plan.groups
            last, tie = None, False
            for hit in next(it):  # score-sorted: the first hit of a group is its best
                pid = hit.id  # type: ignore[attr-defined]
                group = get(pid)
                if group is None or group in seen:
                    continue
                seen.add(group)
                score = hit.score  # type: ignore[attr-defined]
                tie = tie or score == last
                last = score
                best.append(GroupHit(group, pid, score))
                if len(best) == wanted:
                    break  # every group has its best: skip decoding the remaining ids
            if tie:  # equal scores: the contract orders them by group
                best.sort(key=lambda h: (-h.score, h.group))
        results.append(GroupAnswer(best, set(plan.present)))
    return results
