"""`raycf report`: one tune run as report.md, two PNG figures and a self-contained report.html.

The report reads only what `raycf tune` and `raycf score` wrote into a run directory: study.json, the split
manifest, trials.parquet, leaderboard.parquet, best.json, each trial's result.json and scores/summary.json. A run
on an object store is read through a local copy of those files (never the checkpoints), and the report's files
are written back beside them.
"""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import math
import numbers
import os
import platform
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pyarrow.fs as pafs

from raycf.errors import RaycfError
from raycf.eval.metrics import METRICS, REPORT_K, Selection
from raycf.integrations.mlflow_runs import log_artifacts
from raycf.models import MODELS
from raycf.report.compare import check_comparable, compare_outputs, read_scoring_output
from raycf.report.compare import markdown as compare_markdown
from raycf.runs.layout import (
    BEST_FILE,
    CURVES_PNG,
    HYPERPARAMETERS_PNG,
    LEADERBOARD_FILE,
    REFERENCE,
    REFERENCE_K,
    REPEATS_FILE,
    REPEATS_SUMMARY,
    REPORT_HTML,
    REPORT_MD,
    SCORES_DIR,
    SELECT_FILE,
    SPLIT_DIR,
    STUDY_FILE,
    SUMMARY_JSON,
    TRIALS_FILE,
)
from raycf.runs.record import BestRecord, StudyRecord
from raycf.runs.trials import seed_means
from raycf.storage.location import Location, parse_results
from raycf.train.precision import precision_words

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D

VALID_K = REPORT_K
"""Every trial's validation P/R/NDCG/MRR are reported at this k, whatever the study's metric."""

STOP_MARKERS = {"asha": "v", "patience": "o", "max_t": "s", "complete": "D", "error": "X"}
PANELS_PER_ROW = 4
METRIC_LABELS = {"precision": "P", "recall": "R", "ndcg": "NDCG", "mrr": "MRR"}
IMAGE = re.compile(r"!\[([^\]]*)\]\(([\w.-]+\.png)\)")
DPI = 120


def model_label(model: str) -> str:
    """What tables and figures call a model (its name, for a model this release does not know)."""
    return MODELS[model].label if model in MODELS else model


def model_colour(model: str) -> str:
    return MODELS[model].colour if model in MODELS else "black"


def shown_hyperparameters(model: str) -> tuple[str, ...]:
    """The hyperparameters the leaderboard shows for `model`."""
    if model not in MODELS:
        return ()
    return MODELS[model].key_hyperparameters or MODELS[model].Params.names()


@dataclass(frozen=True)
class Run:
    """The files of one finished `raycf tune` run."""

    directory: Path
    study: StudyRecord
    manifest: dict[str, Any]
    best: BestRecord
    trials: pd.DataFrame
    leaderboard: pd.DataFrame

    @property
    def selection(self) -> Selection:
        """The study's metric: what ranked its trials and picked their best epochs."""
        return self.study.selection


def load_run(run_dir: Path, name: str) -> Run:
    """Read a run directory (`name`: how the user named it); RaycfError naming it and the way out when the
    study has not finished."""
    if not (run_dir / TRIALS_FILE).is_file():
        raise RaycfError(f"{name}: not a finished `raycf tune` run (no {TRIALS_FILE}); run `raycf tune` to the "
                         f"end, or continue an interrupted one with `raycf tune --resume {name}`")
    if not (run_dir / BEST_FILE).is_file():
        raise RaycfError(f"{name}: no {BEST_FILE}: no trial finished an epoch with a checkpoint; see the errors "
                         f"in {TRIALS_FILE}, then `raycf tune --resume {name}`")
    return Run(
        directory=run_dir,
        study=StudyRecord.from_json(json.loads((run_dir / STUDY_FILE).read_text())),
        manifest=json.loads((run_dir / SPLIT_DIR / "manifest.json").read_text()),
        best=BestRecord.from_json(json.loads((run_dir / BEST_FILE).read_text())),
        trials=pd.read_parquet(run_dir / TRIALS_FILE),
        leaderboard=pd.read_parquet(run_dir / LEADERBOARD_FILE),
    )


def number(value: float) -> str:
    """Every metric in the report: four decimals."""
    return f"{value:.4f}"


def hp_text(value: Any) -> str:
    """A hyperparameter value, short: 0.0001 -> 1e-04, 100 -> 100, l2 -> l2."""
    return format(value, "g") if isinstance(value, numbers.Real) else str(value)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown pipe table."""
    lines = [header, ["---"] * len(header), *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def searched(trials: pd.DataFrame) -> dict[str, list[str]]:
    """Per model, the hp_ columns whose value varies among its trials."""
    columns = [column for column in trials.columns if column.startswith("hp_")]
    return {
        model: [column for column in columns if group[column].nunique(dropna=False) > 1]
        for model, group in trials.groupby("model", sort=False)
    }


def asha_saved_epochs(trials: pd.DataFrame, max_t: int) -> int:
    """Estimated epochs ASHA saved: each stopped trial would have run as long as its model's finished ones."""
    finished = trials[trials["stopped_by"].isin(["patience", "max_t", "complete"])]
    typical = finished.groupby("model")["epochs_run"].mean()
    stopped = trials[trials["stopped_by"] == "asha"]
    if stopped.empty:
        return 0
    expected = stopped["model"].map(typical).fillna(max_t)
    return int(round((expected - stopped["epochs_run"]).clip(lower=0).sum()))


def machine() -> str:
    """This host: platform, CPUs, Python, torch and Ray versions."""
    return (f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
            f"torch {importlib.metadata.version('torch')}, ray {importlib.metadata.version('ray')}")


def searcher_text(searcher: dict[str, Any] | None) -> str:
    """`optuna (n_startup_trials 5, seeded with 2 configurations)`; runs from before the key: random."""
    if not searcher:
        return "random"
    points = searcher.get("points_to_evaluate") or {}
    options = [f"{key} {value}" for key, value in sorted(searcher.items()) if key not in ("type", "points_to_evaluate")]
    if points:
        options.append(f"seeded with {sum(len(seeds) for seeds in points.values())} configurations")
    return searcher["type"] + (f" ({', '.join(options)})" if options else "")


def same_value(value: Any, seeded: Any) -> bool:
    """Whether a trial's hp_ value is a seeded configuration's (numbers up to float rounding)."""
    if isinstance(value, numbers.Real) and isinstance(seeded, numbers.Real) and not isinstance(seeded, bool):
        return math.isclose(value, seeded, rel_tol=1e-9, abs_tol=1e-12)
    return bool(value == seeded)


def seeded_trials(trials: pd.DataFrame, seeds: list[dict[str, Any]]) -> pd.DataFrame:
    """The trials whose configuration is one of `seeds` (searched fields and their flat values)."""
    return trials[[any(all(same_value(row.get(f"hp_{name}"), value) for name, value in seed.items())
                       for seed in seeds) for _, row in trials.iterrows()]]


def seeded_section(run: Run) -> list[str]:
    """For each model the searcher was seeded for: whether the model's pick validates below, at or above its best
    seeded (reference) configuration."""
    points = (run.study.searcher or {}).get("points_to_evaluate") or {}
    selection, sentences = run.selection, []
    for model, seeds in points.items():
        label, picks = model_label(model), run.leaderboard[run.leaderboard["model"] == model]
        seeded = seeded_trials(run.trials[run.trials["model"] == model], seeds).dropna(subset=[selection.key])
        if seeded.empty or picks.empty:
            sentences.append(f"- {label}: no seeded configuration has a validation result.")
            continue
        reference = seeded.sort_values(selection.key, ascending=selection.mode == "min").iloc[0]
        pick = picks.iloc[0]
        stopped = " (stopped by ASHA)" if reference["stopped_by"] == "asha" else ""
        seed_text = f"seeded reference (trial {reference['trial_id']}{stopped}: {number(reference[selection.key])})"
        if pick["trial_id"] == reference["trial_id"]:
            sentences.append(f"- {label}: the pick is its {seed_text}; the search found nothing better.")
            continue
        difference = pick[selection.key] - reference[selection.key]
        below = difference < 0 if selection.mode == "max" else difference > 0
        sentences.append(f"- {label}: the searched pick (trial {pick['trial_id']}: {number(pick[selection.key])}) "
                         f"validates {'below' if below else 'above'} its {seed_text} by {abs(difference):.4f}"
                         + ("; the reference settings are the better choice on this split." if below else "."))
    if not sentences:
        return []
    return ["## Seeded references", f"The searcher tried these configurations first (`points_to_evaluate`); "
            f"validation {selection.label} of each model's pick against its best seeded one:", "\n".join(sentences)]


def run_section(run: Run) -> list[str]:
    """Study, data, seed, trials, epochs and wall time."""
    study, split, trials = run.study, run.manifest, run.trials
    counts, dropped = split["counts"], split["dropped"]
    reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(trials["stopped_by"].value_counts().items()))
    epochs = int(trials["epochs_run"].sum())
    saved = asha_saved_epochs(trials, study.max_t)
    select = study.select
    return ["## Run", "\n".join([
        f"- Study: `{study.name}` (`{study.study_file}`), scheduler {study.scheduler}, "
        f"max_t {study.max_t}, searcher {searcher_text(study.searcher)}, metric {run.selection.label} "
        f"({run.selection.mode})" + (f", robust selection: top {select.top} of each model on split seeds "
                                     f"{list(select.seeds)}" if select is not None else ""),
        f"- Dataset: {split['source']}: {split['n_users']:,} users, {split['n_items']:,} items; "
        f"{counts['train']:,} train / {counts['valid']:,} validation / {counts['test']:,} test records; "
        f"dropped (item not in train): {dropped['valid']:,} validation, {dropped['test']:,} test",
        f"- Seed: {study.seed}",
        f"- Trials: {len(trials)} (ended by {reasons})",
        f"- Epochs run in total: {epochs:,}",
        f"- Epochs saved by ASHA: about {saved:,} (an estimate: each ASHA-stopped trial counted at the mean "
        f"epochs of its model's trials that ran to patience or max_t, else at max_t {study.max_t})",
        f"- Wall time: {run.best.seconds:.2f} s (the last `raycf tune` or `--resume` call)",
        f"- Machine (where this report was made): {machine()}",
    ])]


def key_hyperparameters(row: pd.Series, columns: list[str]) -> str:
    """`beta=0.2, dropout=0.5` for a model's key and searched hyperparameters."""
    wanted = [f"hp_{name}" for name in shown_hyperparameters(row["model"])] + columns
    return ", ".join(f"{column[3:]}={hp_text(row[column])}" for column in row.index if column in wanted)


def with_error(value: float, error: float) -> str:
    """`0.2912 ± 0.0041`, or the value alone when its error is unknown."""
    return number(value) if pd.isna(error) else f"{number(value)} ± {number(error)}"


def noise_text(leaderboard: pd.DataFrame, selection: Selection) -> str:
    """Which differences between consecutive leaderboard rows are within noise: |difference| below twice
    the standard error of the difference (per-user standard errors, as independent)."""
    if "valid_se" not in leaderboard or len(leaderboard) < 2:
        return ""
    sentences = []
    for (_, first), (_, second) in zip(leaderboard.iterrows(), leaderboard.iloc[1:].iterrows()):
        difference = first[selection.key] - second[selection.key]
        error = (first["valid_se"] ** 2 + second["valid_se"] ** 2) ** 0.5
        if pd.isna(error):
            continue
        verdict = "within noise" if abs(difference) < 2 * error else "beyond noise"
        sentences.append(f"{model_label(first['model'])} - "
                         f"{model_label(second['model'])}: {difference:+.4f}, standard error of "
                         f"the difference {error:.4f}: {verdict} (twice the standard error is the line).")
    return " ".join(sentences)


def output_layer(trial: pd.Series) -> str:
    """A neural trial's output-layer precision, how it was chosen and the rates measured; "-" for a fitted model
    (or a run of a release that did not record it)."""
    if pd.isna(trial.get("matmul_dtype")):
        return "-"
    measured = pd.notna(trial.get("matmul_float32_gflops"))
    return precision_words({"matmul_dtype": trial["matmul_dtype"],
                            "requested": json.loads(trial["config"]).get("matmul_dtype", "float32"),
                            **({"float32_gflops": trial["matmul_float32_gflops"],
                                "bfloat16_gflops": trial["matmul_bfloat16_gflops"]} if measured else {})})


def leaderboard_section(run: Run, varying: dict[str, list[str]]) -> list[str]:
    """Best trial per model, best first, the study's metric with its per-user standard error."""
    selection = run.selection
    extra = [name for name in selection.reported if name not in METRICS and f"valid_{name}" in run.leaderboard]
    header = ["model", "trial_id", "best_epoch", f"{selection.label} ± SE",
              *(f"{METRIC_LABELS[name]}@{VALID_K}" for name in METRICS), *extra, "key hyperparameters",
              "output layer"]
    rows = [[row["model"], row["trial_id"], str(row["best_epoch"]),
             with_error(row[selection.key], row.get("valid_se", float("nan"))),
             *(number(row[f"valid_{name}"]) for name in [*METRICS, *extra]),
             key_hyperparameters(row, varying[row["model"]]), output_layer(row)]
            for _, row in run.leaderboard.iterrows()]
    chosen = ("by their mean validation metric over the robust selection's seeds (see below)"
              if "select_mean" in run.leaderboard else f"by validation {selection.label}")
    return ["## Leaderboard", f"The best trial of each model {chosen} (the study's metric is {selection.label}; "
            "validation metrics at the trial's best epoch; SE: the per-user standard error of that mean). "
            + noise_text(run.leaderboard, selection), table(header, rows)]


def selection_section(run_dir: Path, selection: Selection) -> list[str]:
    """The robust selection's candidates: mean ± std of the validation metric over its seeds, the winners."""
    if not (run_dir / SELECT_FILE).is_file():
        return []
    rows = pd.read_parquet(run_dir / SELECT_FILE)
    means = seed_means(rows, selection)
    winners = set(pd.read_parquet(run_dir / LEADERBOARD_FILE)["trial_id"])
    ranked = means.merge(rows.groupby("trial_id")["model"].first().reset_index(), on="trial_id").sort_values(
        ["model", "select_mean"], ascending=[True, selection.mode == "min"])
    body = [[model_label(row["model"]), row["trial_id"],
             f"{number(row['select_mean'])} ± {number(row['select_std'])}", "winner" if row["trial_id"] in winners
             else ""] for _, row in ranked.iterrows()]
    seeds = json.loads(ranked["select_seeds"].iloc[0])
    return ["## Robust selection", f"Each model's best configurations of the search trained again on split seeds "
            f"{seeds}; the winner has the best mean validation {selection.label} (mean ± standard deviation over "
            "the seeds). Test metrics of these runs are in select.parquet and decided nothing.",
            table(["model", "trial_id", f"validation {selection.label}", ""], body)]


def read_curve(run_dir: Path, trial_id: str, key: str) -> pd.Series:
    """The validation metric `key` per epoch from a trial's result.json (the last report of an epoch wins on
    resume)."""
    points = {}
    for path in run_dir.glob(f"run_trial_{trial_id}_*/result.json"):
        for result in parse_results(path.read_text()):
            points[result["epoch"]] = result[key]
    return pd.Series(points, dtype=float).sort_index()


def plot_learning_curves(run: Run, path: Path) -> int:
    """The study's validation metric per epoch for every trial, end markers by why it ended; the number of trials
    drawn."""
    figure, axes = plt.subplots(figsize=(9, 5.5))
    drawn = 0
    for _, trial in run.trials.iterrows():
        curve = read_curve(run.directory, trial["trial_id"], run.selection.key)
        if curve.empty:
            continue
        colour = model_colour(trial["model"])
        axes.plot(curve.index, curve.values, color=colour, alpha=0.7, linewidth=1.2)
        axes.plot(curve.index[-1], curve.values[-1], linestyle="none", marker=STOP_MARKERS[trial["stopped_by"]],
                  markersize=8, markerfacecolor=colour, markeredgecolor="black")
        drawn += 1
    models = run.trials["model"].unique()
    reasons = [reason for reason in STOP_MARKERS if reason in set(run.trials["stopped_by"])]
    handles = [Line2D([], [], color=model_colour(model), label=model_label(model)) for model in models]
    handles += [Line2D([], [], linestyle="none", marker=STOP_MARKERS[reason], color="grey",
                       markeredgecolor="black", label=f"ended by {reason}") for reason in reasons]
    axes.legend(handles=handles, loc="lower right")
    axes.set(xlabel="epoch", ylabel=f"validation {run.selection.label}", title="Learning curves")
    axes.grid(alpha=0.3)
    save(figure, path)
    return drawn


def save(figure: plt.Figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def hyperparameter_panels(trials: pd.DataFrame, key: str) -> list[tuple[str, str, pd.DataFrame]]:
    """(model, hp column, its trials) for each panel of a model that ran: the hyperparameters it always plots
    (its `panels`), or those that its trials vary."""
    scored = trials[trials[key].notna()]
    panels = []
    for model, declared in MODELS.items():
        ran = scored[scored["model"] == model]
        names = declared.panels if declared.panels is not None else [
            name for name in declared.Params.names() if f"hp_{name}" in ran and ran[f"hp_{name}"].nunique() > 1]
        panels += [(model, f"hp_{name}") for name in names if f"hp_{name}" in scored]
    return [(model, column, scored[scored["model"] == model]) for model, column in panels
            if (scored["model"] == model).any()]


def log_scale(ax: plt.Axes, values: pd.Series) -> None:
    """A log x axis; symmetric-log (linear near 0) when a value is 0."""
    positive = values[values > 0]
    if len(positive) == len(values):
        ax.set_xscale("log")
    else:
        ax.set_xscale("symlog", linthresh=positive.min() if len(positive) else 1.0)


def plot_hyperparameters(trials: pd.DataFrame, path: Path, selection: Selection) -> None:
    """Best validation metric per trial against each panel's hyperparameter (`hyperparameter_panels`)."""
    panels = hyperparameter_panels(trials, selection.key)
    columns = min(PANELS_PER_ROW, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.8 * columns, 4.5 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax, (model, column, group) in zip(axes.flat, panels):
        if "anneal_steps" in MODELS[model].Params.names():  # Mult-VAE: constant or annealed beta
            for annealed, marker, label in ((False, "o", "constant beta"), (True, "^", "beta annealed")):
                part = group[(group["hp_anneal_steps"] > 0) == annealed]
                ax.scatter(part[column], part[selection.key], marker=marker, color=model_colour(model),
                           edgecolor="black", s=50, label=label)
            ax.legend(loc="best")
        else:
            ax.scatter(group[column], group[selection.key], color=model_colour(model), edgecolor="black", s=50)
            log_scale(ax, group[column])
        name = MODELS[model].Params.label(column.removeprefix("hp_"))
        ax.set(xlabel=f"{model_label(model)} {name}", ylabel=f"best validation {selection.label}")
        ax.grid(alpha=0.3)
    save(figure, path)


def hyperparameter_section(trials: pd.DataFrame, varying: dict[str, list[str]], selection: Selection) -> list[str]:
    """The scatter figure and a table of all trials with their searched hyperparameters."""
    columns = [column for column in trials.columns if any(column in names for names in varying.values())]
    header = ["model", "trial_id", "stopped_by", "epochs_run", "best_epoch", f"valid {selection.label} ± SE",
              *(column[3:] for column in columns)]
    rows = [[row["model"], row["trial_id"], row["stopped_by"], str(row["epochs_run"]), str(row["best_epoch"]),
             with_error(row[selection.key], row.get("valid_se", float("nan"))),
             *(hp_text(row[column]) if column in varying[row["model"]] else "" for column in columns)]
            for _, row in trials.sort_values(["model", "trial_id"]).iterrows()]
    return ["## Hyperparameters",
            f"Best validation {selection.label} of each trial against AutoRec's lambda (`l2`, log axis) and Mult-VAE's "
            "beta (marker: constant or annealed) and dropout; a panel is left out when its model did not run. Trials "
            "that ASHA stopped early rank low here because they stopped, not only because of their values.",
            f"![Best validation {selection.label} against hyperparameters]({HYPERPARAMETERS_PNG})",
            "All trials, with the hyperparameters searched for their model:",
            table(header, rows)]


def curves_section(drawn: int, total: int, selection: Selection) -> list[str]:
    return ["## Learning curves",
            f"Validation {selection.label} per epoch of {drawn} of {total} trials (from each trial's result.json), "
            "one colour per model; the marker at a trial's last epoch says why it ended.",
            f"![Validation {selection.label} per epoch]({CURVES_PNG})"]


def masking_text(mask: str) -> str:
    """The masking protocol in words."""
    if mask == "train":
        return ("Masking: only the user's train items are excluded from the ranking (train-only masking, the "
                "write-up's protocol: validation items stay candidates and count as misses).")
    return ("Masking: the user's train and validation items are excluded from the ranking (RecBole's protocol); "
            "it raises every metric, so this row is not comparable with the write-up's.")


def test_section(summary: dict[str, Any] | None, run_dir: str, scores: str | None) -> list[str]:
    """The scored checkpoint's test metrics next to the write-up's, or how to get them."""
    scores_name = scores or f"{run_dir}/{SCORES_DIR}"
    if summary is None:
        out = "" if scores is None else f" --out {scores}"
        return ["## Test metrics", f"No test scores in `{scores_name}`: run `raycf score {run_dir}{out}` first, "
                "then `raycf report` again."]
    model, k = summary["model"], summary["k"]
    extra = [name for name in summary if "@" in name]  # the report metrics, e.g. recall@20
    header = ["source", "model", "k", "masking", *(f"{METRIC_LABELS[name]}@k" for name in METRICS), *extra]
    rows = [
        [f"this run ({summary['dataset']}, trial {summary['trial_id']}, epoch {summary['checkpoint_epoch']})",
         model_label(model), str(k), summary["mask"], *(number(summary[name]) for name in [*METRICS, *extra])],
    ]
    if model in REFERENCE:  # the write-up has Mult-VAE and AutoRec only
        rows.append(["write-up (ML-1M)", model_label(model), str(REFERENCE_K), "train",
                     *(number(REFERENCE[model][name]) for name in METRICS), *("-" for _ in extra)])
    return ["## Test metrics", table(header, rows), "\n".join([
        f"- {masking_text(summary['mask'])}",
        f"- Users evaluated: {summary['users_evaluated']:,} of {summary['users_scored']:,} scored "
        "(users without a test item are left out of the means).",
        f"- Scores: `{scores_name}`; the write-up's row is ML-1M, a reference point only for an ML-1M run.",
    ])]


def read_summary(scores: Location) -> dict[str, Any] | None:
    """A scoring's summary.json (following an object-store output's pointer), or None when not scored."""
    scores.check_access("--scores")
    current = scores.current()
    return json.loads(current.read_bytes(SUMMARY_JSON)) if current.has(SUMMARY_JSON) else None


def copy_run_files(run: Location, local: Path) -> None:
    """What the report reads of a run, copied into `local`: its top-level files, the split manifest and each
    trial's result.json (not the checkpoints)."""
    wanted = [entry.path for entry in run.filesystem.get_file_info(pafs.FileSelector(run.path))
              if entry.type == pafs.FileType.File]
    wanted.append(f"{run.path}/{SPLIT_DIR}/manifest.json")
    wanted += [entry.path for entry in run.filesystem.get_file_info(pafs.FileSelector(run.path, recursive=True))
               if entry.base_name == "result.json"]
    for path in wanted:
        if run.filesystem.get_file_info(path).type != pafs.FileType.File:
            continue
        target = local / path[len(run.path.rstrip("/")) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        with run.filesystem.open_input_stream(path) as stream:
            target.write_bytes(stream.read())


def repeats_section(run_dir: Path) -> list[str]:
    """Mean ± std of the test metrics over the repeat seeds, and the paired comparison of the models."""
    if not (run_dir / REPEATS_SUMMARY).is_file():
        return []
    summary = json.loads((run_dir / REPEATS_SUMMARY).read_text())
    seeds = sorted(pd.read_parquet(run_dir / REPEATS_FILE)["seed"].unique().tolist())
    measured = next(iter(summary["per_model"].values()))  # repeats.json's keys are sorted
    names = [*METRICS, *sorted(name for name in measured if name not in METRICS)]  # then e.g. recall@20
    header = ["model", *(f"{METRIC_LABELS[name]}@{summary['k']}" if name in METRIC_LABELS else name for name in names)]
    rows = [[model_label(model), *(f"{number(values[name]['mean'])} ± {number(values[name]['std'])}"
                                     for name in names)] for model, values in summary["per_model"].items()]
    blocks = ["## Seed repeats", f"The best configuration of each model trained again on split seeds {seeds} "
              f"and scored on test. {masking_text(summary['mask'])} Mean ± standard deviation over the seeds:",
              table(header, rows)]
    if "paired" in summary:
        first, second = (model_label(model) for model in summary["paired"]["models"])
        paired = [[METRIC_LABELS[name], number(entry["mean_difference"]), str(entry["wins"]),
                   number(entry["p_value"]) if "p_value" in entry else "-"]
                  for name, entry in ((name, summary["paired"][name]) for name in METRICS)]
        blocks += [f"Paired over the {len(summary['paired']['seeds'])} seeds, {first} minus {second}:",
                   table(["metric", "mean difference", f"seeds {first} wins", "paired t-test p"], paired)]
    return blocks


def inline(text: str) -> str:
    """Escape text and turn `code` spans into <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def table_html(lines: list[str]) -> str:
    cells = [[inline(cell.strip()) for cell in line.strip().strip("|").split("|")] for line in lines]
    head = "".join(f"<th>{cell}</th>" for cell in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in cells[2:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def image_html(alt: str, path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def block_html(block: str, directory: Path) -> str:
    """One markdown block (heading, bullet list, pipe table, image or paragraph) as HTML."""
    lines = block.splitlines()
    first = lines[0]
    if first.startswith("#"):
        level = len(first) - len(first.lstrip("#"))
        return f"<h{level}>{inline(first[level:].strip())}</h{level}>"
    if first.startswith("- "):
        return "<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in lines) + "</ul>"
    if first.startswith("|"):
        return table_html(lines)
    image = IMAGE.fullmatch(first)
    if image:
        return image_html(image[1], directory / image[2])
    return f"<p>{inline(' '.join(lines))}</p>"


STYLE = ("body{font-family:sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:.3em .6em}"
         "img{max-width:100%}code{background:#f4f4f4}")


def markdown_to_html(markdown: str, directory: Path, title: str) -> str:
    """The report's markdown as one HTML page, figures from `directory` embedded as data URIs."""
    body = "\n".join(block_html(block, directory) for block in markdown.strip().split("\n\n"))
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def scoring_outputs(run: Location) -> list[str]:
    """The run's `raycf score` outputs inside it: `scores` and `scores-*` (e.g. `--out RUN/scores-ease`) that hold
    a summary, sorted by name."""
    entries = run.filesystem.get_file_info(pafs.FileSelector(run.path, allow_not_found=True))
    names = sorted(entry.base_name for entry in entries if entry.type == pafs.FileType.Directory
                   and (entry.base_name == SCORES_DIR or entry.base_name.startswith(f"{SCORES_DIR}-")))
    return [f"{run.uri}/{name}" for name in names if Location.of(f"{run.uri}/{name}", "").current().has(SUMMARY_JSON)]


def comparison_section(run: Location) -> list[str]:
    """With several scoring outputs in the run, their per-user paired comparison (raycf compare), else nothing."""
    names = scoring_outputs(run)
    if len(names) < 2:
        return []
    try:
        outputs = [read_scoring_output(name) for name in names]
        check_comparable(outputs)
    except RaycfError as error:
        return ["## Per-user comparison", f"The run's scoring outputs are not compared: {error}"]
    compared = compare_markdown(compare_outputs(outputs)).split("\n", 1)[1].strip()  # without its own title
    return ["## Per-user comparison", f"The run's {len(names)} scoring outputs, paired user by user (as `raycf "
            f"compare {' '.join(names)}` computes them).", compared.replace("\n## ", "\n### ")]


def write_report(run_dir: str, scores: str | None = None) -> str:
    """Write report.md, the PNG figures and report.html into `run_dir` (a path or a URI); returns report.md's
    path or URI."""
    run = Location.of(run_dir, "")
    run.check_access("RUN_DIR")
    summary = read_summary(Location.of(scores or f"{run.uri}/{SCORES_DIR}", ""))
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch) if run.is_object_store else Path(run.path)
        if run.is_object_store:
            copy_run_files(run, directory)
        report = load_run(directory, run_dir)
        varying = searched(report.trials)
        drawn = plot_learning_curves(report, directory / CURVES_PNG)
        plot_hyperparameters(report.trials, directory / HYPERPARAMETERS_PNG, report.selection)
        title = f"raycf report: {report.study.name}"
        blocks = [f"# {title}", f"Run directory: `{run_dir}`", *run_section(report),
                  *leaderboard_section(report, varying), *seeded_section(report),
                  *curves_section(drawn, len(report.trials), report.selection),
                  *hyperparameter_section(report.trials, varying, report.selection),
                  *selection_section(directory, report.selection), *test_section(summary, run_dir, scores),
                  *comparison_section(run), *repeats_section(directory)]
        markdown = "\n\n".join(blocks) + "\n"
        (directory / REPORT_MD).write_text(markdown)
        (directory / REPORT_HTML).write_text(markdown_to_html(markdown, directory, title))
        if run.is_object_store:
            for name in (CURVES_PNG, HYPERPARAMETERS_PNG, REPORT_MD, REPORT_HTML):
                run.write_bytes(name, (directory / name).read_bytes())
    log_artifacts(run, [REPORT_HTML])  # a tracked study's parent run (nothing otherwise)
    return f"{run.uri}/{REPORT_MD}"
