"""``p4r-train``: fit the encoder on judge alignments, and benchmark training and encoding."""

from __future__ import annotations

from pathlib import Path

import click

from p4r.console import echo_json, friendly_errors, settings_for


@click.group(invoke_without_command=True,
             context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--dataset", "-d", default=None, help="Dataset whose alignments to train on.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder holding the dataset's files (default: $P4R_DATA_DIR/datasets/NAME).")
@click.option("--alignments", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Judge alignments (default: alignments.jsonl in the dataset folder).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Output folder (default: $P4R_DATA_DIR/encoders/NAME).")
@click.option("--base-model", default=None, help="Encoder to start from (P4R_ENCODER__MODEL).")
@click.option("--full", "full_finetune", is_flag=True,
              help="Fine-tune every weight instead of LoRA adapters.")
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--batch-size", type=click.IntRange(min=2), default=None)
@click.option("--no-resume", is_flag=True, help="Start over instead of resuming a checkpoint.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
@friendly_errors
def main(ctx: click.Context, dataset: str | None, data_dir: Path | None,
         alignments: Path | None, out: Path | None, base_model: str | None,
         full_finetune: bool, epochs: int | None, batch_size: int | None, no_resume: bool,
         as_json: bool) -> None:
    """Train the encoder so a user's history lands next to the judge's persona.

    LoRA adapters (peft) with InfoNCE over in-batch negatives by default; --full fine-tunes
    every weight. Validation each epoch reports judge agreement against chance; the best
    epoch is kept. The output folder holds adapter/, model/ (merged, what
    `p4r-index upsert --encoder` takes) and fingerprint.json. Re-running resumes.
    """
    if ctx.invoked_subcommand is not None:
        return
    if dataset is None:
        raise click.UsageError("give --dataset NAME (or a subcommand such as bench)")
    from p4r.datasets import dataset_dir, load_dataset
    from p4r.encoder.training import EncoderTrainer, build_tuples, split_tuples

    settings = settings_for(None)
    train_settings = settings.train.model_copy(update={
        k: v for k, v in {"full_finetune": full_finetune or None, "epochs": epochs,
                          "batch_size": batch_size}.items() if v is not None})
    root = dataset_dir(dataset, settings.data_dir, data_dir)
    data = load_dataset(dataset, root)
    alignments = alignments or root / "alignments.jsonl"
    if not alignments.exists():
        raise click.UsageError(f"{alignments} not found (run: p4r-reason align -d {dataset})")
    tuples = build_tuples(data, alignments, settings.query.last_n)
    train, val = split_tuples(tuples, train_settings.val_fraction, train_settings.seed)
    out = out or settings.data_dir / "encoders" / dataset
    trainer = EncoderTrainer(base_model or settings.encoder.model, train_settings,
                             gamma=settings.query.gamma, threads=settings.encoder.threads)
    before = trainer.agreement(val) if val else None
    report = trainer.fit(train, val, out, resume=not no_resume)
    result = {"tuples": len(tuples), "train": len(train), "validation": len(val),
              "agreement_before": before[0] if before else None,
              "chance": before[1] if before else None,
              "epochs": [e.__dict__ for e in report.epochs], "best_epoch": report.best_epoch,
              "resumed_from": report.resumed_from, "model": str(report.model_dir),
              "adapter": str(report.adapter_dir) if report.adapter_dir else None}
    if as_json:
        echo_json(result)
        return
    click.echo(f"{len(train)} training and {len(val)} validation tuples")
    for e in report.epochs:
        agree = (f", judge agreement {e.val_agreement:.3f} (chance {e.chance:.3f})"
                 if e.val_agreement is not None else "")
        click.echo(f"epoch {e.epoch + 1}: loss {e.train_loss:.4f}{agree} in {e.seconds:.0f}s")
    click.echo(f"encoder: {report.model_dir}  (p4r-index upsert -d {dataset} --encoder "
               f"{report.model_dir})")


@main.command()
@click.option("--steps", type=click.IntRange(min=1), default=6, show_default=True)
@click.option("--texts", type=click.IntRange(min=8), default=256, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=2), default=8, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def bench(steps: int, texts: int, batch_size: int, as_json: bool) -> None:
    """Training steps/s and encoding texts/s in fp32 and bf16, as ratios from one run."""
    from p4r.encoder.bench import run_train_bench

    settings = settings_for(None)
    rows = run_train_bench(settings, steps=steps, n_texts=texts, batch_size=batch_size)
    if as_json:
        echo_json({"rows": rows})
        return
    for row in rows:
        click.echo(f"{row['what']:>9} {row['precision']:>5}: {row['per_second']:8.2f}/s "
                   f"({row['ratio_to_fp32']:.2f}x fp32)")



