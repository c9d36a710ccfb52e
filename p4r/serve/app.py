"""The ASGI app of ``p4r serve``: FastAPI over :mod:`p4r.query`, built by :func:`create_app`.

Worker processes (``--workers N``) import :func:`app_from_env`, which reads everything from
``P4R_*`` settings (the CLI exports its options there before the workers start).

Around the routes, outermost first: metrics (every request, refusals included, labelled by
route), CORS (only when origins are configured), and the gate (:mod:`p4r.serve.gate`: trusted
hosts, keys, body size). All three are pure ASGI middleware.
"""

from __future__ import annotations

import logging
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
from starlette.exceptions import HTTPException

from p4r import __version__
from p4r.errors import ConfigError, NotFoundError, NotIndexedError, P4RError, UnknownUserError
from p4r.query import Reranker, open_reranker
from p4r.serve import routes
from p4r.serve.errors import (
    ServeError,
    VersionGoneError,
    error_body,
    simple_body,
    validation_error,
)
from p4r.serve.gate import Gate, load_keys
from p4r.serve.metrics import Metrics, MetricsMiddleware
from p4r.serve.state import ServeState
from p4r.settings import ServeSettings, Settings, load_settings

log = logging.getLogger("p4r.serve")

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


def create_app(settings: Settings | None = None, dataset: str | None = None, *,
               opener: Callable[[Settings, str], Reranker] = open_reranker) -> FastAPI:
    """Build the app serving ``dataset`` (default ``settings.serve.dataset``).

    The dataset is loaded when the app starts (its lifespan) and reloaded every
    ``settings.serve.reload_interval`` seconds; until a version is loaded the API answers 503.

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

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        try:
            yield
        finally:
            await state.stop()
            metrics.close()

    app = FastAPI(title="p4r", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)
    app.state.p4r = state
    app.state.metrics = metrics
    app.include_router(routes.router)
    _add_error_handlers(app, state)
    _add_explorer(app)
    _add_docs(app)
    app.openapi = lambda: _openapi(app, settings.serve)  # type: ignore[method-assign]
    app.add_middleware(Gate, serve=settings.serve, keys=keys)
    if settings.serve.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.serve.cors_origins,
                           allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["api-key", "authorization", "content-type"],
                           max_age=600)
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=app.router.routes)
    return app


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: settings and dataset come from ``P4R_*``."""
    return create_app()


# -- errors ------------------------------------------------------------------------------------
_HTTP_CODES = {400: "bad_input", 401: "unauthorized", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 413: "payload_too_large", 429: "too_many_requests"}


def _add_error_handlers(app: FastAPI, state: ServeState) -> None:
    """Every error answers ``{"error": {code, message, ...}}``; only a bug answers 500."""

    async def p4r_error(_: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, NotFoundError) and not isinstance(
                exc, UnknownUserError | NotIndexedError) and state.serves_collection_in(str(exc)):
            # The served version's collections are gone (pruned or dropped under us).
            state.wake()
            exc = VersionGoneError(f"the served version of {state.dataset!r} was removed; this "
                                   "server moves to the live version within seconds, retry")
        elif isinstance(exc, NotIndexedError):
            state.wake()
        status, body = error_body(exc, hide=state.hide)
        headers = exc.headers if isinstance(exc, ServeError) else None
        if status >= 500 and not isinstance(exc, ServeError):  # not-ready shows in /readyz
            log.warning("p4r serve: %s answered %d: %s", type(exc).__name__, status, exc)
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

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("p4r serve: unexpected error", exc_info=exc)
        status, body = error_body(exc, hide=state.hide)
        return JSONResponse(body, status_code=status)

    app.add_exception_handler(P4RError, p4r_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


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
