"""``p4r index`` (alias ``p4r-index``): build, inspect and drop the persona-profiled index of a
dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from p4r.cli.common import (
    Group,
    backend_option,
    echo_json,
    friendly_errors,
    json_option,
    settings_for,
    store_options,
)
from p4r.datasets import dataset_dir, load_dataset
from p4r.indexer import BuildOptions, ShrinkError, index_dataset
from p4r.migrations import MIGRATIONS
from p4r.migrations import migrate as run_migrations
from p4r.query import open_reranker
from p4r.settings import Settings, load_settings
from p4r.store import open_backend
from p4r.store.lifecycle import (
    check_dataset,
    dataset_status,
    drop_dataset,
    prune_plan,
    prune_versions,
)

wait_option = click.option(
    "--wait", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
    help="Wait up to SECONDS for another process writing to the store "
         "(P4R_INDEX__LOCK_TIMEOUT, default 0: fail at once, naming it).")


def _timeout(wait: float | None, settings: Settings) -> float:
    return settings.index.lock_timeout if wait is None else wait


@click.group("index", cls=Group,
             short_help="Build, check and manage a dataset's persona index.")
def main() -> None:
    """Build, check and manage the persona index of a dataset in Qdrant (Edge or a server).

    `upsert` builds a new version and publishes it atomically; `status`, `check`, `prune`,
    `drop` and `migrate` manage the versions. Settings come from P4R_* variables or a .env
    file; see `p4r index config`.
    """


@main.command()
@store_options
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Points per encode/upsert batch (P4R_INDEX__BATCH_SIZE, default 256).")
@click.option("--encoder", "encoder_model", default=None,
              help="Encoder folder or Hugging Face id (P4R_ENCODER__MODEL). A different "
                   "encoder than the live index's builds a new version.")
@click.option("--reindex", is_flag=True,
              help="Allow an encoder different from the live version's: build a new version "
                   "and swap the alias when it is complete.")
@click.option("--history-file", default=None,
              help="Reference layout only: which 3.5_history*.jsonl holds the interactions.")
@click.option("--allow-shrink", is_flag=True,
              help="Publish even if the new data loses most of the live version's personas "
                   "or items, or of the interactions from the files (refused by default: "
                   "usually a truncated input file).")
@click.option("--full", is_flag=True,
              help="Build a new catalog version even when the change could be applied as a "
                   "delta (on Edge this also folds an overlay into one version).")
@wait_option
@json_option()
@friendly_errors
def upsert(dataset: str, data_dir: Path | None, backend: str | None, batch_size: int | None,
           encoder_model: str | None, reindex: bool, history_file: str | None,
           allow_shrink: bool, full: bool, wait: float | None, as_json: bool) -> None:
    """Encode and upsert personas, item summaries and interactions of a dataset.

    Validates every input file first. A new catalog builds a version that no query sees and
    moves the aliases only when it is complete; a changed catalog with the same encoder is
    written as a delta (only the touched items: in place on a server, as a small overlay
    version on Edge). The interactions of the files are synced into the user state, where
    live interactions (p4r serve, Reranker.add_interactions) stay. Re-running is idempotent
    ("unchanged" means the live version was verified); after a crash or Ctrl-C it resumes.
    """
    settings = settings_for(backend)
    if encoder_model:
        settings.encoder.model = encoder_model
        reindex = True
    data = load_dataset(dataset, dataset_dir(dataset, settings.data_dir, data_dir),
                        history_file=history_file)
    options = BuildOptions.from_settings(settings, reindex=reindex, allow_shrink=allow_shrink,
                                         lock_timeout=_timeout(wait, settings), full=full,
                                         **({"batch_size": batch_size} if batch_size else {}))
    try:
        report = index_dataset(settings, data, options=options)
    except ShrinkError as exc:
        raise ShrinkError(exc.message.replace("allow_shrink", "--allow-shrink")) from None
    if as_json:
        users = report.users
        echo_json({"dataset": report.dataset, "version": report.version,
                   "action": report.action, "counts": {**report.counts, **report.user_counts},
                   "delta_items": report.delta_items, "encoded": report.encoded,
                   "seconds": round(report.seconds, 3),
                   "interactions": {"added": users.added, "changed": users.changed,
                                    "removed": users.removed,
                                    "skipped_forgotten": users.skipped_forgotten}
                   if users else None})
        return
    counts = ", ".join(f"{v} {k}" for k, v in {**report.counts, **report.user_counts}.items())
    for problem in report.problems:
        click.echo(f"live version was damaged: {problem}", err=True)
    what = f"delta ({report.delta_items} item(s) written)" if report.action == "delta" \
        else report.action
    click.echo(f"{report.dataset}: version {report.version} {what} ({counts}; "
               f"{report.encoded} texts encoded in {report.seconds:.1f}s)")
    users = report.users
    if users and (users.added or users.changed or users.removed):
        click.echo(f"user state: {users.added} interaction(s) added, {users.changed} "
                   f"re-embedded, {users.removed} removed from the files")


@main.command()
@store_options
@click.option("--version", "version", type=click.IntRange(min=1), default=None,
              help="Version to check (default: the live one).")
@json_option("Print one JSON object.")
@friendly_errors
def check(dataset: str, data_dir: Path | None, backend: str | None, version: int | None,
          as_json: bool) -> None:
    """Verify a version: counts, payload indexes, encoder fingerprint, aliases.

    Exits 1 when anything is damaged, and says what to run.
    """
    settings = settings_for(backend)
    with open_backend(settings) as store:
        report = check_dataset(store, dataset, version)
    if as_json:
        echo_json(report)
    else:
        state = "ok" if report["ok"] else "DAMAGED"
        click.echo(f"{dataset} v{report['version']}{' (live)' if report['live'] else ''}: "
                   f"{state}")
        for problem in report["problems"]:
            click.echo(f"  - {problem}")
    if not report["ok"]:
        if not as_json:
            click.echo(f"run `p4r index upsert --dataset {dataset}` to rebuild it (the damaged "
                       "version is kept until `p4r index prune`)", err=True)
        raise SystemExit(1)


@main.command()
@store_options
@json_option("Print one JSON object.")
@friendly_errors
def status(dataset: str, data_dir: Path | None, backend: str | None, as_json: bool) -> None:
    """Counts, collection, alias and encoder of a dataset's live index, its versions and swaps."""
    settings = settings_for(backend)
    with open_backend(settings) as store:
        problems = check_dataset(store, dataset)["problems"]
        info = dataset_status(store, dataset, tolerate=bool(problems))
        info["problems"] = problems
    if as_json:
        echo_json(info)
        return
    for key in ("dataset", "backend", "alias", "collection", "version", "personas", "items",
                "summaries", "interactions", "users"):
        click.echo(f"{key:>13}: {info[key]}")
    enc = info.get("encoder") or {}
    click.echo(f"{'encoder':>13}: {enc.get('model')} (dim {enc.get('dim')}, "
               f"weights {str(enc.get('weights_sha256'))[:12]}, template {enc.get('template')})")
    click.echo(f"{'versions':>13}: " + ", ".join(f"v{k} {v}" for k, v in
                                                 info["versions"].items()))
    history = info.get("migrations") or []
    click.echo(f"{'swaps':>13}:" + ("" if history else " none recorded"))
    for entry in history:
        click.echo(f"{'':>13}  {_swap_line(entry)}")
    health = "ok" if not info["problems"] else "DAMAGED: " + "; ".join(info["problems"])
    click.echo(f"{'health':>13}: {health}")


def _version_label(version: int | None) -> str:
    return "-" if version is None else f"v{version}"


def _swap_line(entry: dict[str, Any]) -> str:
    """One swap-history entry as a line: when, from → to, why, state, encoder."""
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry.get("time") or 0)))
    encoder = (entry.get("encoder") or {}).get("model") or "-"
    state = entry.get("state", "?") + (" (repaired)" if entry.get("repaired") else "")
    return (f"#{entry.get('seq')} {when} {_version_label(entry.get('from_version'))} → "
            f"{_version_label(entry.get('to_version'))} {entry.get('reason')} [{state}] "
            f"encoder {encoder}")


@main.command()
@backend_option
@json_option("Print one JSON object.")
@friendly_errors
def migrate(backend: str | None, as_json: bool) -> None:
    """Apply pending migrations of the store layout and repair swaps a crash left unsettled.

    Idempotent: a second run applies nothing. Upserts run this on their own too.
    """
    settings = settings_for(backend)
    with open_backend(settings) as store, store.writer("p4r index migrate",
                                                       settings.index.lock_timeout):
        applied, repaired = run_migrations(store)
        where = store.describe()
    if as_json:
        echo_json({"applied": applied, "repaired": [r.as_dict() for r in repaired],
                   "known": [m.name for m in MIGRATIONS]})
        return
    for name in applied:
        click.echo(f"applied {name}")
    for entry in repaired:
        click.echo(f"repaired swap of {entry.dataset}: {_swap_line(entry.as_dict())}")
    if not applied and not repaired:
        click.echo(f"{where} is up to date ({len(MIGRATIONS)} migration(s) applied)")


@main.command()
@store_options
@click.option("--keep", type=click.IntRange(min=1), default=1, show_default=True,
              help="Complete versions to keep, counting the live one (1: only the live one).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option("Print what was removed as JSON.")
@friendly_errors
def prune(dataset: str, data_dir: Path | None, backend: str | None, keep: int, yes: bool,
          as_json: bool) -> None:
    """Delete old versions of a dataset that no alias points at, and abandoned builds.

    Never deletes the live version. Serving processes still on an old version fail once it is
    gone: prune after they have refreshed, and not while an upsert of the dataset is running.
    """
    settings = settings_for(backend)
    with open_backend(settings) as store, store.writer(f"p4r index prune --dataset {dataset}",
                                                       settings.index.lock_timeout):
        plan = prune_plan(store, dataset, keep)
        if plan and not yes:
            listed = ", ".join(f"v{v.version} ({v.state})" for v in plan)
            if not click.confirm(f"Delete {listed} of {dataset!r}?", default=False):
                raise click.Abort()
        removed = prune_versions(store, dataset, keep) if plan else []
    if as_json:
        echo_json({"dataset": dataset, "removed": [
            {"version": v.version, "state": v.state, "collections": list(v.collections)}
            for v in removed]})
        return
    if not removed:
        click.echo(f"nothing to prune in {dataset}")
        return
    for v in removed:
        click.echo(f"removed v{v.version} ({v.state}): {', '.join(v.collections)}")
    count = sum(len(v.collections) for v in removed)
    click.echo(f"pruned {len(removed)} version(s), {count} collection(s) of {dataset}")


@main.command()
@store_options
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option("Print what was dropped as JSON.")
@friendly_errors
def drop(dataset: str, data_dir: Path | None, backend: str | None, yes: bool,
         as_json: bool) -> None:
    """Delete every collection version and alias of a dataset."""
    settings = settings_for(backend)
    if not yes and not click.confirm(f"Drop every collection of {dataset!r}?", default=False):
        raise click.Abort()
    with open_backend(settings) as store, store.writer(f"p4r index drop --dataset {dataset}",
                                                       settings.index.lock_timeout):
        dropped = drop_dataset(store, dataset)
    if as_json:
        echo_json({"dataset": dataset, "collections": list(dropped.collections),
                   "user_state": list(dropped.user_state)})
        return
    users = " and its user state (interactions, profiles)" if dropped.user_state else ""
    click.echo(f"dropped {len(dropped.collections)} collection(s) of {dataset}{users}")


@main.command()
@store_options
@click.option("--user", "user_id", required=True, help="The user to forget.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@json_option("Print what was removed as JSON.")
@friendly_errors
def forget(dataset: str, data_dir: Path | None, backend: str | None, user_id: str, yes: bool,
           as_json: bool) -> None:
    """Forget a user: delete their interactions and profile from the user state (every
    encoder), and refuse them from now on, so a re-index from the files does not bring them
    back. Catalog versions hold no user data. Every serving process answers 404 for the user
    at once (a server host caching profiles: within P4R_QUERY__PROFILE_TTL). What p4r cannot
    delete: the dataset files, backups and snapshots you made, and logs."""
    settings = settings_for(backend)
    if not yes and not click.confirm(f"Forget user {user_id!r} of {dataset!r}?", default=False):
        raise click.Abort()
    with open_backend(settings) as store:
        reranker = open_reranker(settings, dataset, backend=store)
        report = reranker.forget(user_id)
    if as_json:
        echo_json(report.as_dict())
        return
    note = " (already forgotten before)" if report.already_forgotten else ""
    click.echo(f"forgot {user_id} of {dataset}: removed {report.interactions} interaction(s) "
               f"and {report.profiles} profile(s){note}; the user is refused from now on")


@main.command()
@json_option("Print the settings as JSON.")
@friendly_errors
def config(as_json: bool) -> None:
    """Print the effective settings (secrets masked)."""
    data = load_settings().masked()
    if as_json:
        echo_json(data)
        return

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}__{key}" if prefix else key, value)
        elif isinstance(node, list):  # the form the variable accepts back: a,b,c
            click.echo(f"P4R_{prefix.upper()}={','.join(str(v) for v in node)}")
        else:
            click.echo(f"P4R_{prefix.upper()}={'' if node is None else node}")

    walk("", data)
