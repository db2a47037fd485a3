"""Study files: a YAML description of a Ray Tune experiment, validated into a typed `Study`.

Every key except `name`, `data` and `models` is optional, with the default shown::

    name: quickstart            # str, the run's default name (no '/')
    seed: 0                     # int >= 0: seeds the split and the search
    data:                       # exactly one of dataset / ratings
      dataset: synthetic        # ml-1m | ml-100k | synthetic
      ratings: path/to/file     # relative paths are resolved against the study file's directory
      format: auto              # ratings only: auto | movielens | ml-100k | csv | tsv | parquet
      user_col: user_id         # ratings only
      item_col: item_id         # ratings only
      rating_col: null          # ratings only
      min_rating: null          # number: keep ratings >= this (not with dataset: synthetic)
      synthetic: {}             # dataset: synthetic only: generate_synthetic keyword arguments
      time_col: null            # ratings only: the column of each record's time (epoch seconds or ISO dates)
      min_user_items: null      # int >= 1: keep users with at least this many records
      min_item_users: null      # int >= 1: keep items with at least this many users
      k_core: null              # int >= 1: users and items with >= k records, iterated to a fixpoint
      scheme: records           # records | users | time (raycf/data/schemes/)
      heldout_users: null       # users: validation and as many test users, a count >= 1 or a fraction < 0.5
      fold_in: 0.8              # users: share of each held-out user's items given as input, in (0, 1)
      time_cuts: null           # time: [start of validation, start of test], dates or epoch seconds;
                                # null: at the split fractions of the records in time order
      split: [0.6, 0.2, 0.2]    # train, valid, test: three numbers > 0 that sum to 1 (records and time)
    report_metrics: []          # more metrics every trial reports (e.g. [recall@20, recall@50, ndcg@100]);
                                # they decide nothing
    metric: ndcg@5              # name@k, name one of precision | recall | ndcg | mrr | hit_rate | map |
                                # recall_capped (hits / min(k, held-out items): the papers' Recall@k)
                                # (a bare name: k=5);
                                # picks each trial's best epoch, its patience, ASHA and the leaderboard
    mode: max                   # max | min
    scheduler:
      type: asha                # asha | fifo
      max_t: 100                # epochs >= 1: each trial's max_epochs
      grace_period: 10          # >= 1 and <= max_t (default min(10, max_t))
      reduction_factor: 3       # > 1
    resources: {cpus_per_trial: 1, gpus_per_trial: 0}   # numbers, cpus > 0, gpus >= 0
    num_samples: 1              # int >= 1: samples of the random dimensions per grid point (random), or
                                # trials per model (optuna)
    searcher:                   # how configurations are picked (raycf/tune/search.py)
      type: random              # random: Tune's random draws over the grid, seeded | optuna: TPE, one per
                                # model (seeded; no grid dimensions), each model num_samples trials
      n_startup_trials: 5       # optuna only: int >= 1, trials per model sampled at random before TPE
      points_to_evaluate:       # configurations tried first (Tune's points_to_evaluate), per model: each gives
        multvae:                # searched fields only (one left out takes the model's reference value), every
          - {beta: 0.2}         # value inside its search space; random: each is one more grid point (with
                                # num_samples 1 only); optuna: the model's first trials, out of its num_samples
    max_concurrent: null        # int >= 1, or null: no limit
    max_failures: 2             # int >= 0: retries of an errored trial
    checkpoint_every: 10        # int >= 1: a trial also checkpoints every this many epochs (besides each
                                # improvement and its last epoch), so a fault redoes fewer epochs; null: not
    repeat_seeds: []            # distinct ints >= 0: after the study, the best configuration of each
                                # model is trained again on each of these split seeds (repeats.parquet)
    select:                     # robust selection (absent: each model's best trial wins, as searched)
      top: 3                    # int >= 1: the best configurations of each model trained again...
      seeds: [0, 1, 2]          # ...on each of these split seeds; the best MEAN validation metric wins
    tracking:                   # experiment tracking (absent: none; raycf/integrations/mlflow_runs.py)
      mlflow: null              # an MLflow tracking URI: http://HOST:5000, or sqlite:///FILE.db (relative
                                # to the study file): a run per trial, the study's parent run; needs
                                # pip install 'raycf[mlflow]'; `raycf tune --mlflow URI` overrides it
      tensorboard: false        # true: TensorBoard event files in each trial's directory; needs
                                # pip install 'raycf[tensorboard]'
    models:                     # at least one of multvae, autorec, multdae, recvae, pop, ease, itemknn, ials
      multvae:
        fixed: {hidden: 200}    # TrainConfig fields except model, max_epochs (scheduler.max_t), seed (the study's)
        scheduler: {max_t: 300, grace_period: 40}   # optional, the model's own: its trials' epoch limit (and
                                # ASHA's), its ASHA grace period (asha only); each defaults to the study's
        search:                 # TrainConfig fields (as for fixed, and not also fixed), each exactly one of:
          beta: {choice: [0.1, 0.2, 0.3]}
          dropout: {uniform: [0.3, 0.6]}
          lr: {loguniform: [3.0e-4, 3.0e-3]}
          hidden: {randint: [100, 400]}     # low inclusive, high exclusive
          anneal_steps: {grid: [0, 20000]}
          layers: {choice: [[], [600]]}     # a list field: choice or grid of lists (flat "600" in Tune)
          weight_decay: {choice: [0.0, 1.0e-5]}
      autorec:
        fixed: {hidden_activation: sigmoid, output_activation: identity, dropout: 0.0}
        search: {l2: {loguniform: [1.0e-4, 1.0e-1]}}
      pop: {}                   # popularity: no hyperparameters
      ease: {search: {l2: {loguniform: [50.0, 5000.0]}}}
      itemknn: {search: {neighbors: {choice: [50, 100, 200]}, shrink: {uniform: [0.0, 100.0]}}}
      ials: {fixed: {iterations: 15}, search: {factors: {choice: [64, 128]}, l2: {loguniform: [0.01, 10.0]},
                                               alpha: {loguniform: [0.5, 50.0]}}}

The fields: each model's hyperparameters, as its module declares them (its `Params` class; `raycf train --help`
lists them with their help), and patience and eval_every. A field that is not the model's is refused (it would
change nothing), naming the model's own.
Closed-form baselines (pop, ease, itemknn) report once, at epoch 1.

Note that YAML reads `1e-3` as a string: write `1.0e-3`. `load_study` raises every error, as a
one-line RaycfError naming the file and the key path, before anything runs. This module never imports Ray:
raycf.tune.space turns a study's search into Ray Tune's.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raycf.data.datasets import DATASETS
from raycf.data.loaders import FORMATS
from raycf.data.schemes import SCHEMES, scheme_names
from raycf.data.spec import SYNTHETIC, DataSpec
from raycf.data.synthetic import generate_synthetic
from raycf.errors import RaycfError
from raycf.eval.metrics import MODES, Selection
from raycf.models.config import RUN_FIELDS, TrainConfig
from raycf.models.registry import hyperparameter_names, model_class, model_names

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
DEFAULT_CHECKPOINT_EVERY = 10
SCHEDULERS = ("asha", "fifo")
TOP_KEYS = ("name", "seed", "data", "metric", "report_metrics", "mode", "scheduler", "resources", "num_samples",
            "max_concurrent", "max_failures", "checkpoint_every", "repeat_seeds", "models", "searcher",
            "select", "tracking")
TRACKING_KEYS = ("mlflow", "tensorboard")
SEARCHER_OPTIONS = {"random": ("points_to_evaluate",), "optuna": ("n_startup_trials", "points_to_evaluate")}
"""Each searcher type and the keys it takes besides `type`."""
DEFAULT_N_STARTUP_TRIALS = 5
DATA_KEYS = (*(field.name for field in dataclasses.fields(DataSpec)), "split")
"""A study's `data` keys: DataSpec's fields and the split fractions."""
RATINGS_ONLY = ("format", "user_col", "item_col", "rating_col", "time_col")
SCHEDULER_KEYS = ("type", "max_t", "grace_period", "reduction_factor")
RESOURCE_KEYS = ("cpus_per_trial", "gpus_per_trial")
MODEL_KEYS = ("fixed", "search", "scheduler")
MODEL_SCHEDULER_KEYS = ("max_t", "grace_period")
"""What a model may set of ASHA for its own trials."""
NOT_SET_BY_MODEL = {
    "model": "the model is its key under models",
    "max_epochs": "set scheduler.max_t instead",
    "seed": "the study's seed is used: set the top-level seed",
}
RUN_SETTINGS = tuple(name for name in RUN_FIELDS if name not in NOT_SET_BY_MODEL)
"""What a study may set per model besides the model's hyperparameters."""
SYNTHETIC_PARAMS = inspect.signature(generate_synthetic).parameters


@dataclass(frozen=True)
class Dimension:
    """One searched field: `grid`/`choice` over `values`, or `uniform`/`loguniform`/`randint` over (low, high)."""

    kind: str
    values: tuple


@dataclass(frozen=True)
class ModelSearch:
    """A model's fixed TrainConfig fields and searched ones."""

    model: str
    fixed: dict[str, Any]
    search: dict[str, Dimension]
    max_t: int | None = None
    """The model's own epoch limit (its trials' max_epochs and its ASHA's max_t; None: the study's)."""
    grace_period: int | None = None
    """The model's own ASHA grace period (None: the study's)."""

    def base_config(self, max_epochs: int, seed: int) -> TrainConfig:
        """The model's reference settings with the fixed fields (searched fields at their defaults), for
        `max_epochs` (the study's max_t) unless the model sets its own."""
        return TrainConfig.for_model(self.model, **self.fixed, max_epochs=self.max_t or max_epochs, seed=seed)

    def scheduler_overrides(self) -> dict[str, int]:
        """The ASHA settings the model sets for its own trials."""
        return {name: getattr(self, name) for name in MODEL_SCHEDULER_KEYS if getattr(self, name) is not None}


@dataclass(frozen=True)
class Scheduler:
    """The trial scheduler: ASHA early stopping, or FIFO (every trial runs to max_t or its own stop)."""

    type: str
    max_t: int
    grace_period: int
    reduction_factor: float


@dataclass(frozen=True)
class SelectSpec:
    """Robust selection: each model's `top` configurations trained again on every split seed in `seeds`;
    the best mean validation metric wins (raycf/tune/selection.py)."""

    top: int
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class SearcherSpec:
    """How trials' configurations are picked: `random` (Tune's seeded draws over the grid) or `optuna` (TPE
    per model, raycf/tune/search.py)."""

    type: str = "random"
    n_startup_trials: int = DEFAULT_N_STARTUP_TRIALS
    """optuna: trials per model sampled at random before TPE models the results."""
    points_to_evaluate: dict[str, tuple[dict[str, Any], ...]] = field(default_factory=dict)
    """Per model, configurations tried first: every searched field's value (Tune's flat form), in its space."""

    def describe(self) -> dict[str, Any]:
        """The type and the options it uses (study.json); `points_to_evaluate` only when the study seeds."""
        options = {key: getattr(self, key) for key in SEARCHER_OPTIONS[self.type]}
        if self.points_to_evaluate:
            options["points_to_evaluate"] = {model: [dict(point) for point in points]
                                             for model, points in self.points_to_evaluate.items()}
        else:
            options.pop("points_to_evaluate")
        return {"type": self.type, **options}


@dataclass(frozen=True)
class TrackingSpec:
    """Where a study's trials are tracked besides its run directory (raycf/integrations/mlflow_runs.py): an MLflow
    tracking URI, and TensorBoard event files in each trial's directory."""

    mlflow: str | None = None
    tensorboard: bool = False
    mlflow_from: str = field(default="tracking.mlflow", compare=False)
    """Where the URI was given (`FILE: tracking.mlflow`, `--mlflow`), for error messages."""
    tensorboard_from: str = field(default="tracking.tensorboard", compare=False)

    def describe(self) -> dict[str, Any] | None:
        """study.json's `tracking` (None: no tracking)."""
        if self.mlflow is None and not self.tensorboard:
            return None
        return {"mlflow": self.mlflow, "tensorboard": self.tensorboard}


@dataclass(frozen=True)
class Study:
    """A validated study file; `path` is absolute."""

    path: Path
    name: str
    seed: int
    data: DataSpec
    fractions: tuple[float, float, float]
    metric: str
    """The selection metric's label, `ndcg@5`."""
    mode: str
    scheduler: Scheduler
    cpus_per_trial: float
    gpus_per_trial: float
    num_samples: int
    max_concurrent: int | None
    max_failures: int
    models: tuple[ModelSearch, ...]
    repeat_seeds: tuple[int, ...] = ()
    """Split seeds on which the best configuration of each model is trained again after the study."""
    checkpoint_every: int | None = DEFAULT_CHECKPOINT_EVERY
    """Epochs between a trial's regular checkpoints (None: only at improvements and at its end)."""
    searcher: SearcherSpec = SearcherSpec()
    select: SelectSpec | None = None
    """Robust selection after the search (None: each model's best trial wins)."""
    report_metrics: tuple[str, ...] = ()
    """Labels of the metrics every trial reports besides P/R/NDCG/MRR@5 and the study metric."""
    tracking: TrackingSpec = TrackingSpec()
    """MLflow and TensorBoard tracking of the trials (none by default)."""

    @property
    def selection(self) -> Selection:
        """What "best" means in this study (metric at k, mode), and the metrics reported besides."""
        return Selection.parse(self.metric, self.mode, ",".join(self.report_metrics))


class _DuplicateKey(Exception):
    """A key given twice: its key path, its line and the line of its first occurrence."""

    def __init__(self, path: str, line: int, first: int) -> None:
        super().__init__(path)
        self.path, self.line, self.first = path, line, first


class _UnsafeTag(Exception):
    """A YAML tag that the safe loader does not construct (e.g. !!python/object/apply), and its line."""

    def __init__(self, tag: str, line: int) -> None:
        super().__init__(tag)
        self.tag, self.line = tag.replace("tag:yaml.org,2002:", "!!"), line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping, and names any tag it does not construct."""

    def construct_document(self, node: yaml.Node) -> Any:
        _refuse_duplicates(node, "", set())
        return super().construct_document(node)

    def construct_undefined(self, node: yaml.Node) -> Any:
        raise _UnsafeTag(node.tag, node.start_mark.line + 1)


_StrictLoader.add_constructor(None, _StrictLoader.construct_undefined)


def _refuse_duplicates(node: yaml.Node, path: str, seen: set[int]) -> None:
    """Raise _DuplicateKey for the first mapping (depth first) with a repeated scalar key."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _refuse_duplicates(item, f"{path}[{index}]", seen)
    elif isinstance(node, yaml.MappingNode):
        lines: dict[tuple[str, str], int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue
            child = f"{path}.{_key_text(key.value)}" if path else _key_text(key.value)
            line = key.start_mark.line + 1
            if (key.tag, key.value) in lines:
                raise _DuplicateKey(child, line, lines[key.tag, key.value])
            lines[key.tag, key.value] = line
            _refuse_duplicates(value, child, seen)


def _key_text(key: object) -> str:
    """A key as it reads in a key path, on one line."""
    return key if isinstance(key, str) and key.isprintable() else repr(key)


@dataclass(frozen=True)
class _At:
    """A place in a study file, for error messages: `file: key.path`."""

    file: str
    path: str = ""

    def __truediv__(self, key: object) -> _At:
        return _At(self.file, f"{self.path}.{_key_text(key)}" if self.path else _key_text(key))

    def __getitem__(self, index: int) -> _At:
        return _At(self.file, f"{self.path}[{index}]")

    def error(self, message: str) -> RaycfError:
        return RaycfError(f"{self.file}: {self.path}: {message}" if self.path else f"{self.file}: {message}")


def _hint(value: Any) -> str:
    """Advice for a string such as `1e-3`, which YAML 1.1 does not read as a number; else ''."""
    if not isinstance(value, str) or "e" not in value.lower():
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return f" (YAML reads {value} as a string: write a dot and a signed exponent, e.g. 1.0e-3)"


def _dict(value: Any, at: _At, of: str) -> dict[Any, Any]:
    """`value` as a dict; None (an empty YAML entry) is an empty one."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise at.error(f"must be a mapping of {of}, got {value!r}")
    return value


def _mapping(value: Any, at: _At, keys: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """`value` as a dict with only `keys` and all of `required`; None is empty unless keys are required."""
    if value is None and required:
        raise at.error(f"must be a mapping with keys {', '.join(keys)}, got nothing")
    value = _dict(value, at, f"keys {', '.join(keys)}")
    where = f" in {at.path}" if at.path else ""
    for key in value:
        if key not in keys:
            raise (at / key).error(f"unknown key; allowed{where}: {', '.join(keys)}")
    for key in required:
        if key not in value:
            raise (at / key).error("missing; it is required")
    return value


def _int(value: Any, at: _At, low: int) -> int:
    """An int (not a bool) >= low."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise at.error(f"must be an integer >= {low}, got {value!r}{_hint(value)}")
    if value < low:
        raise at.error(f"must be >= {low}, got {value}")
    return value


def _number(value: Any, at: _At) -> float:
    """A finite int or float (not a bool), as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise at.error(f"must be a finite number, got {value!r}{_hint(value)}")
    return float(value)


def _one_of(value: Any, at: _At, options: tuple[str, ...]) -> str:
    """One of the option strings."""
    if value not in options or not isinstance(value, str):
        raise at.error(f"must be one of {', '.join(options)}, got {value!r}")
    return value


def _text(value: Any, at: _At) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise at.error(f"must be a non-empty string, got {value!r}")
    return value


def _read(path: Path, file: str) -> dict[str, Any]:
    """The file's YAML mapping, duplicate keys refused."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise RaycfError(f"{file}: no such study file; check the path (e.g. studies/quickstart.yaml)") from None
    except OSError as error:
        raise RaycfError(f"{file}: cannot read the study file: {error.strerror or error}") from None
    try:
        loader = _StrictLoader(raw)
        try:
            document = loader.get_single_data()
        finally:
            loader.dispose()
    except _DuplicateKey as dup:
        raise RaycfError(
            f"{file}: {dup.path}: duplicate key on line {dup.line} (first on line {dup.first}); give each key once"
        ) from None
    except _UnsafeTag as tag:
        raise RaycfError(
            f"{file}: line {tag.line}: YAML tag {tag.tag} is not allowed; a study file holds plain mappings, lists,"
            " strings and numbers: remove the tag"
        ) from None
    except yaml.reader.ReaderError as error:
        raise RaycfError(f"{file}: invalid YAML: {error.reason} at character {error.position}") from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        context = f" ({error.context} on line {error.context_mark.line + 1})" if error.context_mark else ""
        problem = " ".join(f"{error.problem or error.context}{context}".split())
        raise RaycfError(f"{file}: {where}invalid YAML: {problem}") from None
    if not isinstance(document, dict):
        got = "an empty file" if document is None else f"a {type(document).__name__}"
        raise RaycfError(f"{file}: a study file must be a mapping with keys name, data and models, got {got}")
    return document


def _data(value: Any, at: _At, directory: Path, check_ratings: bool) -> tuple[DataSpec, tuple[float, float, float]]:
    """The data source (a ratings path made absolute against `directory`) and the split fractions."""
    data = _mapping(value, at, DATA_KEYS)
    if ("dataset" in data) == ("ratings" in data):
        raise at.error("give exactly one of dataset (ml-1m, ml-100k, synthetic) or ratings (a file path)")
    spec: dict[str, Any] = {}
    if "dataset" in data:
        spec["dataset"] = _one_of(data["dataset"], at / "dataset", (*DATASETS, SYNTHETIC))
        for key in RATINGS_ONLY:
            if key in data:
                raise (at / key).error("applies to a ratings file only; drop it or use ratings")
    else:
        ratings = (directory / Path(_text(data["ratings"], at / "ratings")).expanduser()).resolve()
        if check_ratings and not ratings.exists():
            raise (at / "ratings").error(
                f"missing data: no file {ratings}; fix data.ratings (relative to the study file) "
                "or pass --ratings PATH"
            )
        spec.update(dataset=None, ratings=str(ratings))
        spec["format"] = _one_of(data.get("format", "auto"), at / "format", ("auto", *FORMATS))
        for key in ("user_col", "item_col"):
            if key in data:
                spec[key] = _text(data[key], at / key)
        for key in ("rating_col", "time_col"):
            if data.get(key) is not None:
                spec[key] = _text(data[key], at / key)
    if data.get("min_rating") is not None:
        if spec["dataset"] == SYNTHETIC:
            raise (at / "min_rating").error("synthetic data has no ratings; drop min_rating")
        spec["min_rating"] = _number(data["min_rating"], at / "min_rating")
    if "synthetic" in data:
        if spec["dataset"] != SYNTHETIC:
            raise (at / "synthetic").error("applies to dataset: synthetic only")
        spec["synthetic"] = _synthetic(data["synthetic"], at / "synthetic")
    for key in ("min_user_items", "min_item_users", "k_core"):
        if data.get(key) is not None:
            spec[key] = _int(data[key], at / key, 1)
    spec.update(_scheme(data, at))
    return DataSpec(**spec), _fractions(data.get("split", [0.6, 0.2, 0.2]), at / "split")


def _scheme(data: dict[str, Any], at: _At) -> dict[str, Any]:
    """The split scheme and its own keys (heldout_users and fold_in: users; time_cuts: time)."""
    scheme = _one_of(data.get("scheme", "records"), at / "scheme", scheme_names())
    owners = {key: name for name, scheme_type in SCHEMES.items() for key in scheme_type.spec_fields}
    for key, owner in owners.items():
        if key in data and owner != scheme:
            raise (at / key).error(f"applies to scheme {owner} only; drop it or set data.scheme")
    spec: dict[str, Any] = {"scheme": scheme}
    if scheme == "users":
        if data.get("heldout_users") is None:
            raise (at / "heldout_users").error("scheme users needs it: a count of users (e.g. 600) or a fraction")
        spec["heldout_users"] = _positive(data["heldout_users"], at / "heldout_users")
        fold_in = _number(data.get("fold_in", 0.8), at / "fold_in")
        if not 0 < fold_in < 1:
            raise (at / "fold_in").error(f"must be in (0, 1), got {fold_in!r}; e.g. 0.8")
        spec["fold_in"] = fold_in
    if data.get("time_cuts") is not None:
        cuts = data["time_cuts"]
        if not isinstance(cuts, list) or len(cuts) != 2:
            raise (at / "time_cuts").error(f"must be two dates or epoch seconds, e.g. [2002-01-01, 2002-07-01], "
                                           f"got {cuts!r}")
        spec["time_cuts"] = tuple(str(cut) for cut in cuts)
    return spec


def _synthetic(value: Any, at: _At) -> dict[str, Any]:
    """generate_synthetic keyword arguments, typed as its defaults (ints, or numbers for floats), all >= 0."""
    kwargs = _mapping(value, at, tuple(SYNTHETIC_PARAMS))
    for key, arg in kwargs.items():
        if isinstance(SYNTHETIC_PARAMS[key].default, int):
            _int(arg, at / key, 0)
        else:
            _non_negative(arg, at / key)
    return dict(kwargs)


def _fractions(value: Any, at: _At) -> tuple[float, float, float]:
    """Three numbers > 0 that sum to 1."""
    if not isinstance(value, list) or len(value) != 3:
        raise at.error(f"must be three numbers (train, valid, test), e.g. [0.6, 0.2, 0.2], got {value!r}")
    shares = tuple(_number(share, at[i]) for i, share in enumerate(value))
    if min(shares) <= 0 or abs(sum(shares) - 1) > 1e-6:
        raise at.error(f"must be three numbers > 0 that sum to 1, got {value!r}")
    return shares  # type: ignore[return-value]


def _scheduler(value: Any, at: _At) -> Scheduler:
    """The scheduler; grace_period defaults to min(10, max_t)."""
    raw = _mapping(value, at, SCHEDULER_KEYS)
    max_t = _int(raw.get("max_t", 100), at / "max_t", 1)
    grace = _int(raw.get("grace_period", min(10, max_t)), at / "grace_period", 1)
    if grace > max_t:
        raise (at / "grace_period").error(f"must be <= scheduler.max_t ({max_t}), got {grace}")
    factor = _number(raw.get("reduction_factor", 3), at / "reduction_factor")
    if factor <= 1:
        raise (at / "reduction_factor").error(f"must be > 1, got {raw['reduction_factor']}")
    return Scheduler(_one_of(raw.get("type", "asha"), at / "type", SCHEDULERS), max_t, grace, factor)


def _positive(value: Any, at: _At) -> float:
    """A finite number > 0."""
    if _number(value, at) <= 0:
        raise at.error(f"must be > 0, got {value}")
    return float(value)


def _non_negative(value: Any, at: _At) -> float:
    """A finite number >= 0."""
    if _number(value, at) < 0:
        raise at.error(f"must be >= 0, got {value}")
    return float(value)


def _resources(value: Any, at: _At) -> tuple[float, float]:
    """cpus_per_trial > 0 and gpus_per_trial >= 0."""
    raw = _mapping(value, at, RESOURCE_KEYS)
    return (_positive(raw.get("cpus_per_trial", 1), at / "cpus_per_trial"),
            _non_negative(raw.get("gpus_per_trial", 0), at / "gpus_per_trial"))


def _field_name(key: Any, at: _At, model: str) -> str:
    """A field that a study may set for `model`: one of its hyperparameters, or a run setting."""
    if key in NOT_SET_BY_MODEL:
        raise at.error(f"not allowed here: {NOT_SET_BY_MODEL[key]}")
    hyperparameters = model_class(model).Params.names()
    if key in (*hyperparameters, *RUN_SETTINGS):
        return key
    takes = ", ".join(hyperparameters) or "no hyperparameters"
    if key in hyperparameter_names():
        raise at.error(f"{key} is not a hyperparameter of {model} ({model} takes {takes}); remove it")
    raise at.error(f"unknown TrainConfig field; allowed: {', '.join((*hyperparameters, *RUN_SETTINGS))}")


def _field_value(base: dict[str, Any], name: str, value: Any, at: _At) -> Any:
    """`value` checked (type and range) as field `name` over a valid config, ints made floats for float fields,
    in the flat form that Tune's config holds (`layers` [600, 200] as "600,200", [] as "")."""
    if isinstance(value, float) and not math.isfinite(value):
        raise at.error(f"must be a finite number, got {value!r}")
    try:
        config = TrainConfig.from_dict({**base, name: value}, where=f"{at.file}: {at.path}", joint=False)
    except RaycfError as error:
        raise RaycfError(f"{error}{_hint(value) if not isinstance(base[name], str) else ''}") from None
    return config.to_dict(flat=True)[name]


def _dimension(value: Any, base: dict[str, Any], name: str, at: _At) -> Dimension:
    """One search entry `{kind: values}`, its values checked as field `name` (both bounds of a range)."""
    example = "e.g. {choice: [a, b]}, {grid: [a, b]}, {uniform: [low, high]}"
    if not isinstance(value, dict) or len(value) != 1:
        raise at.error(f"must be a mapping with exactly one of {', '.join(KINDS)}, {example}; got {value!r}")
    ((kind, values),) = value.items()
    where = at / kind
    if kind not in KINDS:
        raise where.error(f"unknown search kind; use one of {', '.join(KINDS)}")
    if not isinstance(values, list) or not values:
        raise where.error(f"must be a non-empty list of values, got {values!r}")
    if kind in ("grid", "choice"):
        return Dimension(kind, tuple(_field_value(base, name, v, where[i]) for i, v in enumerate(values)))
    wanted = int if kind == "randint" else float
    if not isinstance(base[name], wanted):
        raise where.error(f"samples {wanted.__name__}s, but {name} is {type(base[name]).__name__}; use choice or grid")
    if len(values) != 2:
        raise where.error(f"must be exactly two numbers [low, high], got {values!r}")
    if kind == "randint" and not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise where.error(f"must be two integers [low, high), got {values!r}")
    low, high = (_number(v, where[i]) for i, v in enumerate(values))
    if low >= high:
        raise where.error(f"low must be < high, got {values!r}")
    if kind == "loguniform" and low <= 0:
        raise where.error(f"low must be > 0, got {values[0]!r}")
    last = values[1] - 1 if kind == "randint" else values[1]  # randint excludes high
    _field_value(base, name, values[0], where[0])
    _field_value(base, name, last, where[1])
    return Dimension(kind, tuple(values) if kind == "randint" else (low, high))


def _model(model: Any, value: Any, at: _At, scheduler: Scheduler, seed: int) -> ModelSearch:
    """One entry of `models`, checked as TrainConfig fields over the model's reference settings."""
    if model not in model_names():
        raise at.error(f"unknown model; choose from {', '.join(model_names())}")
    raw = _mapping(value, at, MODEL_KEYS)
    fixed_at, search_at = at / "fixed", at / "search"
    max_t, grace_period = _model_scheduler(raw.get("scheduler"), at / "scheduler", scheduler)
    max_epochs = max_t or scheduler.max_t
    base = TrainConfig.for_model(model, max_epochs=max_epochs, seed=seed).to_dict()
    fixed = {
        key: _field_value(base, _field_name(key, fixed_at / key, model), v, fixed_at / key)
        for key, v in _dict(raw.get("fixed"), fixed_at, "TrainConfig fields and values").items()
    }
    search: dict[str, Dimension] = {}
    for key, v in _dict(raw.get("search"), search_at, "TrainConfig fields and search kinds").items():
        if _field_name(key, search_at / key, model) in fixed:
            raise (search_at / key).error(f"also set in {fixed_at.path}; a field is either fixed or searched")
        search[key] = _dimension(v, base, key, search_at / key)
    samples = {name: dim.values[0] for name, dim in search.items()}
    try:
        TrainConfig.for_model(model, **fixed, **samples, max_epochs=max_epochs, seed=seed)
    except RaycfError as error:
        raise at.error(str(error)) from None
    return ModelSearch(model, fixed, search, max_t, grace_period)


def _model_scheduler(value: Any, at: _At, scheduler: Scheduler) -> tuple[int | None, int | None]:
    """A model's own `{max_t, grace_period}` (each optional; grace_period with ASHA only), the grace period that
    applies to it no longer than its max_t."""
    raw = _mapping(value, at, MODEL_SCHEDULER_KEYS)
    max_t = None if raw.get("max_t") is None else _int(raw["max_t"], at / "max_t", 1)
    grace = None if raw.get("grace_period") is None else _int(raw["grace_period"], at / "grace_period", 1)
    if grace is not None and scheduler.type != "asha":
        raise (at / "grace_period").error(f"applies to scheduler type asha only (this study's is {scheduler.type}); "
                                          "drop it")
    limit = max_t or scheduler.max_t
    if scheduler.type == "asha" and (grace or scheduler.grace_period) > limit:
        where, given = (at / "grace_period", grace) if grace is not None else (at / "max_t", max_t)
        raise where.error(f"grace period {grace or scheduler.grace_period} exceeds the model's max_t {limit} (got "
                          f"{given}); give a grace_period <= max_t")
    return max_t, grace


def _models(value: Any, at: _At, scheduler: Scheduler, seed: int) -> tuple[ModelSearch, ...]:
    models = _dict(value, at, f"models ({', '.join(model_names())})")
    if not models:
        raise at.error(f"must name at least one model of {', '.join(model_names())}")
    return tuple(_model(model, v, at / model, scheduler, seed) for model, v in models.items())


def load_study(path: str | Path, *, check_ratings: bool = True) -> Study:
    """Read and validate a study file; every problem is a one-line RaycfError naming the file and key.

    `check_ratings=False` skips the existence check of `data.ratings`, for a caller that replaces the data.
    """
    file = str(path)
    path = Path(path).expanduser().resolve()
    at = _At(file)
    raw = _mapping(_read(path, file), at, TOP_KEYS, required=("name", "data", "models"))
    name = _text(raw["name"], at / "name")
    if not name.isprintable() or "/" in name or "\\" in name:
        raise (at / "name").error(f"must be one line without a path separator, got {name!r}")
    seed = _int(raw.get("seed", 0), at / "seed", 0)
    data, fractions = _data(raw["data"], at / "data", path.parent, check_ratings)
    scheduler = _scheduler(raw.get("scheduler"), at / "scheduler")
    cpus, gpus = _resources(raw.get("resources"), at / "resources")
    max_concurrent = raw.get("max_concurrent")
    checkpoint_every = raw.get("checkpoint_every", DEFAULT_CHECKPOINT_EVERY)
    models = _models(raw["models"], at / "models", scheduler, seed)
    num_samples = _int(raw.get("num_samples", 1), at / "num_samples", 1)
    return Study(
        path=path,
        name=name,
        seed=seed,
        data=data,
        fractions=fractions,
        metric=_metric(raw.get("metric", "ndcg"), at / "metric"),
        mode=_one_of(raw.get("mode", "max"), at / "mode", MODES),
        scheduler=scheduler,
        cpus_per_trial=cpus,
        gpus_per_trial=gpus,
        num_samples=num_samples,
        max_concurrent=None if max_concurrent is None else _int(max_concurrent, at / "max_concurrent", 1),
        max_failures=_int(raw.get("max_failures", 2), at / "max_failures", 0),
        checkpoint_every=None if checkpoint_every is None else _int(checkpoint_every, at / "checkpoint_every", 1),
        models=models,
        repeat_seeds=_seeds(raw.get("repeat_seeds", []), at / "repeat_seeds"),
        searcher=_searcher(raw.get("searcher"), at / "searcher", raw["models"], at / "models", models, num_samples),
        select=None if raw.get("select") is None else _select(raw["select"], at / "select"),
        report_metrics=_report_metrics(raw.get("report_metrics", []), at / "report_metrics"),
        tracking=_tracking(raw.get("tracking"), at / "tracking", path.parent),
    )


def _metric(value: Any, at: _At) -> str:
    """`ndcg`, `recall@20` -> its canonical label (`ndcg@5`, `recall@20`)."""
    try:
        return Selection.parse(value).label
    except ValueError as error:
        raise at.error(str(error)) from None


def _report_metrics(value: Any, at: _At) -> tuple[str, ...]:
    """A list of metrics (`[recall@20, ndcg@100]`) -> their labels."""
    if not isinstance(value, list):
        raise at.error(f"must be a list of metrics like [recall@20, ndcg@100], got {value!r}")
    return tuple(dict.fromkeys(_metric(metric, at[i]) for i, metric in enumerate(value)))


def _searcher(value: Any, at: _At, models: dict[str, Any], models_at: _At, searches: tuple[ModelSearch, ...],
              num_samples: int) -> SearcherSpec:
    """The searcher and its options; with optuna, no grid dimension (`models` as read, already checked, and
    `searches` as validated)."""
    raw = _dict(value, at, "keys type, n_startup_trials, points_to_evaluate")
    kind = _one_of(raw.get("type", "random"), at / "type", tuple(SEARCHER_OPTIONS))
    for key in raw:
        if key != "type" and key not in SEARCHER_OPTIONS[kind]:
            others = [other for other, options in SEARCHER_OPTIONS.items() if key in options]
            raise (at / key).error(f"applies to searcher type {others[0]} only" if others else
                                   f"unknown key; allowed in searcher: {', '.join(('type', *SEARCHER_OPTIONS[kind]))}")
    points = _points(raw.get("points_to_evaluate"), at / "points_to_evaluate", searches)
    if points and kind == "random" and num_samples > 1:
        raise (at / "points_to_evaluate").error(
            f"with searcher type random each seeded configuration is one more grid point, run num_samples "
            f"({num_samples}) times alike: set num_samples 1, or use searcher type optuna")
    spec = SearcherSpec(kind, points_to_evaluate=points)
    if kind == "optuna":
        spec = SearcherSpec(kind, _int(raw.get("n_startup_trials", DEFAULT_N_STARTUP_TRIALS),
                                       at / "n_startup_trials", 1), points)
        for model, entry in models.items():
            for name, dimension in ((entry or {}).get("search") or {}).items():
                if "grid" in dimension:
                    raise (models_at / model / "search" / name).error(
                        "grid is not searched with searcher type optuna (TPE samples every value): use choice, "
                        "or searcher type random")
    return spec


def _points(value: Any, at: _At, searches: tuple[ModelSearch, ...]) -> dict[str, tuple[dict[str, Any], ...]]:
    """`{model: [{field: value, ...}, ...]}`: per model, configurations the searcher tries first. Each gives
    searched fields only; one it leaves out takes its reference value (the model's default); every value must lie
    in its field's search space."""
    by_model = {search.model: search for search in searches}
    points: dict[str, tuple[dict[str, Any], ...]] = {}
    for model, entries in _dict(value, at, "models and lists of configurations").items():
        if model not in by_model:
            raise (at / model).error(f"not a model of this study; seed one of {', '.join(by_model)}")
        if not by_model[model].search:
            raise (at / model).error(f"{model} searches no field: there is nothing to seed; drop it")
        if not isinstance(entries, list) or not entries:
            raise (at / model).error(f"must be a non-empty list of configurations like [{{beta: 0.2}}], got "
                                     f"{entries!r}")
        points[model] = tuple(_point(entry, at / model, i, by_model[model]) for i, entry in enumerate(entries))
    return points


def _point(value: Any, at: _At, index: int, search: ModelSearch) -> dict[str, Any]:
    """One seeded configuration of `search`'s model: every searched field's value, in its space (flat form)."""
    where = at[index]
    given = _dict(value, where, "searched fields and values")
    base = search.base_config(1, 0)
    for key in given:
        name = _field_name(key, where / key, search.model)
        if name in search.fixed:
            raise (where / key).error(f"is fixed in models.{search.model}.fixed; a seeded configuration gives "
                                      "searched fields only")
        if name not in search.search:
            raise (where / key).error(f"is not searched for {search.model} (searched: "
                                      f"{', '.join(search.search) or 'nothing'}); drop it or search it")
    point = {}
    for name, dimension in search.search.items():
        flat = (_field_value(base.to_dict(), name, given[name], where / name) if name in given
                else base.to_dict(flat=True)[name])
        if not _inside(dimension, flat):
            what = f"{flat!r} is" if name in given else f"not given; its reference value {flat!r} is"
            raise (where / name).error(f"{what} outside the searched space {{{dimension.kind}: "
                                       f"{list(dimension.values)}}}; give a value in it (or widen the search)")
        point[name] = flat
    try:
        TrainConfig.for_model(search.model, **search.fixed, **point)
    except RaycfError as error:
        raise where.error(str(error)) from None
    return point


def _inside(dimension: Dimension, value: Any) -> bool:
    """Whether `value` (flat form) is one a search dimension can give."""
    if dimension.kind in ("grid", "choice"):
        return value in dimension.values
    low, high = dimension.values
    return low <= value < high if dimension.kind == "randint" else low <= value <= high


def _tracking(value: Any, at: _At, directory: Path) -> TrackingSpec:
    """`{mlflow: URI, tensorboard: bool}`, both optional."""
    raw = _mapping(value, at, TRACKING_KEYS)
    tensorboard = raw.get("tensorboard", False)
    if not isinstance(tensorboard, bool):
        raise (at / "tensorboard").error(f"must be true or false, got {tensorboard!r}")
    mlflow = None if raw.get("mlflow") is None else _tracking_uri(raw["mlflow"], at / "mlflow", directory)
    where = f"{at.file}: {at.path}"
    return TrackingSpec(mlflow, tensorboard, mlflow_from=f"{where}.mlflow", tensorboard_from=f"{where}.tensorboard")


def _tracking_uri(value: Any, at: _At, directory: Path) -> str:
    """An MLflow tracking URI (`scheme:...`; a relative `sqlite:///FILE` made absolute against `directory`), or a
    directory path made absolute against `directory`."""
    if not isinstance(value, str) or not value.strip() or any(char.isspace() for char in value):
        raise at.error(f"must be an MLflow tracking URI such as http://127.0.0.1:5000 or sqlite:///mlflow.db, "
                       f"got {value!r}")
    if value.startswith("sqlite:///") and not value.startswith("sqlite:////"):  # a relative database file
        return f"sqlite:///{(directory / value[len('sqlite:///'):]).resolve()}"
    if ":" in value.split("/", 1)[0] or value == "databricks":  # http://, https://, file:, ...
        return value
    return str((directory / Path(value).expanduser()).resolve())


def _select(value: Any, at: _At) -> SelectSpec:
    """`{top: N, seeds: [...]}`, both required."""
    raw = _mapping(value, at, ("top", "seeds"), required=("top", "seeds"))
    seeds = _seeds(raw["seeds"], at / "seeds")
    if not seeds:
        raise (at / "seeds").error("must list at least one split seed, e.g. [0, 1, 2]")
    return SelectSpec(top=_int(raw["top"], at / "top", 1), seeds=seeds)


def _seeds(value: Any, at: _At) -> tuple[int, ...]:
    """A list of distinct seeds >= 0."""
    if not isinstance(value, list):
        raise at.error(f"must be a list of seeds like [0, 1, 2], got {value!r}")
    seeds = tuple(_int(seed, at, 0) for seed in value)
    if len(set(seeds)) != len(seeds):
        raise at.error(f"seeds must be distinct, got {list(seeds)}")
    return seeds


def apply_overrides(
    study: Study,
    *,
    dataset: str | None = None,
    ratings: str | Path | None = None,
    seed: int | None = None,
    num_samples: int | None = None,
    max_concurrent: int | None = None,
    max_failures: int | None = None,
    cpus_per_trial: float | None = None,
    gpus_per_trial: float | None = None,
    repeat_seeds: list[int] | None = None,
    mlflow: str | None = None,
) -> Study:
    """`study` with the command line's choices (None: keep the study's); the data's reading options are kept."""
    if dataset is not None and ratings is not None:
        raise RaycfError("--dataset and --ratings exclude each other: give one")
    data = study.data
    if dataset is not None:
        data = dataclasses.replace(data, dataset=_one_of(dataset, _At("--dataset"), (*DATASETS, SYNTHETIC)),
                                   ratings=None)
    if ratings is not None:
        path = Path(ratings).expanduser().resolve()
        if not path.exists():
            raise RaycfError(f"--ratings: missing data: no file {path}; pass an existing --ratings PATH")
        data = dataclasses.replace(data, dataset=None, ratings=str(path), synthetic={})
    counts = {"seed": (seed, 0), "num_samples": (num_samples, 1), "max_concurrent": (max_concurrent, 1),
              "max_failures": (max_failures, 0)}
    given: dict[str, Any] = {
        key: _int(value, _At(f"--{key.replace('_', '-')}"), low) for key, (value, low) in counts.items()
        if value is not None
    }
    if cpus_per_trial is not None:
        given["cpus_per_trial"] = _positive(cpus_per_trial, _At("--cpus-per-trial"))
    if gpus_per_trial is not None:
        given["gpus_per_trial"] = _non_negative(gpus_per_trial, _At("--gpus-per-trial"))
    if repeat_seeds is not None:
        given["repeat_seeds"] = _seeds(list(repeat_seeds), _At("--repeat-seeds"))
    if mlflow is not None:
        given["tracking"] = dataclasses.replace(study.tracking, mlflow_from="--mlflow",
                                                mlflow=_tracking_uri(mlflow, _At("--mlflow"), Path.cwd()))
    return dataclasses.replace(study, data=data, **given)
