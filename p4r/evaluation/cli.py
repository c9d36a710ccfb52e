"""``p4r-eval``: metrics, candidate generators, end-to-end comparison and latency study."""

from __future__ import annotations

import math
from pathlib import Path

import click

from p4r.console import dataset_options, echo_json, friendly_errors, settings_for
from p4r.evaluation.metrics import DEFAULT_KS


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Measure accuracy and speed the way the Persona4Rec paper does."""


def _parse_ks(value: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(k) for k in value.split(",") if k.strip())
    except ValueError:
        raise click.BadParameter("use comma-separated integers, e.g. 5,10,20") from None
    if not ks or min(ks) < 1:
        raise click.BadParameter("K must be positive")
    return ks


def _table(rows: list[tuple[str, dict[str, float]]], names: list[str]) -> None:
    width = max(len(label) for label, _ in rows) + 2
    click.echo(f"{'':<{width}}" + "".join(f"{n:>10}" for n in names) + f"{'users':>8}")
    for label, metrics in rows:
        cells = "".join(f"{metrics[n]:>10.4f}" if not math.isnan(metrics[n]) else f"{'-':>10}"
                        for n in names)
        click.echo(f"{label:<{width}}{cells}{int(metrics['users']):>8}")


@main.command()
@click.option("--candidates", "candidates_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Ranked candidates, reference format ({user_id, results: [{item_id}]}).")
@click.option("--gt", "gt_path", required=True,
              type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Ground truth jsonl: {user_id, item_id} per line.")
@click.option("--reviews", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Reviews or history jsonl, for --scenarios.")
@click.option("--scenarios", is_flag=True,
              help="Also report warm/cold users and head/tail items (80th/20th percentiles "
                   "of review counts).")
@click.option("--ks", default="5,10,20", show_default=True, help="Cut-offs.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@friendly_errors
def metrics(candidates_path: Path, gt_path: Path, reviews: Path | None, scenarios: bool,
            ks: str, as_json: bool) -> None:
    """HR, MRR and NDCG at each K for leave-one-out ([PAD] counts as an item)."""
    from p4r.evaluation.io import read_ground_truth, read_interaction_pairs, read_ranked
    from p4r.evaluation.metrics import evaluate, scenario_groups

    if scenarios and reviews is None:
        raise click.UsageError("--scenarios needs --reviews")
    evaluation = evaluate(read_ranked(candidates_path), read_ground_truth(gt_path),
                          _parse_ks(ks))
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


def _load(dataset: str, data_dir: Path | None, settings):  # type: ignore[no-untyped-def]
    from p4r.datasets import dataset_dir, load_dataset

    return load_dataset(dataset, dataset_dir(dataset, settings.data_dir, data_dir))


@main.command()
@dataset_options
@click.option("--model", type=click.Choice(["bpr", "lightgcn"]), required=True)
@click.option("--topk", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Training epochs (default 40 for BPR, 60 for LightGCN).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Candidates file (default: $P4R_DATA_DIR/eval/NAME/candidates_MODEL.jsonl).")
@click.option("--json", "as_json", is_flag=True, help="Print the metrics as JSON.")
@friendly_errors
def candidates(dataset: str, data_dir: Path | None, backend: str | None, model: str, topk: int,
               epochs: int | None, seed: int, out: Path | None, as_json: bool) -> None:
    """Train BPR-MF or LightGCN on the training split; write top-K candidates per user.

    A folder with train.txt/test.txt (``user item item …`` lines) is used as its own split;
    otherwise the dataset's interactions are split leave-one-out by time.
    """
    from p4r.datasets.jsonl import write_jsonl_atomic
    from p4r.evaluation.generators import InteractionMatrix, read_cf_lines, top_k, train
    from p4r.evaluation.metrics import evaluate
    from p4r.evaluation.pipeline import generator_candidates

    settings = settings_for(backend)
    out = out or settings.data_dir / "eval" / dataset / f"candidates_{model}.jsonl"
    if data_dir is not None and (data_dir / "train.txt").exists():
        matrix = InteractionMatrix.from_pairs(read_cf_lines(data_dir / "train.txt"))
        gt: dict[str, set[str]] = {}
        for user, item in read_cf_lines(data_dir / "test.txt"):
            gt.setdefault(user, set()).add(item)
        trained = train(matrix, model, seed=seed, epochs=epochs)  # type: ignore[arg-type]
        ranked = top_k(trained, matrix, topk)
        cands = {u: [i for i, _ in ranked[u]] for u in gt if u in ranked}
        seconds = trained.seconds
    else:
        cands, gt, seconds = generator_candidates(_load(dataset, data_dir, settings),
                                                  model, topk, seed, epochs)  # type: ignore[arg-type]
    write_jsonl_atomic(out, [{"user_id": u, "topk": topk, "filter_scope": "train",
                              "results": [{"item_id": i} for i in c]} for u, c in cands.items()])
    evaluation = evaluate(cands, gt, (topk,))
    summary = evaluation.summary() | {"train_seconds": round(seconds, 2), "out": str(out)}
    if as_json:
        echo_json(summary)
        return
    click.echo(f"{model}: HR@{topk} {summary[f'HR@{topk}']:.4f}  NDCG@{topk} "
               f"{summary[f'NDCG@{topk}']:.4f}  ({summary['users']} users, trained in "
               f"{seconds:.1f}s) → {out}")


@main.command()
@dataset_options
@click.option("--generator", type=click.Choice(["bpr", "lightgcn"]), required=True)
@click.option("--encoder", "trained_encoder", default=None,
              help="A trained encoder folder to compare with the vanilla one.")
@click.option("--train", "train_first", is_flag=True,
              help="Train an encoder first (p4r-train defaults, on the training split only) "
                   "and compare it; next-item alignments unless --alignments is given.")
@click.option("--alignments", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Alignments for --train (e.g. the LLM judge's alignments.jsonl).")
@click.option("--topk", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--ks", default="5,10,20", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Report folder (default: $P4R_DATA_DIR/eval/NAME/run-GENERATOR).")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def run(dataset: str, data_dir: Path | None, backend: str | None, generator: str,
        trained_encoder: str | None, train_first: bool, alignments: Path | None, topk: int,
        ks: str, epochs: int | None, seed: int, out: Path | None, as_json: bool) -> None:
    """Generator alone vs Persona4Rec reranking (vanilla, trained) vs summary-only.

    Saves results.json (with bootstrap 95% intervals), results.png, the split and the
    candidates under --out. With --train, the trained encoder is fitted here first.
    """
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.model import Encoder
    from p4r.evaluation.pipeline import EncoderChoice, run_evaluation
    from p4r.store import open_backend

    settings = settings_for(backend)
    data = _load(dataset, data_dir, settings)
    out = out or settings.data_dir / "eval" / dataset / f"run-{generator}"
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
            variants = run_evaluation(settings, data, store, generator,  # type: ignore[arg-type]
                                      choices, k=topk, ks=_parse_ks(ks), out=out,
                                      cache=cache, seed=seed, epochs=epochs)
    finally:
        cache.close()
    rows = [(v.name, v.evaluation.summary()) for v in variants]
    if as_json:
        echo_json({name: metrics for name, metrics in rows})
        return
    _table(rows, variants[0].evaluation.metric_names())
    _intervals(variants, _parse_ks(ks))
    click.echo(f"report: {out / 'results.json'}, {out / 'results.png'}")


def _intervals(variants, ks: tuple[int, ...]) -> None:  # type: ignore[no-untyped-def]
    """Bootstrap 95% intervals of HR and NDCG at the largest two cut-offs, per variant."""
    from p4r.evaluation.pipeline import confidence_intervals

    names = [f"{m}@{k}" for k in sorted(ks)[-2:] for m in ("HR", "NDCG")]
    click.echo("bootstrap 95% intervals (users resampled):")
    for v in variants:
        ci = confidence_intervals(v.evaluation)
        click.echo(f"  {v.name}: " + "  ".join(
            f"{n} [{ci[n][0]:.3f}, {ci[n][1]:.3f}]" for n in names if n in ci))


def _train_for_eval(data, settings, alignments: Path | None,  # type: ignore[no-untyped-def]
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
@click.option("--alignments", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Alignments to train on (default: next-item self-labels, no LLM).")
@click.option("--folds", type=click.IntRange(min=2), default=5, show_default=True)
@click.option("--method", type=click.Choice(["head", "lora", "full"]), default=None)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for each fold's model (default: $P4R_DATA_DIR/eval/NAME/train-cv).")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def train_cv(dataset: str, data_dir: Path | None, backend: str | None,
             alignments: Path | None, folds: int, method: str | None, seed: int,
             work: Path | None, as_json: bool) -> None:
    """Vanilla vs trained encoder on users never trained on (user-disjoint folds).

    Every next item of each fold's users is ranked among P4R_TRAIN__VAL_CANDIDATES negatives
    of the same training exposure; gains come with user-clustered bootstrap 95% intervals.
    """
    from p4r.encoder.cache import EmbeddingCache
    from p4r.encoder.train_run import tuples_for
    from p4r.evaluation.training_cv import cross_validate

    settings = settings_for(backend)
    if method:
        settings = settings.model_copy(update={
            "train": settings.train.model_copy(update={"method": method})})
    data = _load(dataset, data_dir, settings)
    work = work or settings.data_dir / "eval" / dataset / "train-cv"
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
@click.option("--backend", type=click.Choice(["edge", "server"]), default=None)
@click.option("--negatives", type=click.IntRange(min=1), default=19, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--personas", type=click.IntRange(min=100), default=125_000, show_default=True)
@click.option("--repeats", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=Path("."),
              show_default=True, help="Folder for latency.json and latency.png.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def latency(personas: int, repeats: int, out: Path, as_json: bool) -> None:
    """Latency against concurrent users (1, 10, 50, 100) and candidates (20, 50, 100)."""
    import json

    from p4r.bench.latency import plot_latency, run_latency

    rows = run_latency(personas=personas, repeats=repeats, progress=not as_json)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latency.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    png = plot_latency(rows, out / "latency.png")
    if as_json:
        echo_json({"rows": rows, "plot": str(png)})
        return
    click.echo(f"{'study':>10} {'users':>6} {'cands':>6} {'call ms':>9} {'per user':>9} "
               f"{'numpy ms':>9}")
    for r in rows:
        click.echo(f"{r['study']:>10} {r['users']:>6} {r['candidates']:>6} {r['batch_ms']:>9.3f} "
                   f"{r['per_user_ms']:>9.3f} {r['numpy_batch_ms']:>9.3f}")
    click.echo(f"plot: {png}")


__all__ = ["DEFAULT_KS", "main"]
