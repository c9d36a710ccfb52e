"""The ASGI app of ``p4r serve``: FastAPI over :mod:`p4r.query`, built by :func:`create_app`.

Worker processes (``--workers N``) import :func:`app_from_env`, which reads everything from
``P4R_*`` settings (the CLI exports its options there before the workers start).

Every HTTP request passes one front chain of pure ASGI middleware, outermost first: metrics
(every request, refusals included, labelled by route), CORS (only when origins are
configured) and the gate (:mod:`p4r.serve.gate`: trusted hosts, keys, body size). Then
``POST /v1/rerank`` and ``POST /v1/rerank/batch`` are answered by the lean path
(:mod:`p4r.serve.lean`), every other request by FastAPI's own stack (routing, validation,
exception handlers). A middleware added with ``app.add_middleware`` sits inside FastAPI's
stack, so it does not see the two rerank routes: add it to the front chain
(:func:`front_chain`) to see every request.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from p4r import __version__
from p4r.errors import ConfigError, P4RError
from p4r.query import Reranker, open_reranker
from p4r.serve import routes
from p4r.serve.busy import BusyPoll
from p4r.serve.errors import simple_body, validation_error
from p4r.serve.gate import Gate, Keys, load_keys
from p4r.serve.lean import Coalescer, LeanRerank, LeanRoutes
from p4r.serve.metrics import Metrics, MetricsMiddleware, leaf_routes
from p4r.serve.state import ServeState
from p4r.settings import ServeSettings, Settings, load_settings

DESCRIPTION = """Persona4Rec reranking over HTTP: each candidate item is scored by its best
persona for the user, and that persona is the explanation.

* **Keys**: once `P4R_SERVE__API_KEY` or `P4R_SERVE__READ_ONLY_API_KEY` is set, every `/v1/`
  route needs one, sent as `api-key: KEY` or `Authorization: Bearer KEY`; writes
  (`add_interactions`, `forget_user`) need the read-write key. `/healthz`, `/readyz`,
  `/metrics`, this page and `/openapi.json` need none.
* **Errors** answer `{"error": {"code", "message", "request_index"?, "field"?}}`; `message`
  is the line the CLI prints.
* **Versions**: every answer carries the index `version`; scores compare within one version.
"""


class ServeApp(FastAPI):
    """FastAPI whose HTTP requests go through :attr:`front` (module doc); lifespan events and
    everything the front chain passes on reach FastAPI as usual."""

    front: ASGIApp | None = None
    busy: BusyPoll | None = None  # keeps the loop polling after each answer
    coalescer: Coalescer | None = None  # answers concurrent single reranks together

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is not None and scope["type"] == "http":
            await self.front(scope, receive, send)
            if self.busy is not None:
                self.busy.touch()
        else:
            await super().__call__(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own stack: routing, validation, exception handlers."""
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, dataset: str | None = None, *,
               opener: Callable[[Settings, str], Reranker] = open_reranker,
               lean: bool | None = None) -> ServeApp:
    """Build the app serving ``dataset`` (default ``settings.serve.dataset``).

    The dataset is loaded when the app starts (its lifespan) and reloaded every
    ``settings.serve.reload_interval`` seconds; until a version is loaded the API answers 503.
    ``lean=False`` answers the two rerank routes through FastAPI too: the reference the tests
    compare the lean path with (same answers, same refusals); None reads
    ``settings.serve.lean_rerank``.

    Raises:
        ConfigError: no dataset, or an unusable key setting.
    """
    settings = settings or load_settings()
    dataset = dataset or settings.serve.dataset
    if not dataset:
        raise ConfigError("no dataset to serve: pass --dataset or set P4R_SERVE__DATASET")
    keys = load_keys(settings.serve)
    metrics = Metrics()
    state = ServeState(settings, dataset, metrics, opener)

    busy = BusyPoll(settings.serve.busy_poll_us / 1e6)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            busy.stop()
            await state.stop()
            metrics.close()

    app = ServeApp(title="p4r", version=__version__, description=DESCRIPTION,
                   lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.p4r = state
    app.state.metrics = metrics
    app.include_router(routes.router)
    _add_error_handlers(app, state)
    _add_explorer(app)
    _add_docs(app)
    app.openapi = lambda: _openapi(app, settings.serve)  # type: ignore[method-assign]
    lean = settings.serve.lean_rerank if lean is None else lean
    app.front = front_chain(app, state, keys, lean=lean)
    app.busy = busy
    return app


LEAN_ROUTES = {"/v1/rerank": False, "/v1/rerank/batch": True}  # path → batch


def front_chain(app: ServeApp, state: ServeState, keys: Keys, *, lean: bool = True) -> ASGIApp:
    """What every HTTP request passes, outermost first: metrics, CORS (when origins are
    configured), the gate; then the lean rerank routes, or FastAPI."""
    serve = state.settings.serve
    inner: ASGIApp = app.framework
    if lean:
        documented = {route.path: route for route in leaf_routes(app.router.routes)
                      if isinstance(route, APIRoute) and "POST" in route.methods}
        coalescer = app.coalescer = Coalescer(state) if serve.coalesce else None
        inner = LeanRoutes({path: LeanRerank(state, batch=batch, route=documented[path],
                                             framework=app.framework,
                                             coalescer=None if batch else coalescer)
                            for path, batch in LEAN_ROUTES.items()}, app.framework)
    inner = Gate(inner, serve=serve, keys=keys)
    if serve.cors_origins:
        inner = CORSMiddleware(inner, allow_origins=serve.cors_origins,
                               allow_methods=["GET", "POST", "DELETE"],
                               allow_headers=["api-key", "authorization", "content-type"],
                               max_age=600)
    return MetricsMiddleware(inner, metrics=state.metrics, routes=app.router.routes)


def app_from_env() -> ServeApp:
    """App factory for uvicorn workers: settings and dataset come from ``P4R_*``."""
    return create_app()


# -- errors ------------------------------------------------------------------------------------
_HTTP_CODES = {400: "bad_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 429: "too_many_requests"}


def _add_error_handlers(app: FastAPI, state: ServeState) -> None:
    """Every error answers ``{"error": {code, message, ...}}``; only a bug answers 500."""

    async def p4r_error(_: Request, exc: Exception) -> JSONResponse:
        status, body, headers = state.error_answer(exc)
        return JSONResponse(body, status_code=status, headers=headers)

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        status, body = validation_error(exc.errors())
        return JSONResponse(body, status_code=status)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=exc.headers)
        code = _HTTP_CODES.get(exc.status_code,
                               "internal" if exc.status_code >= 500 else "bad_input")
        return JSONResponse(simple_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

    app.add_exception_handler(P4RError, p4r_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, p4r_error)  # a bug: 500, logged


# -- OpenAPI -----------------------------------------------------------------------------------
SECURITY_SCHEMES = {
    "ApiKey": {"type": "apiKey", "in": "header", "name": "api-key",
               "description": "P4R_SERVE__API_KEY (read-write) or P4R_SERVE__READ_ONLY_API_KEY."},
    "Bearer": {"type": "http", "scheme": "bearer",
               "description": "The same keys as `Authorization: Bearer KEY`."},
}


def _openapi(app: FastAPI, serve: ServeSettings) -> dict[str, Any]:
    """The OpenAPI document, built once: the server's own limits as the schema's bounds, and
    the key schemes on the routes that need a key."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(title=app.title, version=app.version, description=app.description,
                      routes=app.routes)
    schemas = doc.get("components", {}).get("schemas", {})
    _bound(schemas, "RerankIn", "candidates", "maxItems", serve.max_candidates)
    _bound(schemas, "RerankIn", "history", "maxItems", serve.max_history)
    _bound(schemas, "RerankBatchIn", "requests", "maxItems", serve.max_batch)
    _bound(schemas, "InteractionsIn", "interactions", "maxItems", serve.max_interactions)
    for model, field in (("HistoryEntry", "text"), ("HistoryEntry", "summary"),
                         ("LiveInteraction", "text")):
        _bound(schemas, model, field, "maxLength", serve.max_text_chars)
    doc.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in doc.get("paths", {}).items():
        if path.startswith("/v1/"):
            for operation in operations.values():
                operation["security"] = [{"ApiKey": []}, {"Bearer": []}]
    app.openapi_schema = doc
    return doc


def _bound(schemas: dict[str, Any], model: str, field: str, key: str, value: int) -> None:
    """Set ``key`` (maxItems, maxLength) on a property, inside ``anyOf`` for optional ones."""
    prop = schemas.get(model, {}).get("properties", {}).get(field)
    if prop is None:
        return
    for part in [prop, *prop.get("anyOf", [])]:
        if key in part:
            part[key] = value


# -- pages -------------------------------------------------------------------------------------
def _add_explorer(app: FastAPI) -> None:
    """The explorer page at ``/``: static HTML and JavaScript shipped in the package."""
    static = resources.files("p4r.serve") / "static"
    pages = {"/": ("explorer.html", "text/html; charset=utf-8"),
             "/explorer.js": ("explorer.js", "text/javascript; charset=utf-8"),
             "/explorer.css": ("explorer.css", "text/css; charset=utf-8")}
    for path, (name, media_type) in pages.items():
        app.add_api_route(path, _static_page((static / name).read_bytes(), media_type),
                          methods=["GET"], include_in_schema=False)


def _static_page(body: bytes, media_type: str) -> Callable[[], Awaitable[Response]]:
    async def page() -> Response:
        return Response(body, media_type=media_type)

    return page


# Swagger UI and ReDoc from the fastapi-offline package (a dependency): /docs works with no
# network, unlike FastAPI's default pages, which load them from a CDN.
DOCS_ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8",
               "swagger-ui.css": "text/css; charset=utf-8",
               "redoc.standalone.js": "text/javascript; charset=utf-8",
               "favicon.png": "image/png"}
ASSETS_URL = "/docs/assets"


def _add_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) and ``/redoc`` with their assets served by this process."""

    async def swagger() -> Response:
        return get_swagger_ui_html(
            openapi_url="/openapi.json", title="p4r API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True})

    async def redoc() -> Response:
        return get_redoc_html(openapi_url="/openapi.json", title="p4r API",
                              redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
                              with_google_fonts=False)

    app.add_api_route("/docs", swagger, methods=["GET"], include_in_schema=False)
    app.add_api_route("/redoc", redoc, methods=["GET"], include_in_schema=False)
    for name, media_type in DOCS_ASSETS.items():
        app.add_api_route(f"{ASSETS_URL}/{name}", _docs_asset(name, media_type),
                          methods=["GET"], include_in_schema=False)


def _docs_asset(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    """One asset of fastapi-offline, read on first use (3 MB a worker need not hold unasked)."""
    cache: list[bytes] = []

    async def asset() -> Response:
        if not cache:
            cache.append((resources.files("fastapi_offline") / "static" / name).read_bytes())
        return Response(cache[0], media_type=media_type,
                        headers={"cache-control": "public, max-age=86400"})

    return asset
