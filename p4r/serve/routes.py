"""The HTTP routes: thin adapters from JSON bodies to :class:`~p4r.query.Reranker` calls."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import JSONResponse, Response

from p4r.errors import InputError
from p4r.query import (
    Reranker,
    RerankRequest,
    RerankResult,
    UnknownCandidatesError,
)
from p4r.query.models import AddReport, InteractionsIn, PersonaOut, RerankIn, UserProfile
from p4r.serve import browse
from p4r.serve.models import (
    ErrorOut,
    HealthOut,
    ItemList,
    ReadyOut,
    RerankAnswer,
    RerankBatchIn,
    RerankBody,
    UserList,
)
from p4r.serve.state import ServeState

router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Bad input (the CLI's message)."},
    404: {"model": ErrorOut, "description": "Unknown user or item."},
    422: {"model": ErrorOut, "description": "The body does not match the schema."},
    503: {"model": ErrorOut, "description": "The dataset is not indexed (yet) or the server "
                                            "is misconfigured."},
}


def _state(request: Request) -> ServeState:
    state: ServeState = request.app.state.p4r
    return state


def to_request(body: RerankIn) -> RerankRequest:
    """The library request of one HTTP rerank body."""
    history = ([h.model_dump(exclude_none=True) for h in body.history]
               if body.history is not None else None)
    vector = np.asarray(body.vector, dtype=np.float32) if body.vector is not None else None
    return RerankRequest(candidates=body.candidates, user_id=body.user_id, history=history,
                         vector=vector, k=body.k)


def rerank_bodies(reranker: Reranker, bodies: Sequence[RerankIn],
                  batch: bool) -> list[RerankResult]:
    """Rerank; unknown candidates fail unless their request allows them. In a batch, a
    refusal names the request's field as ``requests[i].field``."""
    try:
        results = reranker.rerank_batch([to_request(b) for b in bodies], on_unknown="keep")
        for index, (body, result) in enumerate(zip(bodies, results, strict=True)):
            if result.unknown and not body.allow_unknown:
                raise UnknownCandidatesError(result.unknown, reranker.dataset,
                                             request_index=index)
    except InputError as exc:
        if batch and exc.request_index is not None and exc.field:
            exc.field = f"requests[{exc.request_index}].{exc.field}"
        raise
    return results


@router.post("/v1/rerank", response_model=RerankAnswer, responses=_ERRORS,
             summary="Rerank candidates for one user, or for a batch of users")
async def rerank(body: RerankBody, request: Request) -> Response:
    """One request answers exactly what ``p4r-query rerank --json`` prints: a list, best first,
    of ``{item_id, score, explanation, persona}``. A batch (``{"requests": [...]}``) answers
    ``{"results": [{user_id, items, unknown}, ...]}`` in request order."""
    state = _state(request)
    reranker = state.require()
    batch = isinstance(body, RerankBatchIn)
    bodies = body.requests if isinstance(body, RerankBatchIn) else [body]
    if any(b.history is not None for b in bodies):  # runs the encoder: off the event loop
        results = await state.run(rerank_bodies, reranker, bodies, batch)
    else:
        results = rerank_bodies(reranker, bodies, batch)
    if isinstance(body, RerankBatchIn):
        return JSONResponse({"results": [
            {"user_id": r.user_id, "items": [i.as_dict() for i in r.items], "unknown": r.unknown}
            for r in results]})
    return JSONResponse([i.as_dict() for i in results[0].items])


@router.post("/v1/interactions", response_model=AddReport, responses=_ERRORS,
             summary="Record new interactions; the next rerank of their users reflects them")
async def add_interactions(body: InteractionsIn, request: Request) -> AddReport:
    """Each interaction is logged durably before the answer; repeats are counted, not stored."""
    state = _state(request)
    report: AddReport = await state.run(state.require().add_interactions, body.interactions)
    return report


@router.get("/v1/items/{item_id}/personas", response_model=list[PersonaOut], responses=_ERRORS,
            summary="The personas of one item")
async def item_personas(
    request: Request, item_id: str = Path(min_length=1, max_length=512)
) -> list[dict[str, Any]]:
    return [p.as_dict() for p in _state(request).require().item_personas(item_id)]


@router.get("/v1/users/{user_id}", response_model=UserProfile, responses=_ERRORS,
            summary="A user's profile: the last n interactions it is made of")
async def user_profile(
    request: Request, user_id: str = Path(min_length=1, max_length=512)
) -> UserProfile:
    profile: UserProfile = _state(request).require().user_profile(user_id)
    return profile


@router.get("/v1/users", response_model=UserList, responses=_ERRORS,
            summary="Some user ids of the served version (explorer suggestions)")
async def list_users(request: Request, limit: int = Query(100, ge=1, le=1000)) -> UserList:
    state = _state(request)
    return UserList(users=await state.run(lambda: browse.some_users(state.require(), limit)))


@router.get("/v1/items", response_model=ItemList, responses=_ERRORS,
            summary="Some items of the served version (explorer suggestions)")
async def list_items(request: Request, limit: int = Query(200, ge=1, le=5000)) -> ItemList:
    state = _state(request)
    return ItemList(items=await state.run(lambda: browse.some_items(state.require(), limit)))


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
async def healthz() -> HealthOut:
    return HealthOut()


@router.get("/readyz", response_model=ReadyOut, responses={503: {"model": ReadyOut}},
            summary="Whether a version is served, and which")
async def readyz(request: Request) -> JSONResponse:
    state = _state(request)
    reranker = state.reranker
    body = ReadyOut(ready=reranker is not None, dataset=state.dataset, version=state.version,
                    collection=reranker.personas if reranker is not None else None,
                    error=state.error)
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request) -> Response:
    text, content_type = request.app.state.metrics.render()
    return Response(text, media_type=content_type)
