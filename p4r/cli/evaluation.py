"""``p4r eval`` (alias ``p4r-eval``): metrics, candidate generators and end-to-end comparisons
(the latency study is ``p4r bench latency``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, cast

import click

from p4r.cli import bench
from p4r.cli.common import (
    Group,
    backend_option,
    dataset_options,
    echo_json,
    friendly_errors,
    json_option,
    k_option,
    ks_option,
    moved,
    no_backend_option,
    out_dir_option,
    out_file_option,
    renamed_option,
    settings_for,
    store_options,
    work_dir_option,
)
from p4r.settings import Settings

if TYPE_CHECKING:
    from p4r.datasets.models import Dataset
    from p4r.evaluation.generators import Model
    from p4r.evaluation.pipeline import Variant


@click.group("eval", cls=Group,
             short_help="Accuracy the paper's way: HR, MRR, NDCG; CF generators.")
def main() -> None:
    """Measure accuracy the way the Persona4Rec paper does: HR, MRR and NDCG at K.

    `metrics` scores a ranked file; `candidates` trains a CF generator; `run` compares the
    generator alone with Persona4Rec reranking; `train-cv` and `loo-check` test the encoder
    on users it never saw; `modes` compares the ranking modes with TDD beside the accuracy
    metrics. Speed is measured by `p4r bench`.
    """


def _table(rows: list[tuple[str, dict[str, float]]], names: list[str]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    click.echo(f"{'':<{width}}" + "".join(f"{n:>10}" for n in names) + f"{'users':>8}")
    for label, metrics in rows:
        cells = "".join(f"{metrics[n]:>10.4f}" if not math.isnan(metrics[n]) else f"{'-':>10}"
                        for n in names)
        click.echo(f"{label:<{width}}{cells}{int(metrics['users']):>8}")


@main.command()
@renamed_option("--candidates-file", "candidates_path", required=True,
                type=click.Path(path_type=Path, dir_okay=False, exists=True),
                old_names=("--candidates",),
                help="Ranked candidates, reference format ({user_id, results: [{item_id}]}).")
@click.option("--gt", "gt_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Ground truth jsonl: {user_id, item_id} per line.")
@click.option("--reviews", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Reviews or history jsonl, for --scenarios.")
@click.option("--scenarios", is_flag=True,
              help="Also report warm/cold users and head/tail items (80th/20th percentiles "
                   "of review counts).")
@ks_option
@json_option()
@friendly_errors
def metrics(candidates_path: Path, gt_path: Path, reviews: Path | None, scenarios: bool,
            ks: tuple[int, ...], as_json: bool) -> None:
    """HR, MRR and NDCG at each K for leave-one-out ([PAD] counts as an item)."""
    from p4r.evaluation.io import read_ground_truth, read_interaction_pairs, read_ranked
    from p4r.evaluation.metrics import evaluate, scenario_groups

    if scenarios and reviews is None:
        raise click.UsageError("--scenarios needs --reviews")
    evaluation = evaluate(read_ranked(candidates_path), read_ground_truth(gt_path), ks)
    report: dict[str, dict[str, float]] = {"all": evaluation.summary()}
    if scenarios and reviews is not None:
        groups = scenario_groups(read_interaction_pairs(reviews),
                                 {u: {*v} for u, v in read_ground_truth(gt_path).items()})
        for name, users in groups.items():
            report[name] = evaluation.summary(users)
    if as_json:
        echo_json(report)
        return
    _table(list(report.items()), evaluation.metric_names())


def _load(dataset: str, data_dir: Path | None, settings: Settings) -> Dataset:
    from p4r.datasets import dataset_dir, load_dataset

    return load_dataset(dataset, dataset_dir(dataset, settings.data_dir, data_dir))


@main.command()
@dataset_options
@no_backend_option
@click.option("--model", type=click.Choice(["bpr", "lightgcn"]), required=True,
              help="The collaborative-filtering generator to train.")
@k_option(default=20, old_names=("--topk",), help="Candidates written per user.")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs (default 40 for BPR, 60 for LightGCN).")
@click.option("--seed", type=int, default=0, show_default=True)
@out_file_option(help="Candidates file (default: "
                      "$P4R_DATA_DIR/eval/NAME/candidates_MODEL.jsonl).")
@json_option("Print the metrics as JSON.")
@friendly_errors
def candidates(dataset: str, data_dir: Path | None, model: str, k: int, epochs: int | None,
               seed: int, out: Path | None, as_json: bool) -> None:
    """Train BPR-MF or LightGCN on the training split; write top-K candidates per user.

    A folder with train.txt/test.txt (``user item item …`` lines) is used as its own split;
    otherwise the dataset's interactions are split leave-one-out by time.
    """
    from p4r.datasets.jsonl import write_jsonl_atomic
    from p4r.evaluation.generators import InteractionMatrix, read_cf_lines, top_k, train
    from p4r.evaluation.metrics import evaluate
    from p4r.evaluation.pipeline import generator_candidates

    settings = settings_for(None)
    out = out or settings.data_dir / "eval" / dataset / f"candidates_{model}.jsonl"
    if data_dir is not None and (data_dir / "train.txt").exists():
        matrix = InteractionMatrix.from_pairs(read_cf_lines(data_dir / "train.txt"))
        gt: dict[str, set[str]] = {}
        for user, item in read_cf_lines(data_dir / "test.txt"):
            gt.setdefault(user, set()).add(item)
        trained = train(matrix, cast("Model", model), seed=seed, epochs=epochs)
        ranked = top_k(trained, matrix, k)
        cands = {u: [i for i, _ in ranked[u]] for u in gt if u in ranked}
        seconds = trained.seconds
    else:
        cands, gt, seconds = generator_candidates(_load(dataset, data_dir, settings),
                                                  cast("Model", model), k, seed, epochs)
    write_jsonl_atomic(out, [{"user_id": u, "topk": k, "filter_scope": "train",
                              "results": [{"item_id": i} for i in c]} for u, c in cands.items()])
    evaluation = evaluate(cands, gt, (k,))
    summary = evaluation.summary() | {"train_seconds": round(seconds, 2), "out": str(out)}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{model}: HR@{k} {summary[f'HR@{k}']:.4f}  NDCG@{k} "
               f"{summary[f'NDCG@{k}']:.4f}  ({summary['users']} users, trained in "
               f"{seconds:.1f}s) → {out}")


@main.command()
@store_options
@click.option("--generator", type=click.Choice(["bpr", "lightgcn"]), required=True,
              help="The collaborative-filtering generator whose candidates are reranked.")
@click.option("--encoder", "trained_encoder", default=None,
              help="A trained encoder folder to compare with the vanilla one.")
@click.option("--train", "train_first", is_flag=True,
              help="Train an encoder first (p4r train defaults, on the training split only) "
                   "and compare it; next-item alignments unless --alignments is given.")
@click.option("--alignments", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Alignments for --train (e.g. the LLM judge's alignments.jsonl).")
@k_option(default=20, old_names=("--topk",),
          help="Candidates the generator proposes per user (and the reranked list keeps).")
@ks_option
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Generator training epochs (default 40 for BPR, 60 for LightGCN).")
@click.option("--seed", type=int, default=0, show_default=True)
@out_dir_option(help="Report folder (default: $P4R_DATA_DIR/eval/NAME/run-GENERATOR).")
@json_option("Print the metrics of each variant as JSON.")
@friendly_errors
def run(dataset: str, data_dir: Path | None, backend: str | None, generator: str,
        trained_encoder: str | None, train_first: bool, alignments: Path | None, k: int,
        ks: tuple[int, ...], epochs: int | None, seed: int, out_dir: Path | None,
        as_json: bool) -> None:
    """Generator alone vs Persona4Rec reranking (vanilla, trained) vs summary-only.

    Saves results.json (with bootstrap 95% intervals), results.png, the split and the
    candidates under --out-dir. With --train, the trained encoder is fitted here first.
    """
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.model import Encoder
    from p4r.evaluation.pipeline import EncoderChoice, run_evaluation
    from p4r.store import open_backend

    settings = settings_for(backend)
    data = _load(dataset, data_dir, settings)
    out = out_dir or settings.data_dir / "eval" / dataset / f"run-{generator}"
    if train_first and trained_encoder:
        raise click.UsageError("give --train or --encoder, not both")
    if train_first:
        trained_encoder = str(_train_for_eval(data, settings, alignments, out / "encoder"))
    choices = [EncoderChoice("vanilla", Encoder(settings.encoder), settings.encoder)]
    if trained_encoder:
        trained_settings = settings.encoder.model_copy(update={"model": trained_encoder})
        choices.append(EncoderChoice("trained", Encoder(trained_settings), trained_settings))
    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        with open_backend(settings) as store:
            variants = run_evaluation(settings, data, store, cast("Model", generator),
                                      choices, k=k, ks=ks, out=out,
                                      cache=cache, seed=seed, epochs=epochs)
    finally:
        cache.close()
    rows = [(v.name, v.evaluation.summary()) for v in variants]
    if as_json:
        echo_json({name: metrics for name, metrics in rows})
        return
    _table(rows, variants[0].evaluation.metric_names())
    _intervals(variants, ks)
    click.echo(f"report: {out / 'results.json'}, {out / 'results.png'}")


def _intervals(variants: list[Variant], ks: tuple[int, ...]) -> None:
    """Bootstrap 95% intervals of HR and NDCG at the largest two cut-offs, per variant."""
    from p4r.evaluation.pipeline import confidence_intervals

    names = [f"{m}@{k}" for k in sorted(ks)[-2:] for m in ("HR", "NDCG")]
    click.echo("bootstrap 95% intervals (users resampled):")
    for v in variants:
        ci = confidence_intervals(v.evaluation)
        click.echo(f"  {v.name}: " + "  ".join(
            f"{n} [{ci[n][0]:.3f}, {ci[n][1]:.3f}]" for n in names if n in ci))


def _train_for_eval(data: Dataset, settings: Settings, alignments: Path | None,
                    out: Path) -> Path:
    """Fit the default encoder on the training split; returns its model folder."""
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.train_run import train_encoder, tuples_for

    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        tuples = tuples_for(data, settings, cache, alignments, out)
        run = train_encoder(data, tuples, settings, out, cache=cache, resume=False,
                            on_epoch=lambda log: click.echo(log.line(
                                settings.train.n_epochs()), err=True))
    finally:
        cache.close()
    kept = run.report.best_epoch
    click.echo(f"trained {settings.train.method}: kept epoch "
               f"{(kept or 0) + 1} of {len(run.report.epochs)} → {run.report.model_dir}",
               err=True)
    return run.report.model_dir


@main.command("train-cv")
@dataset_options
@no_backend_option
@click.option("--alignments", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Alignments to train on (default: next-item self-labels, no LLM).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True,
              help="User-disjoint folds.")
@click.option("--method", type=click.Choice(["head", "lora", "full"]), default=None,
              help="What to train (P4R_TRAIN__METHOD, default head).")
@click.option("--seed", type=int, default=0, show_default=True)
@work_dir_option(old_names=("--work",),
                 help="Folder for each fold's model (default: "
                      "$P4R_DATA_DIR/eval/NAME/train-cv).")
@json_option("Print the summary as JSON.")
@friendly_errors
def train_cv(dataset: str, data_dir: Path | None, alignments: Path | None, folds: int,
             method: str | None, seed: int, work_dir: Path | None, as_json: bool) -> None:
    """Vanilla vs trained encoder on users never trained on (user-disjoint folds).

    Every next item of each fold's users is ranked among P4R_TRAIN__VAL_CANDIDATES negatives
    of the same training exposure; gains come with user-clustered bootstrap 95% intervals.
    """
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.train_run import tuples_for
    from p4r.evaluation.training_cv import cross_validate

    settings = settings_for(None)
    if method:
        settings = settings.model_copy(update={
            "train": settings.train.model_copy(update={"method": method})})
    data = _load(dataset, data_dir, settings)
    work = work_dir or settings.data_dir / "eval" / dataset / "train-cv"
    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        tuples = tuples_for(data, settings, cache, alignments, work)
        say = (lambda text: click.echo(text, err=True)) if as_json else click.echo
        result = cross_validate(
            data, tuples, settings, work, folds=folds, seed=seed, cache=cache,
            on_fold=lambda k, f: say(
                f"fold {k + 1}/{folds}: {f['events']} events, HR@5 vanilla "
                f"{f['vanilla_hr5']:.3f} trained {f['trained_hr5']:.3f} (kept epoch "
                f"{(f['kept_epoch'] or 0) + 1})"))
    finally:
        cache.close()
    summary = result.summary(seed) | {"method": settings.train.method}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{summary['users']} users, {summary['events']} next-item events, "
               f"{summary['folds']} folds ({summary['seconds']:.0f}s)")
    for name in ("HR@5", "NDCG@10"):
        row = summary[name]
        click.echo(f"{name:>8}: " + "  ".join(
            f"{label} {row[label]['value']:+.3f} [{row[label]['ci_low']:+.3f}, "
            f"{row[label]['ci_high']:+.3f}]" if label == "gain" else
            f"{label} {row[label]['value']:.3f}" for label in ("vanilla", "trained", "gain")))


@main.command("loo-check")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              required=True, help="Folder with the Persona4Rec Yelp sample files.")
@backend_option
@click.option("--negatives", type=click.IntRange(min=1), default=19, show_default=True,
              help="Sampled negatives beside each held-out item.")
@click.option("--seed", type=int, default=0, show_default=True)
@json_option("Print the metrics as JSON.")
@friendly_errors
def loo_check(data_dir: Path, backend: str | None, negatives: int, seed: int,
              as_json: bool) -> None:
    """Held-out item among sampled negatives on the real sample, with bootstrap intervals."""
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.model import Encoder
    from p4r.evaluation.loo_check import run_loo_check
    from p4r.store import open_backend

    settings = settings_for(backend)
    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        with open_backend(settings) as store:
            result = run_loo_check(settings, data_dir, store, Encoder(settings.encoder),
                                   settings.encoder, negatives=negatives, seed=seed,
                                   cache=cache)
    finally:
        cache.close()
    if as_json:
        echo_json(result.as_dict())
        return
    click.echo(f"{result.users} users, {result.candidates} candidates each "
               f"({result.persona_scored} persona-scored, {result.summary_scored} by summary)")
    for name, m in result.metrics.items():
        base = result.random_baseline.get(name)
        base_text = f"   random {base:.3f}" if base is not None else ""
        click.echo(f"{name:>8}: {m['value']:.3f}  95% CI [{m['ci_low']:.3f}, "
                   f"{m['ci_high']:.3f}]{base_text}")


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False, exists=True),
              required=True, help="Folder with the Persona4Rec Yelp sample files.")
@click.option("--negatives", type=click.IntRange(min=1), default=19, show_default=True,
              help="Sampled negatives beside each target.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the negatives and of the bootstraps.")
@click.option("--users", type=click.IntRange(min=1), default=None,
              help="Only the first N users (sorted ids): a quick check, not a result.")
@out_file_option(help="Also write the table as JSON to this file ('-': standard output).")
@json_option("Print the table as JSON.")
@friendly_errors
def modes(data_dir: Path, negatives: int, seed: int, users: int | None, out: Path | None,
          as_json: bool) -> None:
    """Ranking modes side by side: default, interests, proportional (README, "Ranking modes").

    HR@5, HR@10, NDCG@10, MRR@10 and TDD per mode under leave-one-out and rolling next-item,
    with 95% bootstrap intervals (users resampled) and paired differences against default.
    The encoder is P4R_ENCODER__MODEL (the vanilla MiniLM by default); nothing is tuned.
    """
    import json

    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.model import Encoder
    from p4r.evaluation.modes import format_table, quality_table
    from p4r.fsutil import write_output

    settings = settings_for(None)
    cache = EmbeddingCache(settings.data_dir / "cache" / "embeddings.sqlite")
    try:
        table = quality_table(data_dir, encoder=Encoder(settings.encoder), cache=cache,
                              negatives=negatives, seed=seed, users=users,
                              progress=lambda line: click.echo(line, err=True))
    finally:
        cache.close()
    if out is not None:
        write_output(out, json.dumps(table, indent=2) + "\n")
    if as_json:
        echo_json(table)
        return
    protocol = table["protocol"]
    click.echo(f"encoder {protocol['encoder']['model']} ({protocol['encoder']['dim']}-d); "
               f"tau {protocol['tau']}, gamma {protocol['gamma']}, last {protocol['last_n']}, "
               f"{protocol['interests']} interests, proportional over the first "
               f"{protocol['list_k']}, TDD over the first {protocol['tdd_cut']}; "
               f"{protocol['negatives']} negatives; {protocol['bootstrap']}\n")
    click.echo(format_table(table))


main.add_command(moved(bench.latency_bench, "p4r bench latency"), "latency")
