"""``p4r bench``: the four benchmarks, each printing its figures beside a baseline measured in
the same run (the code is in :mod:`p4r.bench`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from p4r.cli.common import (
    Group,
    backend_option,
    dataset_option,
    echo_json,
    friendly_errors,
    json_option,
    k_option,
    n_candidates_option,
    out_dir_option,
    out_file_option,
    positive_ints,
    renamed_option,
    rounds_option,
    settings_for,
    work_dir_option,
)


@click.group("bench", cls=Group,
             short_help="Speed benchmarks, each beside a baseline from the same run.")
def main() -> None:
    """Measure speed: reranking, the HTTP server, encoder training, the paper's scaling study.

    Every figure is printed beside a baseline measured in the same run (exact numpy,
    in-process rerank, fp32), so ratios hold on a shared, noisy machine.
    """


@main.command("query")
@renamed_option("--personas", "personas", default="125000", show_default=True,
                old_names=("--sizes",),
                help="Persona collection sizes to build, comma-separated (5 personas per item).")
@click.option("--million", is_flag=True,
              help="Add the 1M-persona row (builds for a few minutes and needs ~4 GB).")
@n_candidates_option(default="20,100", help="Candidates per user, comma-separated.")
@click.option("--users", type=click.IntRange(min=1), default=300, show_default=True,
              help="Timed users per row and round.")
@renamed_option("--batch-size", "batch_size", type=click.IntRange(min=2), default=100,
                show_default=True, old_names=("--batch",),
                help="Users per call in batch mode.")
@rounds_option(default=3, help="Repeat each row; the median round is reported (shared, noisy "
                               "machines).")
@click.option("--dim", type=click.IntRange(min=2), default=384, show_default=True,
              help="Vector dimension of the synthetic personas.")
@click.option("--no-rss", is_flag=True, help="Skip the serving-process memory row.")
@click.option("--maxsim", is_flag=True,
              help="Also build the per-item MaxSim collection (P4R_INDEX__MAXSIM) and add k = 10 "
                   "rows served through it, beside the default bounded persona query.")
@click.option("--float16", is_flag=True,
              help="Store vectors as float16 (P4R_INDEX__VECTOR_DATATYPE): half the vector memory; "
                   "numpy stays the float32 reference.")
@work_dir_option(help="Where to build the synthetic shards (default: a temp folder, removed).")
@json_option('Print {"rows": [...]}.')
@friendly_errors
def query_bench(personas: str, million: bool, n_candidates: str, users: int, batch_size: int,
                rounds: int, dim: int, no_rss: bool, maxsim: bool, float16: bool,
                work_dir: Path | None, as_json: bool) -> None:
    """Rerank latency per user on synthetic Edge collections, beside exact numpy.

    Rows: 20 and 100 candidates, k = all and k = 10 (a persona query bounded to the points
    that can hold the top 10), one user per call (single: explanations read from the store;
    single cached: from the LRU) and BATCH-SIZE per call; user_id requests with cold profiles
    (a profile-point read) and warm ones; the build rate; the serving process's RSS against the
    raw vector bytes. Each request is interleaved with its numpy baseline.
    """
    from p4r.bench.query import PER_ITEM, load_average, run_bench

    size_list = positive_ints(personas, "--personas") + ([1_000_000] if million else [])
    counts = positive_ints(n_candidates, "--n-candidates")
    smallest = min(size_list) // PER_ITEM
    if max(counts) > smallest:
        raise click.BadParameter(f"{max(counts)} candidates need at least {max(counts)} items, "
                                 f"but {min(size_list)} personas make {smallest}",
                                 param_hint="--n-candidates")
    if users < batch_size:  # batch rows time whole calls of BATCH-SIZE users each
        raise click.BadParameter(f"{users} users make no call of {batch_size}; give --users "
                                 f"at least --batch-size", param_hint="--users")
    start = load_average()
    rows = run_bench(sizes=size_list, candidate_counts=counts,
                     users=users, batch=batch_size, dim=dim, work_dir=work_dir,
                     progress=not as_json, rounds=rounds, rss=not no_rss, maxsim=maxsim,
                     datatype="float16" if float16 else "float32")
    load = {"start": start, "end": load_average(), "cpus": _cpus()}
    if as_json:
        echo_json({"rows": rows, "load_average": load})
        return
    _print_query_rows(rows, load)


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


def _print_load(load: dict[str, Any]) -> None:
    def fmt(values: list[float]) -> str:
        return " ".join(f"{v:.2f}" for v in values)

    click.echo(f"load average (1, 5, 15 min) at start {fmt(load['start'])}, at end "
               f"{fmt(load['end'])}; {load['cpus']} CPU(s)")


def _print_query_rows(rows: list[dict[str, Any]], load: dict[str, Any]) -> None:
    from p4r.bench.query import IDLE_GAP_S

    _print_load(load)
    click.echo(f"{'personas':>9} {'cands':>5} {'k':>4} {'mode':>14} {'p50 ms':>8} {'p99 ms':>8} "
               f"{'cpu ms':>8} {'numpy p50':>9} {'numpy cpu':>9} {'ratio':>6} {'cpu ratio':>9} "
               f"{'wall/cpu':>8}")
    for row in rows:
        if row["mode"].startswith("first"):
            click.echo(f"{row['personas']:>9} {row['candidates']:>5} {row['k']!s:>4} "
                       f"{row['mode']}: {row['first_ms']:.3f} ms (CPU "
                       f"{row['first_cpu_ms']:.3f}, {row['first_major_faults']:.0f} major "
                       f"faults), warm p50 {row['warm_p50_ms']:.3f} ms (CPU "
                       f"{row['warm_cpu_ms']:.3f}): {row['ratio']:.2f}x wall, "
                       f"{row['cpu_ratio']:.2f}x CPU; {row['ratio_over_idle']:.2f}x a warm one "
                       f"after a {IDLE_GAP_S * 1000:.0f} ms pause ({row['idle_p50_ms']:.3f} "
                       f"ms); binding took {row['bind_ms']:.1f} ms"
                       f"{_disturbed(row)}")
        elif row["mode"].startswith("build"):
            click.echo(f"{row['personas']:>9} {row['mode']}: {row['points_per_s']} points/s")
        elif row["mode"].startswith("rss"):
            label = "serving RSS" + (" (top k through MaxSim)" if row["mode"] != "rss" else "")
            click.echo(f"{row['personas']:>9} {label} {row['rss_mb']} MB = "
                       f"{row['ratio_to_raw']}x the raw vectors ({row['raw_vectors_mb']} MB); "
                       f"anonymous {row['anon_mb']} MB, mapped files {row['file_mb']} MB; "
                       f"an idle interpreter with p4r imported: {row['interpreter_mb']} MB")
        else:
            click.echo(f"{row['personas']:>9} {row['candidates']:>5} {row['k']!s:>4} "
                       f"{row['mode']:>14} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} "
                       f"{row['cpu_ms']:>8.3f} {row['numpy_p50_ms']:>9.3f} "
                       f"{row['numpy_cpu_ms']:>9.3f} {row['ratio']:>5.1f}x "
                       f"{row['cpu_ratio']:>8.1f}x {row['wall_over_cpu']:>8.2f}"
                       f"{_disturbed(row)}")


def _disturbed(row: dict[str, Any]) -> str:
    return (f"  DISTURBED (load {row['load_1m']:.2f}: wall time includes other jobs; "
            f"compare CPU)") if row.get("disturbed") else ""


@main.command("serve")
@dataset_option(help="An indexed dataset to load, e.g. demo.")
@backend_option
@click.option("--clients", default="1,8,64", show_default=True,
              help="Concurrent HTTP clients per level (comma-separated).")
@click.option("--workers", "worker_counts", default="1,2", show_default=True,
              help="Server worker counts to run (comma-separated).")
@click.option("--duration", type=click.FloatRange(min=0.5), default=5.0, show_default=True,
              help="Seconds of measured load per level.")
@n_candidates_option(default=20, help="Candidates per request.")
@click.option("--paths", default="lean,framework", show_default=True,
              help="How servers answer POST /v1/rerank (comma-separated): lean, as p4r "
                   "serve does by default; alone, lean with each request reranked alone "
                   "(P4R_SERVE__COALESCE=false); nopoll, lean without busy polling "
                   "(P4R_SERVE__BUSY_POLL_US=0); framework, through FastAPI "
                   "(P4R_SERVE__LEAN_RERANK=false). The lean path's ratios are taken against "
                   "each other path.")
@rounds_option(default=3,
               help="Repeat every level, the paths in alternating order; medians reported.")
@json_option("Print the rows as JSON.")
@friendly_errors
def serve_bench(dataset: str, backend: str | None, clients: str, worker_counts: str,
                duration: float, n_candidates: int, paths: str, rounds: int,
                as_json: bool) -> None:
    """Loopback load on `p4r serve` beside in-process rerank, measured in the same run.

    Closed-loop clients (each sends its next request when the last one is answered) post
    user_id rerank requests for DURATION seconds per level. A server per worker count and
    path runs in its own processes on a free port for the whole bench; each round measures
    in-process rerank, then every level on every path back to back, so the lean path's
    ratios to the framework's and to in-process come from the same round.
    """
    from p4r.bench.serve import SERVER_PATHS, BenchConfig, run_bench
    from p4r.serve.runner import export_settings

    chosen = tuple(p.strip() for p in paths.split(",") if p.strip())
    if not chosen or len(set(chosen)) != len(chosen) or set(chosen) - set(SERVER_PATHS):
        raise click.BadParameter(f"{paths!r}: give some of {', '.join(SERVER_PATHS)}, once "
                                 "each", param_hint="--paths")
    export_settings(dataset=dataset, backend=backend)
    config = BenchConfig(dataset=dataset, clients=positive_ints(clients, "--clients"),
                         workers=positive_ints(worker_counts, "--workers"),
                         duration=duration, candidates=n_candidates, paths=chosen,
                         rounds=rounds)
    report = run_bench(config, progress=not as_json)
    if as_json:
        echo_json(report)
        return
    _print_serve_report(report)


def _print_serve_report(report: dict[str, Any]) -> None:
    _print_load({**report["load_average"], "cpus": report["cpus"]})
    click.echo(f"{'mode':<11} {'path':<9} {'workers':>7} {'clients':>7} {'p50 ms':>8} "
               f"{'p99 ms':>8} {'cpu ms':>8} {'req/s':>8} {'errors':>6}")
    for row in report["rows"]:
        workers = "-" if row["workers"] is None else str(row["workers"])
        cpu = "-" if row.get("cpu_ms") is None else f"{row['cpu_ms']:.3f}"
        click.echo(f"{row['mode']:<11} {row.get('path') or '-':<9} {workers:>7} "
                   f"{row['clients']:>7} {row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {cpu:>8} "
                   f"{row['rps']:>8.0f} {row['errors']:>6}{_disturbed(row)}")
    click.echo(f"medians of {report['rounds']} round(s); cpu ms: per request, of the calling "
               "process in process and of the server's processes (all workers) over HTTP")
    for row in report["ratios"]:
        parts = [f"{name.replace('_', ' ')} {value:.2f}x" for name, value in row.items()
                 if isinstance(value, float)]
        click.echo(f"{row['workers']} worker(s), {row['clients']} client(s): " + ", ".join(parts))
    target = report["target"]
    if target["http_p50_ms"] is not None:
        click.echo(f"HTTP p50 at 1 client, 1 worker ({target['path']} path): "
                   f"{target['http_p50_ms']:.3f} ms, in-process "
                   f"{target['in_process_p50_ms']:.3f} ms: +{target['overhead_ms']:.3f} ms "
                   f"({'within' if target['met'] else 'NOT within'} the +0.25 ms target)")
    for server in report["server_rss"]:
        sizes = sorted(server["rss_mb"].values())
        click.echo(f"server RSS after the load ({server['path']}, {server['workers']} "
                   f"worker(s)): " + ", ".join(f"{mb:.0f}" for mb in sizes) + " MB per process "
                   "(supervisor, when there is one, included)")
    for row in report["scaling"]:
        click.echo(f"{row['workers']} workers at {row['clients']} client(s) ({row['path']}): "
                   f"{row['rps_vs_1_worker']:.2f}x the requests/s of 1 worker")
    click.echo(f"answers equal to in-process rerank: {report['answers_match']}; "
               f"{report['cpus']} CPU(s), the load generator shares them")


@main.command("train")
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True,
              help="Timed training steps per precision.")
@click.option("--texts", type=click.IntRange(min=8), default=256, show_default=True,
              help="Texts encoded per precision.")
@click.option("--batch-size", type=click.IntRange(min=2), default=8, show_default=True,
              help="Training tuples per step.")
@json_option('Print {"rows": [...]}.')
@friendly_errors
def train_bench(steps: int, texts: int, batch_size: int, as_json: bool) -> None:
    """Training steps/s and encoding texts/s in fp32 and bf16, as ratios from one run."""
    from p4r.bench.train import run_train_bench

    settings = settings_for(None)
    rows = run_train_bench(settings, steps=steps, n_texts=texts, batch_size=batch_size)
    if as_json:
        echo_json({"rows": rows})
        return
    for row in rows:
        click.echo(f"{row['what']:>9} {row['precision']:>5}: {row['per_second']:8.2f}/s "
                   f"({row['ratio_to_fp32']:.2f}x fp32)")


@main.command("latency")
@click.option("--personas", type=click.IntRange(min=100), default=125_000, show_default=True,
              help="Personas in the synthetic Edge collection (5 per item).")
@rounds_option(default=30, old_names=("--repeats",),
               help="Calls timed per setting; the median is reported.")
@out_dir_option(default=Path("."), help="Folder for latency.json and latency.png.")
@work_dir_option(help="Where to build the synthetic shard (default: a temp folder, removed).")
@json_option('Print {"rows": [...], "plot": PATH}.')
@friendly_errors
def latency_bench(personas: int, rounds: int, out_dir: Path, work_dir: Path | None,
                  as_json: bool) -> None:
    """Latency against concurrent users (1, 10, 50, 100) and candidates (20, 50, 100)."""
    from p4r.bench.latency import plot_latency, run_latency
    from p4r.bench.query import load_average

    start = load_average()
    rows = run_latency(personas=personas, repeats=rounds, work_dir=work_dir,
                       progress=not as_json)
    load = {"start": start, "end": load_average(), "cpus": _cpus()}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "latency.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    png = plot_latency(rows, out_dir / "latency.png")
    if as_json:
        echo_json({"rows": rows, "plot": str(png), "load_average": load})
        return
    _print_load(load)
    click.echo(f"{'study':>10} {'users':>6} {'cands':>6} {'call ms':>9} {'cpu ms':>9} "
               f"{'per user':>9} {'numpy ms':>9} {'numpy cpu':>9} {'wall/cpu':>8}")
    for r in rows:
        click.echo(f"{r['study']:>10} {r['users']:>6} {r['candidates']:>6} {r['batch_ms']:>9.3f} "
                   f"{r['cpu_ms']:>9.3f} {r['per_user_ms']:>9.3f} {r['numpy_batch_ms']:>9.3f} "
                   f"{r['numpy_cpu_ms']:>9.3f} {r['wall_over_cpu']:>8.2f}{_disturbed(r)}")
    click.echo(f"plot: {png}")



@main.command("cluster")
@click.option("--personas", type=click.IntRange(min=1000), default=125_000, show_default=True,
              help="Catalog size of the delta rows (5 personas per item).")
@rounds_option(default=3, help="Deltas and full rebuilds, interleaved; the median is reported.")
@click.option("--rtt-ms", type=click.FloatRange(min=0), default=2.0, show_default=True,
              help="Simulated round trip before each store call of the serving rows.")
@click.option("--duration", type=click.FloatRange(min=0.5), default=3.0, show_default=True,
              help="Seconds of load per serving row.")
@work_dir_option(help="Where to build the stores (default: a temp folder, removed).")
@json_option()
@friendly_errors
def cluster_bench(personas: int, rounds: int, rtt_ms: float, duration: float,
                  work_dir: Path | None, as_json: bool) -> None:
    """The cluster work measured: a 1% catalog delta against a full rebuild (Edge and server),
    points a top-10 request asks the server for, and sync against async serving under a
    simulated round trip (no Qdrant server can run here: the local engine answers)."""
    from p4r.bench.cluster import run_cluster_bench

    report = run_cluster_bench(personas=personas, rounds=rounds, rtt=rtt_ms / 1000,
                               duration=duration, work_dir=work_dir, progress=not as_json)
    if as_json:
        echo_json(report)
        return
    click.echo(f"load average {report['load_before']} → {report['load_after']}, "
               f"{report['cpus']} CPU(s)")
    for row in report["rows"]:
        click.echo("  " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "bench")
                   + f"  [{row['bench']}]")


@main.command("modes")
@click.option("--personas", type=click.IntRange(min=1000), default=125_000, show_default=True,
              help="Personas in the synthetic Edge version (5 per item), with MaxSim.")
@n_candidates_option(default="20,100", help="Candidates per request, comma-separated.")
@click.option("--users", type=click.IntRange(min=1), default=200, show_default=True,
              help="Timed users (10 interactions each), one request each per round.")
@rounds_option(default=5, help="Repeat the interleaved measurement; the median round's ratio "
                               "is reported with the range.")
@click.option("--dim", type=click.IntRange(min=2), default=384, show_default=True,
              help="Vector dimension.")
@k_option(default=None, help="The requests' k (default: every candidate).")
@out_file_option(help="Also write the result as JSON to this file ('-': standard output).")
@work_dir_option(help="Where to build the synthetic store (default: a temp folder, removed).")
@json_option('Print {"setup": {...}, "rows": [...]}.')
@friendly_errors
def modes_bench(personas: int, n_candidates: str, users: int, rounds: int, dim: int,
                k: int | None, out: Path | None, work_dir: Path | None, as_json: bool) -> None:
    """Ranking modes against the default one on Edge: interests through MaxSim and through
    the persona fallback, the cost of "because", proportional lists.

    Every request runs every variant back to back (shuffled), wall and CPU time, so the
    ratios to the default request come from the same run.
    """
    from p4r.bench.modes import format_rows, run_modes_bench
    from p4r.fsutil import write_output

    counts = positive_ints(n_candidates, "--n-candidates")
    if max(counts) > personas // 5:
        raise click.BadParameter(f"{max(counts)} candidates need that many items; {personas} "
                                 f"personas make {personas // 5}", param_hint="--n-candidates")
    result = run_modes_bench(personas=personas, dim=dim, users=users,
                             candidate_counts=tuple(counts), rounds=rounds, k=k,
                             work_dir=work_dir, progress=not as_json)
    if out is not None:
        write_output(out, json.dumps(result, indent=2) + "\n")
    if as_json:
        echo_json(result)
        return
    click.echo(format_rows(result))
