"""Run the HTTP API on uvicorn: the settings every worker reads, then the server itself.

``p4r serve`` and the serve benchmark call these; an application can too. What this adds to a
plain ``uvicorn.run``:

* a refusal to listen beyond loopback with no key (:func:`check_exposure`);
* uvicorn's protocol with head/body timeouts, a head size limit and a connection cap
  (:mod:`p4r.serve.protocol`), the keep-alive timeout from the settings, and a descriptor
  limit raised to fit the connection cap;
* TLS when a certificate and key are given;
* credentials masked in every log line, uvicorn's included (a URL with ``?api-key=`` in a
  request path or an error);
* SIGTERM ends the process with status 0 after a graceful shutdown (uvicorn re-raises the
  signal once it has shut down, which would end it with -15).
"""

from __future__ import annotations

import copy
import ipaddress
import logging
import os
import resource
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from p4r.datasets.registry import validate_name
from p4r.errors import ConfigError, mask_credentials
from p4r.serve.gate import load_keys
from p4r.serve.protocol import PROTOCOL
from p4r.settings import LOOPBACK_HOSTS, ServeSettings, load_settings

APP_FACTORY = "p4r.serve.app:app_from_env"
log = logging.getLogger("p4r.serve")


def export_settings(*, dataset: str, backend: str | None = None,
                    reload_interval: float | None = None,
                    allow_anonymous_writes: bool = False) -> ServeSettings:
    """Put the command-line options where every worker's settings read them (``P4R_*``).

    Checked once here (keys and their files included), so a bad value fails before any
    worker starts. Returns the serve settings the workers will see.
    """
    os.environ["P4R_SERVE__DATASET"] = validate_name(dataset)
    if backend:
        os.environ["P4R_BACKEND"] = backend
    if reload_interval is not None:
        os.environ["P4R_SERVE__RELOAD_INTERVAL"] = str(reload_interval)
    if allow_anonymous_writes:
        os.environ["P4R_SERVE__ALLOW_ANONYMOUS_WRITES"] = "true"
    serve = load_settings().serve
    load_keys(serve)
    return serve


def is_loopback(host: str) -> bool:
    """Whether listening on ``host`` reaches only this machine."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # a host name (or "" for every interface): other machines may reach it


def check_exposure(host: str, serve: ServeSettings, *, insecure: bool = False) -> list[str]:
    """Refuse to listen beyond loopback with no key; return warnings to print.

    Raises:
        ConfigError: ``host`` is not loopback, no key is configured and ``insecure`` is off.
    """
    if is_loopback(host):
        return []
    keys = load_keys(serve)
    if not keys.any and not insecure:
        raise ConfigError(f"refusing to listen on {host} with no API key: set "
                          "P4R_SERVE__API_KEY (and P4R_SERVE__READ_ONLY_API_KEY for readers), "
                          "or pass --insecure")
    warnings = []
    if sorted(h.lower() for h in serve.trusted_hosts) == sorted(LOOPBACK_HOSTS):
        warnings.append(f"listening on {host}, but only Host headers {', '.join(LOOPBACK_HOSTS)}"
                        " are answered: set P4R_SERVE__TRUSTED_HOSTS to the names clients use "
                        "(or '*')")
    if not keys.any:
        warnings.append(f"listening on {host} with no API key (--insecure): anyone who "
                        "reaches it can read; writes stay off without P4R_SERVE__API_KEY "
                        "unless --allow-anonymous-writes")
    return warnings


class MaskCredentials(logging.Filter):
    """Masks URL and header credentials in every record a handler writes: its message, its
    arguments (uvicorn's access log formats them itself) and its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_credentials(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(mask_credentials(a) if isinstance(a, str) else a
                                for a in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_credentials(
                logging.Formatter().formatException(record.exc_info))
        return True


def log_config(log_level: str) -> dict[str, Any]:
    """uvicorn's logging, p4r's lines beside its own, every handler masking credentials."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["mask"] = {"()": f"{__name__}.MaskCredentials"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("mask")
    config["loggers"]["p4r"] = {"handlers": ["default"], "level": log_level.upper(),
                                "propagate": False}
    return config


def fit_descriptors(max_connections: int) -> None:
    """Raise the soft limit on open files to hold ``max_connections`` plus the store's files
    (up to the hard limit); warn when even that is too low."""
    wanted = max_connections + 512
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= wanted:
        return
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    if target < wanted:
        print(f"warning: open files are limited to {target}; lower P4R_SERVE__MAX_CONNECTIONS "
              f"(now {max_connections}) or raise the hard limit (ulimit -Hn)", file=sys.stderr)


def _exit_cleanly(signum: int, _: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown (it re-raises the signal), or before it
    started: a normal exit, status 0."""
    raise SystemExit(0)


def fit_busy_poll(workers: int, cpus: int | None = None) -> bool:
    """With more workers than CPUs, an idle worker's busy polling would take the CPU of a
    busy one: turn it off for the workers, unless ``P4R_SERVE__BUSY_POLL_US`` is set.
    True when it was turned off."""
    cpus = cpus if cpus is not None else len(os.sched_getaffinity(0))
    if workers <= cpus or "P4R_SERVE__BUSY_POLL_US" in os.environ:
        return False
    os.environ["P4R_SERVE__BUSY_POLL_US"] = "0"
    log.info("busy polling is off: %d workers on %d CPUs (set P4R_SERVE__BUSY_POLL_US to "
             "choose)", workers, cpus)
    return True


def run_server(*, host: str, port: int, workers: int, log_level: str = "info",
               access_log: bool = False, ssl_certfile: Path | None = None,
               ssl_keyfile: Path | None = None, serve: ServeSettings | None = None) -> None:
    """Run uvicorn on the app factory; several workers share Prometheus metrics via files."""
    import uvicorn

    serve = serve or load_settings().serve
    fit_descriptors(serve.max_connections)
    fit_busy_poll(workers)
    metrics_dir = None
    if workers > 1:  # must be set before any worker imports prometheus_client
        metrics_dir = tempfile.mkdtemp(prefix="p4r-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        uvicorn.run(APP_FACTORY, factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, log_config=log_config(log_level),
                    access_log=access_log, timeout_graceful_shutdown=10,
                    http=PROTOCOL, timeout_keep_alive=serve.keep_alive_timeout,
                    ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
    finally:
        signal.signal(signal.SIGTERM, previous)
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)
