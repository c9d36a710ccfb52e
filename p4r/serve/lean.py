"""The lean path of ``POST /v1/rerank`` and ``POST /v1/rerank/batch``: plain ASGI, no framework.

The two routes stay documented FastAPI routes (:mod:`p4r.serve.routes`: their models make the
OpenAPI document), but a request to them is answered here, behind the same metrics, CORS and
gate as every route (:func:`p4r.serve.app.create_app`). What the framework did per request and
this path does not: routing by regular expressions, a ``Request`` object, dependency solving,
``json.loads`` then model validation from Python objects, exception middleware, and
``json.dumps``. What it does:

* reads the body (the gate has already refused one over ``max_body_bytes``, by its
  ``Content-Length`` or while it streamed);
* parses and validates it in one step with the route's model (``validate_json``: the same
  model, so the same strictness and limits);
* calls :func:`~p4r.serve.routes.rerank_answer`, what the documented route calls;
* serialises the answer once with ``pydantic_core.to_json`` (already installed with pydantic;
  ~6x faster than ``json.dumps`` on a 20-candidate answer);
* answers single requests that arrive together with one batched rerank (:class:`Coalescer`).

Only the plain case is answered here: a JSON body (``Content-Type: application/json``) that the
model accepts. Anything else (another or no content type, an empty body, JSON the model
refuses or that ``json.loads`` reads differently, such as a byte order mark or UTF-16) goes to
the documented route with the body replayed, so every refusal keeps the framework's status and
error body exactly, and a body is never accepted here that the framework would refuse.
Failures of the request itself answer through :meth:`ServeState.error_answer`, the rule the
framework's exception handlers use too.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from pydantic import TypeAdapter, ValidationError
from pydantic_core import to_json
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from p4r.errors import InputError, P4RError, UnknownUserError
from p4r.query import Reranker, RerankResult
from p4r.query.models import RerankIn
from p4r.serve.gate import replay
from p4r.serve.models import RerankBatchIn
from p4r.serve.protocol import ARRIVALS
from p4r.serve.routes import (
    answer_checked,
    check_limits,
    rerank_answer,
    result_json,
    to_request,
)
from p4r.serve.state import ServeState

log = logging.getLogger("p4r.serve")

# Content types answered here (as clients send them); any other goes to the framework, which
# decides as it always did (``application/vnd.x+json``, parameters, no header at all).
JSON_TYPES = frozenset({b"application/json", b"application/json; charset=utf-8",
                        b"application/json;charset=utf-8"})


async def read_body(receive: Receive) -> bytes | None:
    """The request body; None when the client went away before sending all of it."""
    message = await receive()
    if message["type"] != "http.request":
        return None
    body: bytes = message.get("body", b"")
    if not message.get("more_body", False):
        return body
    chunks = [body]
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _content_type(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return bytes(value)
    return None


def dump_json(value: Any) -> bytes:
    """``value`` as JSON bytes, as Starlette's ``JSONResponse`` writes it but ~6x faster; like
    it, a NaN or infinite number is an error (ValueError), not invalid JSON or a silent null."""
    payload = to_json(value)
    if b"NaN" in payload or b"Infinity" in payload:  # a number, or only words in a text?
        json.dumps(value, allow_nan=False)  # raises on a number
    return payload


def json_response_start(status: int, length: int,
                        headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The ``http.response.start`` message of a JSON answer (Starlette's header order)."""
    head = [(b"content-length", str(length).encode()), (b"content-type", b"application/json")]
    if headers:
        head += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    return {"type": "http.response.start", "status": status, "headers": head}


# A request waiting in a group: its body, and the future its answer is set on (None for the
# leader, which answers itself); an answer of None means "answer alone".
_Member = tuple[RerankIn, "asyncio.Future[dict[str, Any] | None] | None"]


class Coalescer:
    """Single rerank requests that arrive together, answered by one batched rerank.

    Under load, several clients' requests are read in one turn of the event loop. The first
    (the leader) yields once, so the others already read join it, then reranks them all in
    one :meth:`~p4r.query.Reranker.arerank_batch` (one engine query per collection for the
    group, one profile read): the same answers as one by one, for less CPU per request
    (measured in ``p4r bench serve``). Under ``p4r serve`` a request that finds no other
    request read and waiting to run (:class:`~p4r.serve.protocol.Arrivals`) does not yield at
    all; elsewhere a lone request pays one extra turn of the loop.

    A request that would be refused is answered alone, as without this: when the group's
    rerank is refused (an unknown user or a bad vector fails a batch) every member answers
    alone, and so does a member whose unknown candidates it does not allow, so each gets the
    status and error body it would have got by itself; a failure of the store or version is
    every member's answer at once (see :meth:`_answer_group`). Requests with a raw
    ``history`` run the encoder in their lane and never join. A group holds at most
    ``P4R_SERVE__MAX_BATCH`` requests (what one ``POST /v1/rerank/batch`` may hold); the
    next request leads another.
    """

    def __init__(self, state: ServeState) -> None:
        self.state = state
        self._group: list[_Member] | None = None
        self.groups = 0  # groups of two or more reranked together (tests, diagnostics)
        self.at_once = 0  # requests answered without waiting a turn: none could join

    async def answer(self, body: RerankIn) -> dict[str, Any]:
        """The answer of ``POST /v1/rerank`` for ``body`` (what :func:`rerank_answer` gives)."""
        if body.history is not None:
            return await rerank_answer(self.state, [body], batch=False)
        serve = self.state.settings.serve
        check_limits([body], serve, batch=False)
        if self._group is not None and len(self._group) < serve.max_batch:
            # A leader is gathering this turn's requests: join (at most a batch's worth).
            future: asyncio.Future[dict[str, Any] | None] = \
                asyncio.get_running_loop().create_future()
            self._group.append((body, future))
            answer = await future
        elif ARRIVALS.alone():  # no request read that could join: no turn to wait
            self.at_once += 1
            answer = None
        else:
            group = self._group = [(body, None)]
            try:
                await asyncio.sleep(0)  # the requests read in this turn run up to here
            except BaseException:  # cancelled before the group ran: the others answer alone
                _settle(group, [None] * len(group))
                raise
            finally:
                if self._group is group:  # a full group may have made way for another
                    self._group = None
            answer = await self._answer_group(group) if len(group) > 1 else None
        if answer is None:  # alone: a refusal keeps its own status and body
            return await answer_checked(self.state, [body], batch=False)
        return answer

    async def _answer_group(self, group: list[_Member]) -> dict[str, Any] | None:
        """Rerank the group at once; settle every member's future and return the leader's
        answer (None: answer alone).

        A refusal of some member (an unknown user, a bad vector) fails the batch: each then
        answers alone, with its own status and body. A failure of the store or the version
        (unavailable, removed) would fail each of them alone too: all get it at once, with
        no second round of store calls. Anything else is a bug, logged; each answers alone.
        """
        outcome: list[_Outcome] = [None] * len(group)
        try:
            try:
                results, version = await self.state.hold(_rerank_together,
                                                         [body for body, _ in group])
            except (UnknownUserError, InputError):
                results, version = [], None
            except P4RError as exc:
                outcome = [exc] * len(group)
                raise
            except Exception:
                log.exception("reranking %d requests together failed; each is answered "
                              "alone", len(group))
                results, version = [], None
            for i, ((body, _), result) in enumerate(zip(group, results, strict=False)):
                if not result.unknown or body.allow_unknown:
                    outcome[i] = {**result_json(result), "version": version}
            together = sum(answer is not None for answer in outcome)
            if together:
                self.groups += 1
                self.state.metrics.coalesced.inc(together)
        finally:  # even when the leader is cancelled, no member waits forever
            _settle(group, outcome)
        return outcome[0]  # type: ignore[return-value]


# What a member of a group gets: its answer, None (answer alone), or the group's failure.
_Outcome = dict[str, Any] | None | BaseException


def _settle(group: list[_Member], outcome: list[_Outcome]) -> None:
    """Hand each waiting member what it gets."""
    for (_, future), result in zip(group, outcome, strict=True):
        if future is None or future.done():
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


async def _rerank_together(reranker: Reranker, bodies: list[RerankIn]
                           ) -> tuple[list[RerankResult], int | None]:
    results = await reranker.arerank_batch([to_request(b) for b in bodies], on_unknown="keep")
    return results, reranker.version


class LeanRerank:
    """ASGI endpoint of one rerank route (module doc).

    Args:
        state: the process's serving state.
        batch: ``POST /v1/rerank/batch`` (a :class:`RerankBatchIn` body) rather than
            ``POST /v1/rerank`` (a :class:`RerankIn`).
        route: the documented route, set as ``scope["route"]`` (the metrics label).
        framework: the framework's app, which answers what this path does not (module doc).
        coalescer: answers single requests that arrive together at once (None: each alone).
    """

    def __init__(self, state: ServeState, *, batch: bool, route: BaseRoute,
                 framework: ASGIApp, coalescer: Coalescer | None = None) -> None:
        self.state = state
        self.batch = batch
        self.route = route
        self.framework = framework
        self.coalescer = coalescer
        model: type[RerankIn] | type[RerankBatchIn] = RerankBatchIn if batch else RerankIn
        self.validate: Callable[[bytes], Any] = TypeAdapter(model).validate_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await read_body(receive)
        if body is None:
            return  # nobody to answer
        try:
            parsed = self.validate(body) if _content_type(scope) in JSON_TYPES else None
        except ValidationError:
            parsed = None
        if parsed is None:  # the framework refuses it (or reads it otherwise): its answer
            await self.framework(scope, replay(body, receive), send)
            return
        scope["route"] = self.route
        status, headers = 200, None
        try:
            if self.coalescer is not None:
                answer = await self.coalescer.answer(parsed)
            else:
                answer = await rerank_answer(self.state, parsed.requests if self.batch
                                             else [parsed], self.batch)
            payload = dump_json(answer)
        except Exception as exc:
            status, error, headers = self.state.error_answer(exc)
            payload = dump_json(error)
        await send(json_response_start(status, len(payload), headers))
        await send({"type": "http.response.body", "body": payload})


class LeanRoutes:
    """Dispatch: ``POST`` to a path of ``routes`` is answered by its lean endpoint, every other
    request by ``framework``."""

    def __init__(self, routes: dict[str, ASGIApp], framework: ASGIApp) -> None:
        self.routes = routes
        self.framework = framework

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            endpoint = self.routes.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        await self.framework(scope, receive, send)
