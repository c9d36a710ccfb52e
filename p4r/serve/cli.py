"""``p4r serve``: run the HTTP API on uvicorn, or load-test it (``p4r serve bench``)."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from typing import Any

import click
from click.core import ParameterSource

from p4r.console import echo_json, friendly_errors, positive_ints
from p4r.datasets.registry import validate_name
from p4r.settings import load_settings

APP_FACTORY = "p4r.serve.app:app_from_env"


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """p4r: Persona4Rec on Qdrant."""


@main.group(invoke_without_command=True)
@click.option("--dataset", "-d", default=None, help="Dataset to serve, e.g. demo or yelp.")
@click.option("--backend", type=click.Choice(["edge", "server"]), default=None,
              help="Vector store (overrides P4R_BACKEND).")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Worker processes (each holds its own reranker).")
@click.option("--reload-interval", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds between checks for a newly published version "
                   "(P4R_SERVE__RELOAD_INTERVAL, default 5).")
@click.option("--log-level", type=click.Choice(["critical", "error", "warning", "info", "debug"]),
              default="info", show_default=True)
@click.option("--access-log", is_flag=True, help="Log every request (costs latency).")
@click.pass_context
@friendly_errors
def serve(ctx: click.Context, dataset: str | None, backend: str | None, host: str, port: int,
          workers: int, reload_interval: float | None, log_level: str, access_log: bool) -> None:
    """Serve a dataset over HTTP: rerank, interactions, profiles, personas, the explorer at /.

    The OpenAPI document is at /openapi.json; /readyz says which version is served and
    /metrics speaks Prometheus. A version published later (p4r-index upsert) is picked up
    within the reload interval.
    """
    if ctx.invoked_subcommand is not None:
        given = [p for p in ctx.params
                 if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"put the options after '{ctx.invoked_subcommand}'")
        return
    if not dataset:
        raise click.UsageError("give --dataset NAME")
    export_settings(dataset=dataset, backend=backend, reload_interval=reload_interval)
    run_server(host=host, port=port, workers=workers, log_level=log_level,
               access_log=access_log)


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


@serve.command()
@click.option("--dataset", "-d", required=True, help="An indexed dataset to load, e.g. demo.")
@click.option("--backend", type=click.Choice(["edge", "server"]), default=None)
@click.option("--clients", default="1,8,64", show_default=True,
              help="Concurrent HTTP clients per level (comma-separated).")
@click.option("--workers", "worker_counts", default="1,2", show_default=True,
              help="Server worker counts to run (comma-separated).")
@click.option("--duration", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds of measured load per level.")
@click.option("--candidates", type=click.IntRange(min=1), default=20, show_default=True,
              help="Candidates per request.")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
@friendly_errors
def bench(dataset: str, backend: str | None, clients: str, worker_counts: str, duration: float,
          candidates: int, as_json: bool) -> None:
    """Loopback load on `p4r serve` beside in-process rerank, measured in the same run.

    Closed-loop clients (each sends its next request when the last one is answered) post
    user_id rerank requests for DURATION seconds per level; the server runs in its own
    processes on a free port.
    """
    from p4r.bench.serve import BenchConfig, run_bench

    export_settings(dataset=dataset, backend=backend)
    config = BenchConfig(dataset=dataset, clients=positive_ints(clients, "--clients"),
                         workers=positive_ints(worker_counts, "--workers"),
                         duration=duration, candidates=candidates)
    report = run_bench(config, progress=not as_json)
    if as_json:
        echo_json(report)
        return
    _print_report(report)


def _print_report(report: dict[str, Any]) -> None:
    click.echo(f"{'mode':<11} {'workers':>7} {'clients':>7} {'p50 ms':>8} {'p99 ms':>8} "
               f"{'req/s':>8} {'errors':>6}")
    for row in report["rows"]:
        workers = "-" if row["workers"] is None else str(row["workers"])
        click.echo(f"{row['mode']:<11} {workers:>7} {row['clients']:>7} {row['p50_ms']:>8.3f} "
                   f"{row['p99_ms']:>8.3f} {row['rps']:>8.0f} {row['errors']:>6}")
    target = report["target"]
    if target["http_p50_ms"] is not None:
        click.echo(f"HTTP p50 at 1 client, 1 worker: {target['http_p50_ms']:.3f} ms, in-process "
                   f"{target['in_process_p50_ms']:.3f} ms: +{target['overhead_ms']:.3f} ms "
                   f"({'within' if target['met'] else 'NOT within'} the 1 ms target)")
    for row in report["scaling"]:
        click.echo(f"{row['workers']} workers at {row['clients']} client(s): "
                   f"{row['rps_vs_1_worker']:.2f}x the requests/s of 1 worker")
    click.echo(f"answers equal to in-process rerank: {report['answers_match']}; "
               f"{report['cpus']} CPU(s), the load generator shares them")


if __name__ == "__main__":
    main()
