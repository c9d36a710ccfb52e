"""``p4r serve``: run the HTTP API on uvicorn (the server itself is :mod:`p4r.serve.runner`)."""

from __future__ import annotations

from pathlib import Path

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
@click.option("--allow-anonymous-writes", is_flag=True,
              help="Accept interactions and forgets without the read-write key "
                   "(P4R_SERVE__ALLOW_ANONYMOUS_WRITES); off, writes need P4R_SERVE__API_KEY.")
@click.option("--insecure", is_flag=True,
              help="Listen beyond loopback (--host) with no API key configured.")
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TLS certificate (PEM); serve HTTPS with --ssl-keyfile.")
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="TLS private key (PEM).")
@click.pass_context
@friendly_errors
def main(ctx: click.Context, dataset: str | None, backend: str | None, host: str, port: int,
         workers: int, reload_interval: float | None, log_level: str, access_log: bool,
         allow_anonymous_writes: bool, insecure: bool, ssl_certfile: Path | None,
         ssl_keyfile: Path | None) -> None:
    """Serve a dataset over HTTP: rerank, interactions, profiles, personas, the explorer at /.

    Reads need no key and writes are off until keys are set: P4R_SERVE__API_KEY (read-write)
    and P4R_SERVE__READ_ONLY_API_KEY. A --host beyond loopback needs a key (or --insecure).
    The OpenAPI document is at /openapi.json and /docs; /readyz says which version is served
    and /metrics speaks Prometheus. A version published later (p4r index upsert) is picked up
    within the reload interval. `p4r bench serve` load-tests it.
    """
    from p4r.serve.runner import check_exposure, export_settings, run_server

    if ctx.invoked_subcommand is not None:  # only the old `p4r serve bench`
        given = [p for p in ctx.params
                 if ctx.get_parameter_source(p) == ParameterSource.COMMANDLINE]
        if given:
            raise click.UsageError(f"put the options after '{ctx.invoked_subcommand}'")
        return
    if not dataset:
        raise click.UsageError("give --dataset NAME")
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise click.UsageError("give --ssl-certfile and --ssl-keyfile together")
    serve = export_settings(dataset=dataset, backend=backend, reload_interval=reload_interval,
                            allow_anonymous_writes=allow_anonymous_writes)
    for warning in check_exposure(host, serve, insecure=insecure):
        click.echo(f"warning: {warning}", err=True)
    run_server(host=host, port=port, workers=workers, log_level=log_level,
               access_log=access_log, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
               serve=serve)


main.add_command(moved(bench.serve_bench, "p4r bench serve"), "bench")
