"""``p4r train`` (alias ``p4r-train``): label without an LLM and fit the encoder on alignments
(the training benchmark is ``p4r bench train``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from p4r.cli import bench
from p4r.cli.common import (
    Group,
    data_dir_option,
    dataset_option,
    echo_json,
    friendly_errors,
    json_option,
    moved,
    out_dir_option,
    out_file_option,
    settings_for,
)

if TYPE_CHECKING:
    from p4r.encoder.train_run import TrainedEncoder


@click.group("train", cls=Group, invoke_without_command=True,
             short_help="Fit the encoder on alignments; label without an LLM.")
@dataset_option(required=False, help="Dataset whose alignments to train on.")
@data_dir_option
@click.option("--alignments", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Alignments file (default: alignments.jsonl in the dataset folder).")
@out_dir_option(help="Output folder (default: $P4R_DATA_DIR/encoders/NAME).")
@click.option("--base-model", default=None, help="Encoder to start from (P4R_ENCODER__MODEL).")
@click.option("--method", type=click.Choice(["head", "lora", "full"]), default=None,
              help="What to train (P4R_TRAIN__METHOD, default head).")
@click.option("--full", is_flag=True, help="Same as --method full.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs at most (P4R_TRAIN__EPOCHS); early stopping may end sooner.")
@click.option("--batch-size", type=click.IntRange(min=2), default=None,
              help="Training tuples per step (P4R_TRAIN__BATCH_SIZE).")
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming a checkpoint.")
@json_option()
@click.pass_context
@friendly_errors
def main(ctx: click.Context, dataset: str | None, data_dir: Path | None,
         alignments: Path | None, out_dir: Path | None, base_model: str | None,
         method: str | None, full: bool, epochs: int | None, batch_size: int | None,
         no_resume: bool, as_json: bool) -> None:
    """Train the encoder so a user's history lands next to the item they chose next.

    Users are held out (P4R_TRAIN__VAL_FRACTION); each epoch prints their next-item HR@5 and
    NDCG@10 next to the vanilla encoder's, early stopping follows it and the best epoch is
    kept. The output folder holds model/ (what `p4r index upsert --encoder` takes),
    fingerprint.json and train_log.jsonl. Alignments come from `p4r reason align` (LLM judge)
    or `p4r train align` (next-item, no LLM).
    """
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        raise click.UsageError("give --dataset NAME (or the align subcommand)")
    from p4r.datasets import dataset_dir, load_dataset
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.train_run import train_encoder
    from p4r.encoder.training import build_tuples

    settings = settings_for(None)
    update = {k: v for k, v in {"method": "full" if full else method, "epochs": epochs,
                                "batch_size": batch_size}.items() if v is not None}
    settings = settings.model_copy(update={"train": settings.train.model_copy(update=update)})
    root = dataset_dir(dataset, settings.data_dir, data_dir)
    data = load_dataset(dataset, root)
    alignments = alignments or root / "alignments.jsonl"
    if not alignments.exists():
        raise click.UsageError(f"{alignments} not found (run: p4r train align -d {dataset}, "
                               f"no LLM, or p4r reason align -d {dataset})")
    tuples = build_tuples(data, alignments, settings.query.last_n)
    out = out_dir or settings.data_dir / "encoders" / dataset
    n_epochs = settings.train.n_epochs()
    say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
    baseline: dict[str, float] = {}

    def on_baseline(figures: dict[str, float]) -> None:
        baseline.update(figures)
        say(f"held-out users: {figures['users']} ({figures['events']} next-item events), "
            f"vanilla HR@5 {figures['HR@5']:.3f} NDCG@10 {figures['NDCG@10']:.3f}")

    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        say(f"{len(tuples)} alignments; training the {settings.train.method} "
            f"for up to {n_epochs} epochs")
        run = train_encoder(data, tuples, settings, out, base_model=base_model, cache=cache,
                            resume=not no_resume, on_baseline=on_baseline,
                            on_epoch=lambda log: say(log.line(n_epochs, baseline or None)))
    finally:
        cache.close()
    _print_run(run, len(tuples), settings.train.method, dataset, as_json)


def _print_run(run: TrainedEncoder, tuples: int, method: str, dataset: str,
               as_json: bool) -> None:
    """The run's report as JSON, or which epoch was kept, why training stopped and where the
    encoder is."""
    report = run.report
    if as_json:
        echo_json({"tuples": tuples, "train": len(run.plan.train),
                   "validation": len(run.plan.val), "held_out_users": len(run.plan.held_out),
                   "method": method,
                   "baseline": report.baseline, "epochs": [e.__dict__ for e in report.epochs],
                   "best_epoch": report.best_epoch, "stop_reason": report.stop_reason,
                   "resumed_from": report.resumed_from, "model": str(report.model_dir),
                   "adapter": str(report.adapter_dir) if report.adapter_dir else None})
        return
    kept = (f"kept epoch {report.best_epoch + 1} of {len(report.epochs)}"
            if report.best_epoch is not None else "no epoch kept")
    if report.stop_reason:
        click.echo(report.stop_reason)
    click.echo(f"{kept}; encoder: {report.model_dir}  (p4r index upsert -d {dataset} "
               f"--encoder {report.model_dir})")


@main.command()
@dataset_option(help="Dataset to label.")
@data_dir_option
@click.option("--judge", type=click.Choice(["next-item"]), default="next-item",
              show_default=True, help="Who labels: next-item self-labelling (no LLM).")
@out_file_option(help="Output (default: alignments.jsonl in the dataset folder, or "
                      "alignments.next-item.jsonl beside an LLM judge's alignments.jsonl).")
@json_option()
@friendly_errors
def align(dataset: str, data_dir: Path | None, judge: str, out: Path | None,
          as_json: bool) -> None:
    """Write alignments without an LLM: each training interaction after a user's first is a
    target, with the persona closest to the history under the current encoder (or the item's
    summary when it has no personas). Reports agreement with an LLM judge's file if present."""
    from p4r.datasets import dataset_dir, load_dataset
    from p4r.datasets.jsonl import write_jsonl_atomic
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.judge_free import agreement_with_judge, next_item_alignments
    from p4r.encoder.train_run import cached_embedder

    settings = settings_for(None)
    root = dataset_dir(dataset, settings.data_dir, data_dir)
    data = load_dataset(dataset, root)
    judge_file = root / "alignments.jsonl"
    has_judge = judge_file.exists() and not _written_by_next_item(judge_file)
    out = out or (root / "alignments.next-item.jsonl" if has_judge else judge_file)
    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        embed, _ = cached_embedder(settings.encoder.model, settings, cache)
        rows = next_item_alignments(data, embed, last_n=settings.query.last_n,
                                    gamma=settings.query.gamma)
    finally:
        cache.close()
    write_jsonl_atomic(out, rows)
    result: dict[str, object] = {"alignments": len(rows), "llm_calls": 0, "out": str(out)}
    if has_judge:
        agreement = agreement_with_judge(rows, judge_file,
                                         {k: len(v) for k, v in data.personas.items()})
        result |= {"judge_compared": agreement.compared, "judge_agreement": agreement.rate,
                   "chance": agreement.chance}
    if as_json:
        echo_json(result)
        return
    click.echo(f"{len(rows)} next-item alignments (0 LLM calls) → {out}")
    if has_judge:
        click.echo(f"agreement with the LLM judge: {result['judge_agreement']:.3f} on "
                   f"{result['judge_compared']} shared targets (chance {result['chance']:.3f})")
    if out != judge_file:
        click.echo(f"train with: p4r train -d {dataset} --alignments {out}")


def _written_by_next_item(path: Path) -> bool:
    from p4r.datasets.jsonl import read_jsonl

    first = next(read_jsonl(path), None)
    return first is not None and str(first[1].get("reason", "")).startswith("next-item")


main.add_command(moved(bench.train_bench, "p4r bench train"), "bench")
