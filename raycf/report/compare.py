"""`raycf compare`: paired, per-user comparison of two or more `raycf score` outputs of the same split.

Each input is a scoring output directory (`user_metrics/`, `summary.json`; a local path or a URI, an
object-store output followed through its `current.json` pointer). The inputs must have been scored on the
same split (`split_sha256`), at the same k and with the same mask, and evaluate the same users: those with
a test item (`n_test > 0`), matched by `user_id`. Anything else is refused (RaycfError) before a byte is
written.

For every pair of inputs (A-B, A-C, B-C, ... in the order given) and every metric present in all of them
(precision, recall, ndcg, mrr at k, and the report metrics they share), on the per-user differences
d = A - B:

- `mean_a`, `mean_b`: the means over the users, summed exactly as `raycf score` does (the same, to the
  last digit, as the inputs' summary.json); `mean_difference`: the exact difference of those sums over
  the users, correctly rounded (`mean_a - mean_b` up to the last bit);
- `ci95`: mean_difference +- t(0.975, n - 1) * sd(d) / sqrt(n), sd with n - 1 degrees of freedom;
- the paired t-test (`scipy.stats.ttest_rel`, two-sided): `t`, `p_t`;
- the Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, two-sided, its defaults: zero differences are
  dropped, "wilcox"; exact or normal-approximation p-value as scipy chooses): `wilcoxon_w`, `p_wilcoxon`;
- the effect size Cohen's d_z = mean(d) / sd(d): `effect_size_dz`;
- Holm's step-down correction over all metric x pair tests, with the t-tests and the Wilcoxon tests as two
  separate families (each family has metrics x pairs tests): `p_t_holm`, `p_wilcoxon_holm`;
  `significant_holm_t` / `significant_holm_wilcoxon`: that adjusted p-value <= 0.05; `significant_holm`:
  both (the difference holds under the parametric and the rank test).

Degenerate differences. All zero (the two inputs rank alike for every user): no test can tell them apart,
and scipy's Wilcoxon fails or returns NaN there; t = 0, W = 0, p_t = p_wilcoxon = 1.0, d_z = 0 and the CI
[0, 0] are reported, with a `note` saying so. Constant but not zero: sd(d) = 0, so t and d_z are infinite
(null in compare.json), p_t = 0.0 and the CI collapses to the mean; the Wilcoxon test is computed as usual.

Outputs, committed together into `out` (a new or empty directory, a path or a URI; see
raycf.storage.atomic.PendingOutput): `compare.json` (its schema: README, `raycf compare`) and
`compare.md` (one table per pair).
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from scipy import stats

from raycf.errors import RaycfError
from raycf.eval.metrics import METRICS, exact_mean, exact_sum
from raycf.runs.layout import (
    COMPARE_JSON,
    COMPARE_MD,
    SCORES_DIR,
    SUMMARY_JSON,
    USER_METRICS_DIR,
)
from raycf.storage.atomic import PendingOutput
from raycf.storage.location import Location

FORMAT = 1
ALPHA = 0.05
CONFIDENCE = 0.95
SUMMARY_FIELDS = ("k", "mask", "split_sha256")
ALL_ZERO_NOTE = "all differences are zero: no test can tell them apart; p = 1.0 by convention"
CONSTANT_NOTE = "the differences are all equal and not zero: sd = 0, so t and d_z are infinite (p_t = 0)"


@dataclass(frozen=True)
class ScoringOutput:
    """One input: as the user named it, its summary, and its users with a test item (sorted by user_id)."""

    name: str
    uri: str
    summary: dict[str, Any]
    users: pd.DataFrame
    """Indexed by user_id, sorted; `n_test` and the metric columns, only users with n_test > 0."""

    @property
    def metric_columns(self) -> list[str]:
        return [column for column in self.users.columns if column not in ("n_test", "hits")]


def _read_user_metrics(current: Location, name: str) -> pd.DataFrame:
    directory = f"{current.path}/{USER_METRICS_DIR}"
    files = sorted(entry.path for entry in current.filesystem.get_file_info(
        pafs.FileSelector(directory, allow_not_found=True, recursive=True))
        if entry.type == pafs.FileType.File and entry.base_name.endswith(".parquet"))
    if not files:
        raise RaycfError(f"{name}: no {USER_METRICS_DIR}/*.parquet beside {SUMMARY_JSON}; score the run again "
                         "with `raycf score`")
    try:
        tables = [pq.read_table(path, filesystem=current.filesystem) for path in files]
        frame = pd.concat([table.to_pandas() for table in tables], ignore_index=True)
    except (OSError, pa.ArrowInvalid) as error:
        raise RaycfError(f"{name}: cannot read {USER_METRICS_DIR}/ ({str(error).splitlines()[0]}); score the run "
                         "again with `raycf score`") from None
    missing = [column for column in ("user_id", "n_test", *METRICS) if column not in frame.columns]
    if missing:
        raise RaycfError(f"{name}: {USER_METRICS_DIR}/ lacks the column(s) {', '.join(missing)}; score the run "
                         "again with `raycf score`")
    if not frame["user_id"].is_unique:
        raise RaycfError(f"{name}: {USER_METRICS_DIR}/ holds a user more than once; score the run again with "
                         "`raycf score`")
    return frame[frame["n_test"] > 0].set_index("user_id").sort_index()


def read_scoring_output(name: str) -> ScoringOutput:
    """A `raycf score` output (path or URI); RaycfError naming it and the way out when it is not one."""
    location = Location.of(name, "")
    location.check_access("SCORES")
    if location.filesystem.get_file_info(location.path).type == pafs.FileType.NotFound:
        raise RaycfError(f"{name}: does not exist; give a `raycf score` output directory (by default "
                         f"RUN_DIR/{SCORES_DIR})")
    current = location.current()
    if not current.has(SUMMARY_JSON):
        hint = (f"give {name.rstrip('/')}/{SCORES_DIR}" if current.has(f"{SCORES_DIR}/{SUMMARY_JSON}")
                else f"give a `raycf score` output directory (by default RUN_DIR/{SCORES_DIR}), or score the run")
        raise RaycfError(f"{name}: no {SUMMARY_JSON}, so not a `raycf score` output; {hint}")
    try:
        summary = json.loads(current.read_bytes(SUMMARY_JSON))
    except (ValueError, UnicodeDecodeError):
        raise RaycfError(f"{name}/{SUMMARY_JSON}: not valid JSON; score the run again with `raycf score`") from None
    missing = [field for field in SUMMARY_FIELDS if not isinstance(summary, dict) or field not in summary]
    if missing:
        raise RaycfError(f"{name}/{SUMMARY_JSON}: no {', '.join(missing)}; score the run again with a current "
                         "`raycf score`")
    return ScoringOutput(name, current.uri, summary, _read_user_metrics(current, name))


def check_comparable(outputs: list[ScoringOutput]) -> None:
    """The same split, k, mask and users in every input, each against the first; RaycfError otherwise."""
    first = outputs[0]
    for other in outputs[1:]:
        a, b = first.summary, other.summary
        if a["split_sha256"] != b["split_sha256"]:
            raise RaycfError(
                f"{other.name}: scored on another split than {first.name} (split_sha256 "
                f"{str(b['split_sha256'])[:12]} vs {str(a['split_sha256'])[:12]}); compare scores of runs on the "
                "same split (same data, scheme, fractions and seed)")
        if a["k"] != b["k"]:
            raise RaycfError(f"{other.name}: scored at k={b['k']} but {first.name} at k={a['k']}; score both with "
                             "the same --k")
        if a["mask"] != b["mask"]:
            raise RaycfError(f"{other.name}: scored with --mask {b['mask']} but {first.name} with --mask "
                             f"{a['mask']}; score both with the same --mask")
        if not first.users.index.equals(other.users.index):
            only_a = len(first.users.index.difference(other.users.index))
            only_b = len(other.users.index.difference(first.users.index))
            raise RaycfError(
                f"{other.name}: its {len(other.users):,} users with a test item are not the {len(first.users):,} of "
                f"{first.name} ({only_a:,} only in {first.name}, {only_b:,} only in {other.name}); score both for "
                "the same users (the same --users file, or none)")
    if len(first.users) < 2:
        raise RaycfError(f"{first.name}: {len(first.users)} user(s) with a test item; a paired comparison needs "
                         "at least 2: score more users")


def shared_metrics(outputs: list[ScoringOutput]) -> list[str]:
    """The metric columns present in every input, in the first input's order (P/R/NDCG/MRR first)."""
    names = [column for column in outputs[0].metric_columns
             if all(column in output.users.columns for output in outputs[1:])]
    for output in outputs:
        for column in names:
            if output.users[column].isna().any():
                raise RaycfError(f"{output.name}: {USER_METRICS_DIR}/ has no {column} for a user with a test item; "
                                 "score the run again with `raycf score`")
    return names


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the i-th smallest p times (m - i + 1), made
    non-decreasing along the sorted order, capped at 1."""
    m = len(p_values)
    adjusted = [0.0] * m
    running = 0.0
    for rank, index in enumerate(sorted(range(m), key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def paired_statistics(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mean of each side, mean difference and its 95% CI, paired t-test, Wilcoxon signed-rank test and
    Cohen's d_z of the differences a - b (before Holm's correction)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    n = len(a)
    sum_a, sum_b = exact_sum(a), exact_sum(b)
    mean_difference = exact_mean(sum_a - sum_b, n)
    differences = a - b
    sd = float(np.std(differences, ddof=1))
    note = None
    if not differences.any():
        t, p_t, w, p_w, dz, half = 0.0, 1.0, 0.0, 1.0, 0.0, 0.0
        note = ALL_ZERO_NOTE
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nearly constant differences: scipy's precision note
            wilcoxon = stats.wilcoxon(differences)
            if sd == 0.0:
                infinite = math.copysign(math.inf, mean_difference)
                t, p_t, dz, half = infinite, 0.0, infinite, 0.0
                note = CONSTANT_NOTE
            else:
                t_test = stats.ttest_rel(a, b)
                t, p_t, dz = float(t_test.statistic), float(t_test.pvalue), float(np.mean(differences)) / sd
                half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1)) * sd / math.sqrt(n)
        w, p_w = float(wilcoxon.statistic), float(wilcoxon.pvalue)
    return {
        "mean_a": exact_mean(sum_a, n),
        "mean_b": exact_mean(sum_b, n),
        "mean_difference": mean_difference,
        "ci95": [mean_difference - half, mean_difference + half],
        "sd_difference": sd,
        "users_differing": int(np.count_nonzero(differences)),
        "t": t,
        "df": n - 1,
        "p_t": p_t,
        "wilcoxon_w": w,
        "p_wilcoxon": p_w,
        "effect_size_dz": dz,
        "note": note,
    }


def input_labels(count: int) -> list[str]:
    """A, B, C, ... (then S27, S28, ... past Z)."""
    return [chr(ord("A") + i) if i < 26 else f"S{i + 1}" for i in range(count)]


def compare_outputs(outputs: list[ScoringOutput]) -> dict[str, Any]:
    """compare.json's content for inputs already checked by `check_comparable`."""
    metrics = shared_metrics(outputs)
    labels = input_labels(len(outputs))
    first = outputs[0]
    pairs: list[dict[str, Any]] = []
    for i, j in itertools.combinations(range(len(outputs)), 2):
        a, b = outputs[i].users, outputs[j].users
        pairs.append({"a": labels[i], "b": labels[j], "a_path": outputs[i].name, "b_path": outputs[j].name,
                      "metrics": {name: paired_statistics(a[name].to_numpy(), b[name].to_numpy())
                                  for name in metrics}})
    tests = [result for pair in pairs for result in pair["metrics"].values()]
    for key in ("p_t", "p_wilcoxon"):
        for result, adjusted in zip(tests, holm([result[key] for result in tests])):
            result[f"{key}_holm"] = adjusted
    for result in tests:
        result["significant_holm_t"] = result["p_t_holm"] <= ALPHA
        result["significant_holm_wilcoxon"] = result["p_wilcoxon_holm"] <= ALPHA
        result["significant_holm"] = result["significant_holm_t"] and result["significant_holm_wilcoxon"]
    return {
        "format": FORMAT,
        "k": first.summary["k"],
        "mask": first.summary["mask"],
        "split_sha256": first.summary["split_sha256"],
        "dataset": first.summary.get("dataset"),
        "users_compared": len(first.users),
        "metrics": metrics,
        "alpha": ALPHA,
        "holm": {"families": ["t", "wilcoxon"], "tests_per_family": len(tests)},
        "wilcoxon": {"zero_method": "wilcox", "alternative": "two-sided"},
        "inputs": [{
            "label": label,
            "path": output.name,
            "uri": output.uri,
            "model": output.summary.get("model"),
            "trial_id": output.summary.get("trial_id"),
            "checkpoint": output.summary.get("checkpoint"),
            "users_evaluated": output.summary.get("users_evaluated"),
            "summary": {name: output.summary[name] for name in metrics if name in output.summary},
        } for label, output in zip(labels, outputs)],
        "pairs": pairs,
    }


def finite_or_none(value: Any) -> Any:
    """compare.json is strict JSON: an infinite t or d_z is written null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_or_none(item) for item in value]
    return value


def metric_label(name: str, k: int) -> str:
    return f"{name}@{k}" if name in METRICS else name


def p_text(p: float) -> str:
    return "0" if p == 0 else f"{p:.3g}" if p >= 1e-4 else f"{p:.1e}"


def markdown(result: dict[str, Any]) -> str:
    """compare.md: the inputs, then one table per pair."""
    k = result["k"]
    lines = [
        "# raycf compare", "",
        (f"Paired over the {result['users_compared']:,} users with a test item in every input (k = {k}, "
         f"--mask {result['mask']}, split `{str(result['split_sha256'])[:12]}`). Two-sided tests; Holm's "
         f"correction over all {result['holm']['tests_per_family']} metric x pair tests, t-tests and Wilcoxon "
         f"signed-rank tests as two families; `*`: significant at {result['alpha']} after Holm by both tests."), "",
        "| | scores | model | trial |", "|---|---|---|---|",
        *(f"| {item['label']} | `{item['path']}` | {item['model']} | {item['trial_id'] or ''} |"
          for item in result["inputs"]),
    ]
    for pair in result["pairs"]:
        a, b = pair["a"], pair["b"]
        lines += ["", f"## {a} vs {b}", "",
                  f"| metric | {a} | {b} | {a} - {b} | 95% CI | t | p (Holm) | Wilcoxon p (Holm) | d_z | |",
                  "|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
        for name, row in pair["metrics"].items():
            low, high = row["ci95"]
            lines.append(
                f"| {metric_label(name, k)} | {row['mean_a']:.4f} | {row['mean_b']:.4f} | "
                f"{row['mean_difference']:+.4f} | [{low:+.4f}, {high:+.4f}] | {row['t']:.2f} | "
                f"{p_text(row['p_t'])} ({p_text(row['p_t_holm'])}) | "
                f"{p_text(row['p_wilcoxon'])} ({p_text(row['p_wilcoxon_holm'])}) | {row['effect_size_dz']:.2f} | "
                f"{'*' if row['significant_holm'] else ''} |")
        notes = sorted({row["note"] for row in pair["metrics"].values() if row["note"]})
        lines += [f"\nNote: {note}." for note in notes]
    return "\n".join(lines) + "\n"


def summary_lines(result: dict[str, Any], out: str) -> list[str]:
    """What `raycf compare` prints: the comparison, one line per pair (NDCG@k), the count of significant
    differences and where the outputs are."""
    k = result["k"]
    tests = [row for pair in result["pairs"] for row in pair["metrics"].values()]
    lines = [(f"compared {len(result['inputs'])} scoring outputs over {result['users_compared']:,} users "
              f"(k={k}, --mask {result['mask']}): {len(result['pairs'])} pair(s) x {len(result['metrics'])} metrics")]
    for item in result["inputs"]:
        lines.append(f"  {item['label']}: {item['path']} ({item['model']})")
    for pair in result["pairs"]:
        row = pair["metrics"]["ndcg"]
        low, high = row["ci95"]
        lines.append(f"  {pair['a']} - {pair['b']}: ndcg@{k} {row['mean_difference']:+.4f} [{low:+.4f}, {high:+.4f}]"
                     f", Holm p: t {p_text(row['p_t_holm'])}, Wilcoxon {p_text(row['p_wilcoxon_holm'])}"
                     f"{', significant' if row['significant_holm'] else ''}")
    significant = sum(row["significant_holm"] for row in tests)
    lines.append(f"significant after Holm (t and Wilcoxon, {result['alpha']}): {significant} of {len(tests)}")
    lines.append(f"compare: {out}/{COMPARE_JSON} and {out}/{COMPARE_MD}")
    return lines


def write_outputs(location: Location, files: dict[str, bytes]) -> None:
    """Stage `files` and commit them into `location` together (RaycfError when it cannot be written)."""
    try:
        PendingOutput.write(location, files)
    except OSError as error:
        raise RaycfError(f"{location.uri}: cannot write the comparison ({str(error).splitlines()[0]}); choose a "
                         "writable, new --out") from None


def run_compare(scores: list[str] | tuple[str, ...], out: str) -> tuple[str, dict[str, Any]]:
    """Compare the `raycf score` outputs `scores` (two or more) and write compare.json and compare.md into
    `out`; returns `out`'s URI and compare.json's content. Every check comes before anything is written."""
    if len(scores) < 2:
        raise RaycfError(f"compare needs at least two SCORES directories, got {len(scores)}; give two or more "
                         "`raycf score` outputs")
    location = Location.of(out, "")
    location.check_access("--out")
    if location.is_used():
        raise RaycfError(f"{out}: output directory exists and is not empty; choose a new --out or remove it")
    outputs = [read_scoring_output(name) for name in scores]
    uris = [output.uri for output in outputs]
    for index, uri in enumerate(uris):
        if uri in uris[:index]:
            raise RaycfError(f"{outputs[index].name}: given twice; compare different scoring outputs")
    check_comparable(outputs)
    result = compare_outputs(outputs)
    document = json.dumps(finite_or_none(result), indent=2, allow_nan=False) + "\n"
    write_outputs(location, {COMPARE_JSON: document.encode(), COMPARE_MD: markdown(result).encode()})
    return location.uri, result
