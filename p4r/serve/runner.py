"""Run the HTTP API on uvicorn: the settings every worker reads, then the server itself.

``p4r serve`` and the serve benchmark call these; an application can too.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile

from p4r.datasets.registry import validate_name
from p4r.settings import load_settings

APP_FACTORY = "p4r.serve.app:app_from_env"


def export_settings(*, dataset: str, backend: str | None = None,
                    reload_interval: float | None = None) -> None:
    """Put the command-line options where every worker's settings read them (``P4R_*``).

    Checked once here, so a bad value fails before any worker starts.
    """
    os.environ["P4R_SERVE__DATASET"] = validate_name(dataset)
    if backend:
        os.environ["P4R_BACKEND"] = backend
    if reload_interval is not None:
        os.environ["P4R_SERVE__RELOAD_INTERVAL"] = str(reload_interval)
    load_settings()


def run_server(*, host: str, port: int, workers: int, log_level: str = "info",
               access_log: bool = False) -> None:
    """Run uvicorn on the app factory; several workers share Prometheus metrics via files."""
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG

    # p4r's own lines (version switches, reload errors) go where uvicorn's go, in every worker.
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["p4r"] = {"handlers": ["default"], "level": log_level.upper(),
                                    "propagate": False}
    metrics_dir = None
    if workers > 1:  # must be set before any worker imports prometheus_client
        metrics_dir = tempfile.mkdtemp(prefix="p4r-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, log_config=log_config, access_log=access_log,
                    timeout_graceful_shutdown=10)
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
