"""The HTTP routes: thin adapters from JSON bodies to :class:`~p4r.query.Reranker` calls.

Each route has a stable ``operation_id`` (what generated clients name their methods), one
answer shape, and the index version in its answer. Answers of the hot routes are built as
plain dicts and sent as JSON directly; the response models document them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from p4r.datasets.strings import Id
from p4r.errors import InputError, UnknownUserError
from p4r.query import Reranker, RerankRequest, RerankResult, UnknownCandidatesError
from p4r.query.calls import arun
from p4r.query.models import InteractionsIn, RerankIn, UserProfile
from p4r.serve import browse
from p4r.serve.errors import TooLargeError
from p4r.serve.models import (
    MAX_HISTORY_PAGE,
    MAX_LOOKUP,
    ErrorOut,
    ForgetOut,
    HealthOut,
    InteractionsAnswer,
    ItemList,
    ItemLookupOut,
    ItemPersonasOut,
    ReadyOut,
    RerankAnswer,
    RerankBatchIn,
    RerankBatchOut,
    UserHistoryOut,
    UserList,
)
from p4r.serve.state import ServeState
from p4r.settings import ServeSettings
from p4r.store import catalog

router = APIRouter()

_DESCRIPTIONS = {
    400: "Bad input the library refuses (`bad_input`, `unknown_candidates`), or a host that "
         "is not trusted (`untrusted_host`).",
    401: "A key is needed and none, or a wrong one, was sent (`unauthorized`).",
    403: "The key may not do this: a read-only key on a write, or writes disabled "
         "(`forbidden`).",
    404: "Unknown user (`unknown_user`) or item (`not_found`).",
    409: "The user was forgotten; nothing of theirs is recorded again (`forgotten_user`).",
    413: "Over a size limit: body bytes, candidates, batch, history, interactions or text "
         "(`payload_too_large`).",
    422: "The body does not match the schema (`bad_input`).",
    429: "The server is busy with encoding work; retry after `Retry-After` seconds "
         "(`too_many_requests`).",
    503: "Not serving: the dataset is not indexed (`not_indexed`), its version was removed "
         "(`version_gone`), or a store or encoder is unavailable (`unavailable`).",
    507: "The server's disk is full (`storage_full`).",
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorOut, "description": _DESCRIPTIONS[status]}
            for status in statuses}


_READ_ERRORS = _errors(400, 401, 404, 422, 503)
_WRITE_ERRORS = _errors(400, 401, 403, 409, 413, 422, 429, 503, 507)

UserIdPath = Annotated[Id, Path(description="The user id.", examples=["u-chloe"])]
ItemIdPath = Annotated[Id, Path(description="The item id.", examples=["tide-sushi"])]


def _state(request: Request) -> ServeState:
    state: ServeState = request.app.state.p4r
    return state


# -- rerank ------------------------------------------------------------------------------------
def to_request(body: RerankIn) -> RerankRequest:
    """The library request of one HTTP rerank body."""
    history = ([h.model_dump(exclude_none=True) for h in body.history]
               if body.history is not None else None)
    vector = np.asarray(body.vector, dtype=np.float32) if body.vector is not None else None
    return RerankRequest(candidates=body.candidates, user_id=body.user_id, history=history,
                         vector=vector, k=body.k, mode=body.mode, diversify=body.diversify)


def check_limits(bodies: Sequence[RerankIn], serve: ServeSettings, batch: bool) -> None:
    """Refuse (413) a request over the server's limits, naming the field and the setting."""
    if batch and len(bodies) > serve.max_batch:
        raise TooLargeError(f"{len(bodies):,} requests are over the limit of "
                            f"{serve.max_batch:,} per batch (P4R_SERVE__MAX_BATCH)",
                            field="requests")
    for index, body in enumerate(bodies):
        where = f"requests[{index}]." if batch else ""
        problem = _over(body, serve)
        if problem is not None:
            field, message = problem
            error = TooLargeError(message, field=where + field)
            error.request_index = index if batch else None
            raise error


def _over(body: RerankIn, serve: ServeSettings) -> tuple[str, str] | None:
    if len(body.candidates) > serve.max_candidates:
        return "candidates", (f"{len(body.candidates):,} candidates are over the limit of "
                              f"{serve.max_candidates:,} (P4R_SERVE__MAX_CANDIDATES)")
    if body.history is None:
        return None
    if len(body.history) > serve.max_history:
        return "history", (f"{len(body.history):,} history entries are over the limit of "
                           f"{serve.max_history:,} (P4R_SERVE__MAX_HISTORY)")
    for i, entry in enumerate(body.history):
        for name in ("text", "summary"):
            text = getattr(entry, name) or ""
            if len(text) > serve.max_text_chars:
                return f"history[{i}].{name}", _text_over(len(text), serve)
    return None


def _text_over(length: int, serve: ServeSettings) -> str:
    return (f"text of {length:,} characters is over the limit of {serve.max_text_chars:,} "
            "(P4R_SERVE__MAX_TEXT_CHARS)")


class LocatedUnknownUser(UnknownUserError):
    """An unknown user of a batch, with the request that named them."""

    def __init__(self, exc: UnknownUserError, index: int | None, field: str) -> None:
        super().__init__(str(exc), user_id=exc.user_id)
        self.request_index = index
        self.field = field


def rerank_bodies(reranker: Reranker, bodies: Sequence[RerankIn],
                  batch: bool) -> tuple[list[RerankResult], int | None]:
    """Rerank; unknown candidates fail unless their request allows them. A refusal names the
    request (``request_index``, ``requests[i].field``) in a batch. Returns the results and
    the version that answered."""
    try:
        results = reranker.rerank_batch([to_request(b) for b in bodies], on_unknown="keep")
        return _allowed(reranker, bodies, results), reranker.version
    except (UnknownUserError, InputError) as exc:
        raise _located(exc, bodies, batch) from None


async def arerank_bodies(reranker: Reranker, bodies: Sequence[RerankIn],
                         batch: bool) -> tuple[list[RerankResult], int | None]:
    """:func:`rerank_bodies` through the reranker's async path (``arerank_batch``: the server
    backend's async client, so a round trip to Qdrant does not hold the event loop)."""
    try:
        results = await reranker.arerank_batch([to_request(b) for b in bodies],
                                               on_unknown="keep")
        return _allowed(reranker, bodies, results), reranker.version
    except (UnknownUserError, InputError) as exc:
        raise _located(exc, bodies, batch) from None


def _allowed(reranker: Reranker, bodies: Sequence[RerankIn],
             results: list[RerankResult]) -> list[RerankResult]:
    for index, (body, result) in enumerate(zip(bodies, results, strict=True)):
        if result.unknown and not body.allow_unknown:
            raise UnknownCandidatesError(result.unknown, reranker.dataset, request_index=index)
    return results


def _located(exc: UnknownUserError | InputError, bodies: Sequence[RerankIn],
             batch: bool) -> Exception:
    """The refusal naming its request in a batch (``request_index``, ``requests[i].…``)."""
    if isinstance(exc, UnknownUserError):
        index = next((i for i, b in enumerate(bodies) if b.user_id == exc.user_id), 0)
        return LocatedUnknownUser(exc, index if batch else None,
                                  f"requests[{index}].user_id" if batch else "user_id")
    if not batch:
        exc.request_index = None
    elif exc.request_index is not None and exc.field:
        exc.field = f"requests[{exc.request_index}].{exc.field}"
    return exc


def result_json(result: RerankResult) -> dict[str, Any]:
    """One rerank result as the API answers it (without the version)."""
    return {"user_id": result.user_id, "items": [i.as_dict() for i in result.items],
            "unknown": result.unknown, "unscored": [u.as_dict() for u in result.unscored]}


async def rerank_answer(state: ServeState, bodies: Sequence[RerankIn],
                        batch: bool) -> dict[str, Any]:
    """The answer of ``POST /v1/rerank`` (``batch`` false: one body) or of
    ``POST /v1/rerank/batch``, as plain JSON values; raises what the request fails with.
    The documented routes below and the lean path (:mod:`p4r.serve.lean`) both answer
    with it."""
    check_limits(bodies, state.settings.serve, batch)
    return await answer_checked(state, bodies, batch)


async def answer_checked(state: ServeState, bodies: Sequence[RerankIn],
                         batch: bool) -> dict[str, Any]:
    """:func:`rerank_answer` of bodies already within the limits (:func:`check_limits`)."""
    if any(b.history is not None for b in bodies):  # runs the encoder: in its lane
        results, version = await state.call(state.history, rerank_bodies, bodies, batch)
    else:
        # Reads only the index, on the loop: an embedded store answers in place, a server's
        # is awaited (the reranker is held across the await, so a version switch waits).
        results, version = await state.hold(arerank_bodies, bodies, batch)
    if not batch:
        return {**result_json(results[0]), "version": version}
    return {"results": [result_json(r) for r in results], "version": version}


@router.post("/v1/rerank", operation_id="rerank", response_model=RerankAnswer,
             responses=_errors(400, 401, 404, 413, 422, 429, 503),
             summary="Rerank candidates for one user")
async def rerank(body: RerankIn, request: Request) -> Response:
    """Rank `candidates` for a user (`user_id`), a raw history (`history`, embedded on the
    fly) or a vector: each item is scored by its best persona for the user, and that persona
    explains it. `items` hold what `p4r query rerank --json` prints; candidates the index does
    not know are refused unless `allow_unknown`; repeats and `[PAD]` are listed in
    `unscored`."""
    return JSONResponse(await rerank_answer(_state(request), [body], batch=False))


@router.post("/v1/rerank/batch", operation_id="rerank_batch", response_model=RerankBatchOut,
             responses=_errors(400, 401, 404, 413, 422, 429, 503),
             summary="Rerank candidates for several users in one call")
async def rerank_batch(body: RerankBatchIn, request: Request) -> Response:
    """Each request as in `POST /v1/rerank`, answered in order by one batched engine query.
    A refused request fails the batch; the error names it (`request_index`)."""
    return JSONResponse(await rerank_answer(_state(request), body.requests, batch=True))


# -- users -------------------------------------------------------------------------------------
def _check_interactions(body: InteractionsIn, serve: ServeSettings) -> None:
    if len(body.interactions) > serve.max_interactions:
        raise TooLargeError(f"{len(body.interactions):,} interactions are over the limit of "
                            f"{serve.max_interactions:,} (P4R_SERVE__MAX_INTERACTIONS)",
                            field="interactions")
    for i, interaction in enumerate(body.interactions):
        if len(interaction.text) > serve.max_text_chars:
            raise TooLargeError(_text_over(len(interaction.text), serve),
                                field=f"interactions[{i}].text")


def _live(reranker: Reranker) -> None:
    """Refuse a write to a dataset that was dropped since the last reload check."""
    catalog.live_collection(reranker.backend, reranker.dataset)


def _add(reranker: Reranker, body: InteractionsIn) -> dict[str, Any]:
    _live(reranker)
    report = reranker.add_interactions(body.interactions)
    return {**report.model_dump(), "version": reranker.version}


def _forget(reranker: Reranker, user_id: str) -> dict[str, Any]:
    _live(reranker)
    return {**reranker.forget(user_id).as_dict(), "version": reranker.version}


@router.post("/v1/interactions", operation_id="add_interactions",
             response_model=InteractionsAnswer, responses=_WRITE_ERRORS,
             summary="Record new interactions; the next rerank of their users reflects them")
async def add_interactions(body: InteractionsIn, request: Request) -> Response:
    """Each interaction is logged durably before the answer, and the users' next reranks (on
    any worker or host) reflect it; a repeat (same user, item and time) is counted, not
    stored. Needs the read-write key."""
    state = _state(request)
    _check_interactions(body, state.settings.serve)
    return JSONResponse(await state.call(state.writes, _add, body))


@router.delete("/v1/users/{user_id}", operation_id="forget_user", response_model=ForgetOut,
               responses=_WRITE_ERRORS, summary="Forget a user")
async def forget_user(request: Request, user_id: UserIdPath) -> Response:
    """Delete the user's interactions (indexed and live) and profile, and refuse their
    interactions from now on; the answer says what was removed. Needs the read-write key."""
    state = _state(request)
    return JSONResponse(await state.call(state.writes, _forget, user_id))


@router.get("/v1/users/{user_id}", operation_id="get_user", response_model=UserProfile,
            responses=_READ_ERRORS,
            summary="A user's profile: the last n interactions it is made of")
async def get_user(request: Request, user_id: UserIdPath) -> Response:
    """The interactions the profile averages (oldest first), and how many arrived live."""
    profile: UserProfile = await _state(request).hold(_profile, user_id)
    return JSONResponse(profile.model_dump())


async def _profile(reranker: Reranker, user_id: str) -> UserProfile:
    return await reranker.auser_profile(user_id)


async def _personas(reranker: Reranker, item_id: str) -> dict[str, Any]:
    personas = await reranker.aitem_personas(item_id)
    return {"item_id": item_id, "personas": [p.as_dict() for p in personas],
            "version": reranker.version}


@router.get("/v1/items/{item_id}/personas", operation_id="get_item_personas",
            response_model=ItemPersonasOut, responses=_READ_ERRORS,
            summary="The personas of one item")
async def get_item_personas(request: Request, item_id: ItemIdPath) -> Response:
    """Every persona of the item, by persona id."""
    return JSONResponse(await _state(request).hold(_personas, item_id))


def _users(reranker: Reranker, limit: int) -> dict[str, Any]:
    return {"users": browse.some_users(reranker, limit), "version": reranker.version}


def _items(reranker: Reranker, limit: int) -> dict[str, Any]:
    return {"items": [i.model_dump() for i in browse.some_items(reranker, limit)],
            "version": reranker.version}


@router.get("/v1/users", operation_id="list_users", response_model=UserList,
            responses=_errors(401, 422, 429, 503),
            summary="Some user ids of the served version (explorer suggestions)")
async def list_users(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000, description="At most this many.")] = 100,
) -> Response:
    """A bounded sample, sorted: suggestions for people exploring, not a catalogue."""
    state = _state(request)
    return JSONResponse(await state.call(state.browse, _users, limit))


@router.get("/v1/items", operation_id="list_items", response_model=ItemList,
            responses=_errors(401, 422, 429, 503),
            summary="Some items of the served version (explorer suggestions)")
async def list_items(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=5000, description="At most this many.")] = 200,
) -> Response:
    """A bounded sample with titles, sorted by id: suggestions, not a catalogue."""
    state = _state(request)
    return JSONResponse(await state.call(state.browse, _items, limit))


# -- what people read: item details, a user's history ----------------------------------------
async def _lookup(reranker: Reranker, item_ids: list[str]) -> dict[str, Any]:
    return await arun(browse.lookup(reranker, item_ids))


@router.get("/v1/items/lookup", operation_id="lookup_items", response_model=ItemLookupOut,
            responses=_errors(400, 401, 413, 422, 503),
            summary="Titles and summaries of some items, in one call")
async def lookup_items(
    request: Request,
    ids: Annotated[list[Id], Query(
        min_length=1, max_length=MAX_LOOKUP,
        description=f"The item ids, one `ids=` each (at most {MAX_LOOKUP}; repeats are "
                    "answered once).", examples=[["tide-sushi", "cafe-lumen"]])],
) -> Response:
    """What the served version holds for people about each item: its title and its summary
    (the text a `summary` row of a rerank was scored by). Ids it holds no summary for are
    listed in `not_found`, not refused."""
    return JSONResponse(await _state(request).hold(_lookup, ids))


@router.get("/v1/users/{user_id}/history", operation_id="get_user_history",
            response_model=UserHistoryOut, responses=_errors(400, 401, 404, 422, 429, 503),
            summary="A user's latest interactions with item titles and review texts")
async def get_user_history(
    request: Request, user_id: UserIdPath,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY_PAGE,
                                description="At most this many of the latest interactions.",
                                examples=[20])] = 20,
) -> Response:
    """The last `limit` interactions (oldest first), each with the item's title, the review
    text, the rating, where it came from (`file` or `live`) and whether the profile averages
    it; `seen` lists every item of the whole history."""
    state = _state(request)
    return JSONResponse(await state.call(state.browse, browse.user_history, user_id, limit))


# -- the service -------------------------------------------------------------------------------
@router.get("/healthz", operation_id="healthz", response_model=HealthOut,
            summary="The process is up (no key needed)")
async def healthz(request: Request) -> Response:
    """200 while the process answers, whether or not a version is served."""
    return JSONResponse({"status": "ok", "version": _state(request).version})


@router.get("/readyz", operation_id="readyz", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "Not serving; `code` and "
                                                               "`error` say why."}},
            summary="Whether a version is served, and which (no key needed)")
async def readyz(request: Request) -> Response:
    """200 with the version served; 503 with the reason when none is (not indexed, dropped,
    removed, or failing to load). `error` also shows a failed reload while an older version
    keeps serving."""
    state = _state(request)
    reranker = state.reranker
    ready = reranker is not None
    body = {"ready": ready, "dataset": state.dataset, "version": state.version,
            "collection": reranker.personas if reranker is not None else None,
            "code": state.error_code if state.error is not None else None,
            "error": state.error}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", operation_id="metrics", summary="Prometheus metrics",
            response_class=Response,
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                             "description": "The Prometheus text format."}})
async def metrics(request: Request) -> Response:
    """Requests by route and status, latency, served version, reloads, and the
    process (CPU, memory, descriptors). No key needed unless
    `P4R_SERVE__METRICS_REQUIRE_KEY=true`."""
    text, content_type = request.app.state.metrics.render()
    return Response(text, media_type=content_type)
