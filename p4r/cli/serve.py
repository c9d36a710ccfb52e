"""``p4r serve``: run the HTTP API on uvicorn (the server itself is :mod:`p4r.serve.runner`)."""

from __future__ import annotations

import click
from click.core import ParameterSource

from p4r.cli import bench
from p4r.cli.common import Group, backend_option, dataset_option, friendly_errors, moved


@click.group("serve", cls=Group, invoke_without_command=True,
             short_help="Serve a dataset over HTTP (rerank, live events, explorer).")
@dataset_option(required=False, checked=False, help="Dataset to serve, e.g. demo or yelp.")
@backend_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port to listen on.")
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
def main(ctx: click.Context, dataset: str | None, backend: str | None, host: str, port: int,
         workers: int, reload_interval: float | None, log_level: str, access_log: bool) -> None:
    """Serve a dataset over HTTP: rerank, interactions, profiles, personas, the explorer at /.

    The OpenAPI document is at /openapi.json; /readyz says which version is served and
    /metrics speaks Prometheus. A version published later (p4r index upsert) is picked up
    within the reload interval. `p4r bench serve` load-tests it.
    """
    from p4r.serve.runner import export_settings, run_server

    if ctx.invoked_subcommand is not None:  # only the old `p4r serve bench`
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


main.add_command(moved(bench.serve_bench, "p4r bench serve"), "bench")
