"""Study files: the shipped studies load and expand; every bad file gets one line naming the file and key."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ray.tune.search.variant_generator import generate_variants

from raycf.errors import RaycfError
from raycf.models.config import TrainConfig
from raycf.study.schema import Dimension, Study, apply_overrides, load_study
from raycf.tune.space import study_space

STUDIES = Path(__file__).resolve().parents[1] / "studies"

GOOD = """\
name: t
data:
  dataset: synthetic
  synthetic: {n_users: 50, n_items: 30}
models:
  multvae:
    fixed: {hidden: 8}
    search:
      dropout: {uniform: [0.3, 0.6]}
"""


def trials(study: Study) -> list[TrainConfig]:
    """Every variant of the study's param space (one sample each), as TrainConfigs."""
    return [TrainConfig.from_dict(variant["trial"]) for _, variant in generate_variants(study_space(study))]


def test_quickstart_loads_and_expands_to_ten_trials() -> None:
    study = load_study(STUDIES / "quickstart.yaml")
    assert study.data.dataset == "synthetic" and study.data.synthetic == {"n_users": 600, "n_items": 200}
    assert (study.scheduler.type, study.scheduler.max_t, study.scheduler.grace_period) == ("asha", 30, 3)
    configs = trials(study)
    assert len(configs) * study.num_samples == 10
    assert sorted(c.model for c in configs) == ["autorec"] * 4 + ["ease", "multvae", "multvae", "multvae",
                                                                   "multvae", "pop"]
    assert all(c.max_epochs == 30 and c.seed == 0 for c in configs)
    assert all(c.params.hidden == 32 for c in configs if c.model in ("multvae", "autorec"))
    assert [c.params.l2 for c in configs if c.model == "ease"] == [200.0]
    assert {c.params.dropout for c in configs if c.model == "multvae"} <= {0.3, 0.5}


@pytest.mark.parametrize(("name", "heldout", "models"), [
    ("ml1m-strong", 600, {"multvae": 4, "autorec": 3, "pop": 1, "ease": 4, "itemknn": 9, "ials": 12}),
    ("ml20m-liang", 10_000, {"multvae": 1, "ease": 3, "pop": 1}),
])
def test_strong_generalization_studies_load(name: str, heldout: int, models: dict[str, int]) -> None:
    """Liang et al.'s protocol: users held out with 80% folded in, ratings >= 3.5, users with >= 5 of them,
    selection on NDCG@100, Recall@20 and Recall@50 reported both ways (recall and the papers' recall_capped)."""
    study = load_study(STUDIES / f"{name}.yaml")
    data = study.data
    assert (data.scheme, data.heldout_users, data.fold_in, data.min_rating, data.min_user_items) == (
        "users", heldout, 0.8, 3.5, 5)
    assert study.metric == "ndcg@100"
    assert sorted(study.report_metrics) == ["recall@20", "recall@50", "recall_capped@20", "recall_capped@50"]
    assert [metric.label for metric in study.selection.metrics][-5:] == ["ndcg@100", *study.report_metrics]
    configs = trials(study)
    assert {model: sum(c.model == model for c in configs) for model in models} == models
    vae = next(c for c in configs if c.model == "multvae")
    assert (vae.params.layers, vae.params.hidden, vae.params.dropout, vae.params.batch_size) == ((600,), 200, 0.5, 500)


def test_ml1m_baselines_study_searches_every_model_on_the_write_ups_protocol() -> None:
    study = load_study(STUDIES / "ml1m-baselines.yaml")
    assert (study.data.dataset, study.data.scheme, study.fractions, study.metric) == (
        "ml-1m", "records", (0.6, 0.2, 0.2), "ndcg@5")
    assert study.repeat_seeds == (0, 1, 2)
    configs = trials(study)
    counts = {model: sum(c.model == model for c in configs) for model in {c.model for c in configs}}
    assert counts == {"multvae": 1, "autorec": 4, "pop": 1, "ease": 6, "itemknn": 12, "ials": 12}
    assert all(c.params.iterations == 30 and c.patience == 5 for c in configs if c.model == "ials")


def test_ml1m_reference_loads_and_expands() -> None:
    study = load_study(STUDIES / "ml1m-reference.yaml")
    assert (study.data.dataset, study.data.ratings, study.fractions) == ("ml-1m", None, (0.6, 0.2, 0.2))
    assert (study.metric, study.mode, study.seed, study.max_concurrent, study.max_failures) == (
        "ndcg@5", "max", 0, 2, 2
    )
    assert study.scheduler.max_t == 300 and study.scheduler.grace_period == 20
    configs = trials(study)
    vae = [c for c in configs if c.model == "multvae"]
    autorec = [c for c in configs if c.model == "autorec"]
    assert sorted(c.params.anneal_steps for c in vae) == [0, 20000]
    assert all(c.params.beta in (0.1, 0.2, 0.3) and c.params.dropout in (0.5, 0.6) and c.params.lr in (1e-3, 2e-3)
               for c in vae)
    assert sorted((c.params.l2, c.params.normalize) for c in autorec) == [
        (lam, norm) for lam in (1e-4, 1e-3, 1e-2, 1e-1) for norm in ("l2", "none")
    ]
    assert all(c.params.hidden == 200 and c.patience == 50 and c.max_epochs == 300 for c in configs)


def test_defaults_search_kinds_and_relative_ratings(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "r.csv").write_text("user_id,item_id\n1,2\n")
    path = tmp_path / "s.yaml"
    path.write_text("""\
name: t
data: {ratings: data/r.csv, format: csv}
models:
  autorec:
  multvae:
    search:
      lr: {loguniform: [1.0e-4, 1.0e-2]}
      hidden: {randint: [8, 16]}
      beta: {uniform: [0, 1]}
""")
    study = load_study(path)
    assert study.data.ratings == str(tmp_path / "data" / "r.csv") and study.data.dataset is None
    assert (study.scheduler.type, study.scheduler.max_t, study.scheduler.grace_period) == ("asha", 100, 10)
    assert (study.num_samples, study.max_concurrent, study.cpus_per_trial, study.gpus_per_trial) == (1, None, 1, 0)
    assert study.checkpoint_every == 10
    path.write_text(path.read_text() + "checkpoint_every: null\n")
    assert load_study(path).checkpoint_every is None  # only at improvements and at the end
    vae = study.models[1]
    assert vae.search["hidden"] == Dimension("randint", (8, 16))
    assert vae.search["beta"] == Dimension("uniform", (0.0, 1.0))
    for config in (c for c in trials(study) if c.model == "multvae"):
        assert 8 <= config.params.hidden < 16 and 1e-4 <= config.params.lr <= 1e-2
    assert study_space(dataclasses.replace(study, seed=3, num_samples=4))["trial"]


def test_grace_period_defaults_to_at_most_max_t(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(GOOD + "scheduler: {max_t: 4}\n")
    assert load_study(path).scheduler.grace_period == 4


def edit(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


BAD = [
    ("unknown-top", GOOD + "nmae: x\n", "nmae: unknown key; allowed: name, seed"),
    ("unknown-nested", GOOD + "scheduler: {maxt: 3}\n", "scheduler.maxt: unknown key; allowed in scheduler"),
    ("unknown-model-key", edit("    fixed:", "    fixd:"), "models.multvae.fixd: unknown key"),
    ("unknown-field", edit("hidden: 8", "hiden: 8"), "models.multvae.fixed.hiden: unknown TrainConfig field"),
    ("wrong-type", GOOD + "num_samples: two\n", "num_samples: must be an integer >= 1, got 'two'"),
    ("bool-not-number", GOOD + "resources: {cpus_per_trial: true}\n",
     "resources.cpus_per_trial: must be a finite number"),
    ("search-wrong-type",
     edit("dropout: {uniform: [0.3, 0.6]}", "hidden: {choice: [1.5]}").replace("hidden: 8", "lr: 0.01"),
     "models.multvae.search.hidden.choice[0]: field 'hidden' must be int, got 1.5"),
    ("choice-wrong-type", edit("dropout: {uniform: [0.3, 0.6]}", "batch_size: {choice: [1.5]}"),
     "models.multvae.search.batch_size.choice[0]: field 'batch_size' must be int, got 1.5"),
    ("string-exponent", edit("dropout: {uniform: [0.3, 0.6]}", "lr: {choice: [1e-3]}"),
     "models.multvae.search.lr.choice[0]: field 'lr' must be float, got '1e-3' (YAML reads 1e-3 as a string"),
    ("uniform-on-int", edit("dropout: {uniform: [0.3, 0.6]}", "batch_size: {uniform: [10, 20]}"),
     "models.multvae.search.batch_size.uniform: samples floats, but batch_size is int"),
    ("empty-grid", edit("dropout: {uniform: [0.3, 0.6]}", "dropout: {grid: []}"),
     "models.multvae.search.dropout.grid: must be a non-empty list"),
    ("empty-choice", edit("dropout: {uniform: [0.3, 0.6]}", "dropout: {choice: []}"),
     "models.multvae.search.dropout.choice: must be a non-empty list"),
    ("two-kinds", edit("dropout: {uniform: [0.3, 0.6]}", "dropout: {choice: [0.1], grid: [0.2]}"),
     "models.multvae.search.dropout: must be a mapping with exactly one of grid, choice"),
    ("unknown-kind", edit("dropout: {uniform: [0.3, 0.6]}", "dropout: {normal: [0.3, 0.6]}"),
     "models.multvae.search.dropout.normal: unknown search kind"),
    ("uniform-low-high", edit("[0.3, 0.6]", "[0.6, 0.6]"),
     "models.multvae.search.dropout.uniform: low must be < high"),
    ("uniform-three", edit("[0.3, 0.6]", "[0.3, 0.4, 0.6]"),
     "models.multvae.search.dropout.uniform: must be exactly two numbers"),
    ("uniform-out-of-range", edit("[0.3, 0.6]", "[0.3, 1.6]"),
     "models.multvae.search.dropout.uniform[1]: dropout must be in [0, 1), got 1.6"),
    ("loguniform-low", edit("dropout: {uniform: [0.3, 0.6]}", "lr: {loguniform: [0, 0.1]}"),
     "models.multvae.search.lr.loguniform: low must be > 0"),
    ("randint-float", edit("dropout: {uniform: [0.3, 0.6]}", "batch_size: {randint: [1.5, 9]}"),
     "models.multvae.search.batch_size.randint: must be two integers"),
    ("negative-max-t", GOOD + "scheduler: {max_t: -5}\n", "scheduler.max_t: must be >= 1, got -5"),
    ("zero-max-t", GOOD + "scheduler: {max_t: 0}\n", "scheduler.max_t: must be >= 1, got 0"),
    ("grace-over-max-t", GOOD + "scheduler: {max_t: 5, grace_period: 10}\n",
     "scheduler.grace_period: must be <= scheduler.max_t (5), got 10"),
    ("reduction-factor", GOOD + "scheduler: {reduction_factor: 1}\n", "scheduler.reduction_factor: must be > 1"),
    ("unknown-scheduler", GOOD + "scheduler: {type: pbt}\n", "scheduler.type: must be one of asha, fifo, got 'pbt'"),
    ("unknown-model", GOOD + "  bpr: {}\n", "models.bpr: unknown model; choose from multvae, autorec"),
    ("no-models", edit(GOOD[GOOD.index("models:"):], "models: {}\n"), "models: must name at least one model"),
    ("duplicate-model", GOOD + "  multvae: {}\n", "models.multvae: duplicate key on line 10 (first on line 6)"),
    ("both-fixed-and-search", edit("hidden: 8", "dropout: 0.4"),
     "models.multvae.search.dropout: also set in models.multvae.fixed"),
    ("max-epochs-fixed", edit("hidden: 8", "max_epochs: 5"),
     "models.multvae.fixed.max_epochs: not allowed here: set scheduler.max_t instead"),
    ("seed-searched", edit("dropout: {uniform: [0.3, 0.6]}", "seed: {grid: [1, 2]}"),
     "models.multvae.search.seed: not allowed here: the study's seed is used"),
    ("fixed-invalid", edit("hidden: 8", "dropout: 1.5"),
     "models.multvae.fixed.dropout: dropout must be in [0, 1), got 1.5"),
    ("fixed-zero", edit("hidden: 8", "hidden: 0"), "models.multvae.fixed.hidden: hidden must be >= 1, got 0"),
    ("dataset-and-ratings", edit("  dataset: synthetic\n", "  dataset: synthetic\n  ratings: r.csv\n"),
     "data: give exactly one of dataset (ml-1m, ml-100k, synthetic) or ratings"),
    ("neither-dataset-nor-ratings", edit("  dataset: synthetic\n", ""), "data: give exactly one of dataset"),
    ("unknown-dataset", edit("dataset: synthetic", "dataset: ml-25m"),
     "data.dataset: must be one of ml-1m, ml-100k, ml-10m, ml-20m, synthetic"),
    ("missing-ratings",
     edit("  dataset: synthetic\n  synthetic: {n_users: 50, n_items: 30}\n", "  ratings: nowhere.csv\n"),
     "data.ratings: missing data: "),
    ("synthetic-with-dataset", edit("dataset: synthetic", "dataset: ml-1m"),
     "data.synthetic: applies to dataset: synthetic only"),
    ("synthetic-unknown-arg", edit("n_items: 30", "n_itms: 30"),
     "data.synthetic.n_itms: unknown key; allowed in data.synthetic: n_users, n_items"),
    ("synthetic-wrong-type", edit("n_items: 30", "n_items: 30.5"),
     "data.synthetic.n_items: must be an integer >= 0, got 30.5"),
    ("format-with-dataset", edit("  dataset: synthetic\n", "  dataset: synthetic\n  format: csv\n"),
     "data.format: applies to a ratings file only"),
    ("bad-split", edit("  dataset: synthetic\n", "  dataset: synthetic\n  split: [0.5, 0.2, 0.2]\n"),
     "data.split: must be three numbers > 0 that sum to 1"),
    ("bad-metric", GOOD + "metric: auc\n",
     "metric: unknown metric 'auc'; use name@k with name one of precision, recall, ndcg, mrr"),
    ("missing-name", edit("name: t\n", ""), "name: missing; it is required"),
    ("max-concurrent-zero", GOOD + "max_concurrent: 0\n", "max_concurrent: must be >= 1, got 0"),
    ("max-failures-negative", GOOD + "max_failures: -1\n", "max_failures: must be >= 0, got -1"),
    ("checkpoint-every-zero", GOOD + "checkpoint_every: 0\n", "checkpoint_every: must be >= 1, got 0"),
    ("yaml-syntax", GOOD + "mode: max: min\n", "line 10, column 10: invalid YAML: mapping values are not allowed here"),
    ("not-a-mapping", "- name: t\n", "a study file must be a mapping with keys name, data and models, got a list"),
    ("empty-file", "", "got an empty file"),
]


@pytest.mark.parametrize(("stem", "text", "fragment"), BAD, ids=[case[0] for case in BAD])
def test_bad_study_is_one_line_naming_file_and_key(tmp_path: Path, stem: str, text: str, fragment: str) -> None:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(text)
    with pytest.raises(RaycfError) as caught:
        load_study(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    assert fragment in message


def test_missing_ratings_names_the_path_and_the_way_out(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(edit("  dataset: synthetic\n  synthetic: {n_users: 50, n_items: 30}\n", "  ratings: nowhere.csv\n"))
    message = str(pytest.raises(RaycfError, load_study, path).value)
    assert str(tmp_path / "nowhere.csv") in message and "--ratings PATH" in message and "data.ratings" in message


def test_missing_study_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    assert str(pytest.raises(RaycfError, load_study, path).value).startswith(
        f"{path}: no such study file; check the path")


def test_good_base_loads(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(GOOD)
    study = load_study(path)
    assert study.models[0].fixed == {"hidden": 8}
    assert study.models[0].search == {"dropout": Dimension("uniform", (0.3, 0.6))}


def test_loading_a_study_does_not_import_ray() -> None:
    code = ("import sys; from raycf.study.schema import load_study; load_study(sys.argv[1]); "
            "assert 'ray' not in sys.modules")
    subprocess.run([sys.executable, "-c", code, str(STUDIES / "quickstart.yaml")], check=True)


def test_overrides_replace_data_seed_and_resources(tmp_path: Path) -> None:
    ratings = tmp_path / "r.csv"
    ratings.write_text("user_id,item_id\n1,2\n")
    study = load_study(STUDIES / "quickstart.yaml")
    changed = apply_overrides(study, ratings=str(ratings), seed=7, num_samples=2, max_concurrent=1,
                              max_failures=0, cpus_per_trial=2, gpus_per_trial=0.5)
    assert (changed.data.dataset, changed.data.ratings, changed.data.synthetic) == (None, str(ratings), {})
    assert (changed.seed, changed.num_samples, changed.max_concurrent, changed.max_failures) == (7, 2, 1, 0)
    assert (changed.cpus_per_trial, changed.gpus_per_trial) == (2.0, 0.5)
    assert all(c.seed == 7 for c in trials(changed))
    assert apply_overrides(study) == study
    assert apply_overrides(study, dataset="ml-1m").data.dataset == "ml-1m"


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"dataset": "ml-1m", "ratings": "r.csv"}, "--dataset and --ratings exclude each other"),
    ({"ratings": "nowhere.csv"}, "--ratings: missing data: no file"),
    ({"seed": -1}, "--seed: must be >= 0, got -1"),
    ({"cpus_per_trial": 0}, "--cpus-per-trial: must be > 0"),
])
def test_bad_overrides(overrides: dict, fragment: str) -> None:
    study = load_study(STUDIES / "quickstart.yaml")
    assert fragment in str(pytest.raises(RaycfError, apply_overrides, study, **overrides).value)


def test_missing_ratings_can_be_replaced_on_the_command_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(edit("  dataset: synthetic\n  synthetic: {n_users: 50, n_items: 30}\n", "  ratings: nowhere.csv\n"))
    ratings = tmp_path / "r.csv"
    ratings.write_text("user_id,item_id\n1,2\n")
    study = apply_overrides(load_study(path, check_ratings=False), ratings=ratings)
    assert study.data.ratings == str(ratings)


# --- wider search spaces (issue 12): layers, weight_decay and AutoRec's activations in study files ---

WIDE = """\
name: wide
data:
  dataset: synthetic
  synthetic: {n_users: 50, n_items: 30}
models:
  multvae:
    fixed: {hidden: 8, weight_decay: 1.0e-5}
    search:
      layers: {choice: [[], [600], [600, 300]]}
  autorec:
    fixed: {hidden: 8, output_activation: identity, dropout: 0.2}
    search:
      hidden_activation: {grid: [sigmoid, relu, elu, selu, identity]}
"""


def test_study_with_the_new_fields_validates_and_expands(tmp_path: Path) -> None:
    path = tmp_path / "wide.yaml"
    path.write_text(WIDE)
    study = load_study(path)
    multvae, autorec = study.models
    assert multvae.fixed == {"hidden": 8, "weight_decay": 1e-5}
    assert multvae.search == {"layers": Dimension("choice", ("", "600", "600,300"))}  # Tune's flat form
    configs = [TrainConfig.from_dict(variant["trial"]) for seed in range(20)
               for _, variant in generate_variants(study_space(study), random_state=seed)]
    assert {c.params.layers for c in configs if c.model == "multvae"} == {(), (600,), (600, 300)}
    assert {c.params.weight_decay for c in configs if c.model == "multvae"} == {1e-5}
    assert {c.params.hidden_activation for c in configs if c.model == "autorec"} == {"sigmoid", "relu", "elu", "selu",
                                                                                "identity"}
    assert {(c.params.output_activation, c.params.dropout)
            for c in configs if c.model == "autorec"} == {("identity", 0.2)}
    # every value Tune sees is a scalar (trials.parquet's hp_ columns stay comparable)
    for _, variant in generate_variants(study_space(study)):
        assert all(isinstance(value, (str, int, float)) for value in variant["trial"].values())


def test_fixed_layers_and_a_grid_of_lists(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(GOOD.replace("hidden: 8", "hidden: 8, layers: [20]").replace(
        "dropout: {uniform: [0.3, 0.6]}", "lr: {grid: [1.0e-3, 3.0e-3]}"))
    study = load_study(path)
    assert study.models[0].fixed == {"hidden": 8, "layers": "20"}
    assert [(c.params.layers, c.params.lr) for c in trials(study)] == [((20,), 1e-3), ((20,), 3e-3)]
    path.write_text(GOOD.replace("dropout: {uniform: [0.3, 0.6]}", "layers: {grid: [[], [16, 16]]}"))
    assert [c.params.layers for c in trials(load_study(path))] == [(), (16, 16)]


WIDE_BAD = [
    ("unknown-name", edit("hidden: 8", "latent: 8"),
     "models.multvae.fixed.latent: unknown TrainConfig field; allowed: hidden, layers"),
    ("layers-negative", edit("hidden: 8", "layers: [600, -1]"),
     "models.multvae.fixed.layers: layers must be a list of ints >= 1, e.g. [600] or [], got [600, -1]"),
    ("layers-not-list", edit("hidden: 8", "layers: 600"),
     "models.multvae.fixed.layers: field 'layers' must be a list of ints like [600]"),
    ("layers-choice-element", edit("dropout: {uniform: [0.3, 0.6]}", "layers: {choice: [[], [0]]}"),
     "models.multvae.search.layers.choice[1]: layers must be a list of ints >= 1"),
    ("layers-choice-flat", edit("dropout: {uniform: [0.3, 0.6]}", "layers: {choice: [600, 300]}"),
     "models.multvae.search.layers.choice[0]: field 'layers' must be a list of ints like [600]"),
    ("layers-randint", edit("dropout: {uniform: [0.3, 0.6]}", "layers: {randint: [1, 9]}"),
     "models.multvae.search.layers.randint: samples ints, but layers is list; use choice or grid"),
    ("layers-autorec", GOOD + "  autorec: {fixed: {layers: [600]}}\n",
     "models.autorec.fixed.layers: layers is not a hyperparameter of autorec"),
    ("activation-unknown", GOOD + "  autorec: {search: {output_activation: {choice: [sigmoid, tanh]}}}\n",
     "models.autorec.search.output_activation.choice[1]: output_activation must be one of identity, sigmoid, relu, "
     "elu, selu, got 'tanh'"),
    ("activation-multvae", edit("hidden: 8", "hidden_activation: relu"),
     "models.multvae.fixed.hidden_activation: hidden_activation is not a hyperparameter of multvae"),
    ("weight-decay-negative", edit("dropout: {uniform: [0.3, 0.6]}", "weight_decay: {uniform: [-1.0, 0.1]}"),
     "models.multvae.search.weight_decay.uniform[0]: weight_decay must be >= 0, got -1.0"),
]


@pytest.mark.parametrize(("stem", "text", "fragment"), WIDE_BAD, ids=[case[0] for case in WIDE_BAD])
def test_bad_new_fields_are_refused_naming_the_key(tmp_path: Path, stem: str, text: str, fragment: str) -> None:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(text)
    with pytest.raises(RaycfError, match=re.escape(f"{path}: {fragment}")) as caught:
        load_study(path)
    assert "\n" not in str(caught.value)


def test_a_trial_whose_config_cannot_be_built_fails_in_the_trial(small_split) -> None:
    """run_trial builds its TrainConfig first: a bad config is that trial's error (Tune records it), nothing more."""
    from raycf.tune.driver import run_trial

    bad = {**TrainConfig.for_model("multvae").to_dict(flat=True), "layers": "600,-5"}
    with pytest.raises(RaycfError, match=r"trial: layers must be a list of ints >= 1, e\.g\. \[600\] or \[\], got "
                                         r"\[600, -5\]"):
        run_trial({"trial": bad}, small_split)


def test_a_model_sets_its_own_epoch_limit_and_grace_period(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(GOOD + "    scheduler: {max_t: 60, grace_period: 20}\n  pop: {}\n"
                    + "  autorec: {scheduler: {max_t: 4}}\nscheduler: {max_t: 30, grace_period: 3}\n")
    multvae, pop, autorec = load_study(path).models
    assert multvae.scheduler_overrides() == {"max_t": 60, "grace_period": 20}
    assert pop.scheduler_overrides() == {} and autorec.scheduler_overrides() == {"max_t": 4}
    epochs = {config.model: config.max_epochs for config in trials(load_study(path))}
    assert epochs == {"multvae": 60, "pop": 30, "autorec": 4}


MODEL_SCHEDULER_BAD = [
    ("grace-over-own-max-t", "    scheduler: {max_t: 20, grace_period: 30}\n",
     "models.multvae.scheduler.grace_period: grace period 30 exceeds the model's max_t 20"),
    ("study-grace-over-own-max-t", "    scheduler: {max_t: 5}\n",
     "models.multvae.scheduler.max_t: grace period 10 exceeds the model's max_t 5 (got 5)"),
    ("grace-with-fifo", "    scheduler: {grace_period: 3}\nscheduler: {type: fifo}\n",
     "models.multvae.scheduler.grace_period: applies to scheduler type asha only"),
    ("unknown-key", "    scheduler: {reduction_factor: 2}\n",
     "models.multvae.scheduler.reduction_factor: unknown key; allowed in models.multvae.scheduler: max_t, "
     "grace_period"),
    ("zero", "    scheduler: {max_t: 0}\n", "models.multvae.scheduler.max_t: must be >= 1, got 0"),
]


@pytest.mark.parametrize(("stem", "lines", "fragment"), MODEL_SCHEDULER_BAD, ids=[c[0] for c in MODEL_SCHEDULER_BAD])
def test_a_bad_model_scheduler_is_refused_naming_the_key(tmp_path: Path, stem: str, lines: str, fragment: str) -> None:
    path = tmp_path / f"{stem}.yaml"
    path.write_text(GOOD + lines)
    with pytest.raises(RaycfError, match=re.escape(f"{path}: {fragment}")):
        load_study(path)
