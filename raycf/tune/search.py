"""How a study picks its trials' configurations: the study key `searcher`.

`random` (the default): Tune's BasicVariantGenerator over the study's space (raycf.tune.space), seeded with the study
seed: every grid point, `num_samples` random draws of the other dimensions each. The study's seeded configurations
(searcher.points_to_evaluate) are grid points of their own, run first.

`optuna`: one Optuna TPE searcher (Ray Tune's `OptunaSearch`) per model, seeded with the study seed, each
with its own budget of `num_samples` trials. `PerModelOptuna` hands out one configuration of each model
in turn (the model with the fewest trials so far, study order breaking ties) until every model's budget
is used, and tells each model's TPE only of its own trials, so a model is never judged against another
one's scores (as ASHA in raycf/tune/asha.py keeps one bracket per model). Every trial's config is
`{"trial": <a complete TrainConfig dict>}`, as with `random`. A model's seeded configurations go to its TPE as
Tune's `points_to_evaluate`: they are its first trials, out of its `num_samples`, and TPE learns from them.

TPE learns from each trial's best validation score (`best_valid_ndcg`, what the leaderboard ranks), not
from its last epoch's. Tune saves the searcher's state with the experiment (`Searcher.save`), and
`Tuner.restore` (`raycf tune --resume`) restores it, so a resumed study goes on with the suggestions the
interrupted one would have made next.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from typing import Any, NamedTuple

from ray.tune.search import BasicVariantGenerator, Searcher
from ray.tune.search.optuna import OptunaSearch

from raycf.study.schema import Study
from raycf.tune.space import model_space, study_space


class SearchSetup(NamedTuple):
    """What the Tuner gets for a study's searcher."""

    param_space: dict[str, Any] | None
    search_alg: Any
    num_samples: int
    """Tune's total: per grid point with `random`, all trials of all models with `optuna`."""
    max_concurrent_trials: int | None
    """For TuneConfig: a Searcher is wrapped in a ConcurrencyLimiter from it; BasicVariantGenerator limits
    itself (Tune ignores max_concurrent_trials for it)."""


def search_setup(study: Study) -> SearchSetup:
    """The study's search algorithm and the Tuner settings that go with it."""
    if study.searcher.type == "random":
        generator = BasicVariantGenerator(random_state=study.seed, max_concurrent=study.max_concurrent or 0)
        return SearchSetup(study_space(study), generator, study.num_samples, None)
    spaces = {m.model: model_space(m, study.scheduler.max_t, study.seed) for m in study.models}
    searcher = PerModelOptuna(
        spaces,
        points=study.searcher.points_to_evaluate,
        samples=study.num_samples,
        metric=f"best_{study.selection.key}",
        mode=study.mode,
        seed=study.seed,
        n_startup_trials=study.searcher.n_startup_trials,
    )
    # The configurations come whole from the searcher: a param_space would be merged into them.
    return SearchSetup(None, searcher, study.num_samples * len(spaces), study.max_concurrent)


def planned_trials(study: Study) -> int:
    """How many trials the study runs: `num_samples` per grid point of each model (`random`), or per model."""
    if study.searcher.type != "random":
        return study.num_samples * len(study.models)
    return study.num_samples * sum(math.prod(len(dimension.values) for dimension in search.search.values()
                                             if dimension.kind == "grid") for search in study.models)


class PerModelOptuna(Searcher):
    """One OptunaSearch (TPE) per model, `samples` trials each; suggestions are `{"trial": config}`.

    `spaces[model]` is a complete TrainConfig dict whose searched fields are Tune domains (choice, uniform,
    loguniform, randint; `raycf.tune.space.model_space`); the other fields are copied into every suggestion.
    `metric` is the reported key TPE minimises or maximises (each trial's last value of it). `points[model]`:
    configurations of the model's searched fields tried first (its TPE's `points_to_evaluate`).
    """

    def __init__(
        self,
        spaces: Mapping[str, Mapping[str, Any]],
        *,
        points: Mapping[str, tuple[dict[str, Any], ...]] | None = None,
        samples: int,
        metric: str,
        mode: str,
        seed: int,
        n_startup_trials: int,
    ) -> None:
        import optuna

        super().__init__(metric=metric, mode=mode)
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per created study or trial
        self.samples = samples
        self._fixed: dict[str, dict[str, Any]] = {}
        self._searchers: dict[str, OptunaSearch | None] = {}
        for model, space in spaces.items():
            distributions = OptunaSearch.convert_search_space(dict(space))
            self._fixed[model] = {name: value for name, value in space.items() if name not in distributions}
            self._searchers[model] = None if not distributions else OptunaSearch(
                distributions,
                metric=metric,
                mode=mode,
                points_to_evaluate=[dict(point) for point in (points or {}).get(model, ())] or None,
                sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials),
            )
        self._handed_out = dict.fromkeys(spaces, 0)
        self._trial_models: dict[str, str] = {}
        """The model of every trial handed out and not yet complete."""

    @property
    def handed_out(self) -> dict[str, int]:
        """Trials suggested so far, per model."""
        return dict(self._handed_out)

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        remaining = [model for model, count in self._handed_out.items() if count < self.samples]
        if not remaining:
            return Searcher.FINISHED  # type: ignore[return-value]  # Tune's end-of-search signal, a str
        model = min(remaining, key=self._handed_out.__getitem__)
        searcher = self._searchers[model]
        sampled = searcher.suggest(trial_id) if searcher is not None else {}
        if sampled is None:  # nothing to suggest for now: Tune asks again
            return None
        self._handed_out[model] += 1
        self._trial_models[trial_id] = model
        return {"trial": {**self._fixed[model], **sampled}}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        model = self._trial_models.pop(trial_id, None)
        searcher = self._searchers.get(model) if model is not None else None
        if searcher is not None:
            searcher.on_trial_complete(trial_id, result, error)

    def get_state(self) -> dict[str, Any]:
        """Per-model counts, running trials and each model's OptunaSearch (its Optuna study and sampler)."""
        return {
            "samples": self.samples,
            "handed_out": dict(self._handed_out),
            "trial_models": dict(self._trial_models),
            "searchers": dict(self._searchers),
        }

    def set_state(self, state: dict[str, Any]) -> None:
        if set(state["handed_out"]) != set(self._handed_out):
            raise ValueError(f"searcher state of models {sorted(state['handed_out'])}, this study searches "
                             f"{sorted(self._handed_out)}")
        self.samples = state["samples"]
        self._handed_out = dict(state["handed_out"])
        self._trial_models = dict(state["trial_models"])
        self._searchers = dict(state["searchers"])

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as stream:
            pickle.dump(self.get_state(), stream)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as stream:
            self.set_state(pickle.load(stream))
