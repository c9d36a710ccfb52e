"""The ASGI app of ``p4r serve``: FastAPI over :mod:`p4r.query`, built by :func:`create_app`.

Worker processes (``--workers N``) import :func:`app_from_env`, which reads everything from
``P4R_*`` settings (the CLI exports its options there before the workers start).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from p4r import __version__
from p4r.errors import ConfigError, P4RError
from p4r.query import Reranker, open_reranker
from p4r.serve import routes
from p4r.serve.errors import error_body, status_for, validation_message
from p4r.serve.metrics import Metrics, MetricsMiddleware
from p4r.serve.state import ServeState
from p4r.settings import Settings, load_settings

log = logging.getLogger("p4r.serve")

DESCRIPTION = """Persona4Rec reranking over HTTP: each candidate item is scored by its best
persona for the user, and that persona is the explanation. Errors answer `{"error": "..."}`
with the message the CLI prints; a dataset that is not indexed yet answers 503."""


def create_app(settings: Settings | None = None, dataset: str | None = None, *,
               opener: Callable[[Settings, str], Reranker] = open_reranker) -> FastAPI:
    """Build the app serving ``dataset`` (default ``settings.serve.dataset``).

    The dataset is loaded when the app starts (its lifespan) and reloaded every
    ``settings.serve.reload_interval`` seconds; until a version is loaded the API answers 503.
    """
    settings = settings or load_settings()
    dataset = dataset or settings.serve.dataset
    if not dataset:
        raise ConfigError("no dataset to serve: pass --dataset or set P4R_SERVE__DATASET")
    metrics = Metrics()
    state = ServeState(settings, dataset, metrics, opener)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.start()
        yield
        await state.stop()
        metrics.close()

    app = FastAPI(title="p4r", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.p4r = state
    app.state.metrics = metrics
    app.include_router(routes.router)
    _add_error_handlers(app)
    _add_explorer(app)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app


def app_from_env() -> FastAPI:
    """App factory for uvicorn workers: settings and dataset come from ``P4R_*``."""
    return create_app()


def _add_error_handlers(app: FastAPI) -> None:
    """Every error answers ``{"error": one line}``; only a bug answers 500."""

    async def p4r_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(error_body(exc), status_code=status_for(exc))

    async def invalid_request(_: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return JSONResponse({"error": validation_message(exc.errors())}, status_code=422)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code < 400:
            return Response(status_code=exc.status_code, headers=exc.headers)
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code,
                            headers=exc.headers)

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("p4r serve: unexpected error", exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server "
                                      "log"}, status_code=500)

    app.add_exception_handler(P4RError, p4r_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


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
