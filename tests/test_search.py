"""The study key `searcher`: Optuna TPE per model (budgets, seeding, save/restore, resume) and its refusals."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray
from conftest import TINY_STUDY, run_raycf
from test_faults_tune import all_rows, ended, kill_driver, start_driver

from raycf.errors import RaycfError
from raycf.models.config import TrainConfig
from raycf.report.run_report import REPORT_MD
from raycf.study.schema import load_study
from raycf.tune.driver import LEADERBOARD_FILE, STUDY_FILE, TRIALS_FILE, study_record
from raycf.tune.search import PerModelOptuna, search_setup

SAMPLES = 2
OPTUNA_STUDY = f"""
name: tiny-optuna
seed: 0
data:
  dataset: synthetic
  synthetic: {{n_users: 300, n_items: 100}}
scheduler: {{type: asha, max_t: 6, grace_period: 2, reduction_factor: 3}}
resources: {{cpus_per_trial: 1}}
max_failures: 1
num_samples: {SAMPLES}
max_concurrent: 1
searcher:
  type: optuna
  n_startup_trials: 1
  points_to_evaluate: {{multvae: [{{beta: 0.25, layers: [16]}}]}}
models:
  multvae:
    fixed: {{hidden: 16, lr: 1.0e-2, patience: 6}}
    search:
      beta: {{uniform: [0.1, 0.3]}}
      layers: {{choice: [[], [16]]}}
  autorec:
    fixed: {{lr: 1.0e-2, patience: 6}}
    search:
      l2: {{loguniform: [1.0e-4, 1.0e-2]}}
      hidden: {{randint: [8, 24]}}
"""
"""TINY_STUDY's shape (conftest) without grids: two trials per model, one at a time; the second of each model
is TPE's (one random start); Mult-VAE's first is the seeded configuration."""
SEEDED = {"searcher": {"type": "optuna", "n_startup_trials": 1,
                       "points_to_evaluate": {"multvae": [{"beta": 0.25, "layers": "16"}]}}}
"""The searcher as study.json records it: the seeded configuration with layers in Tune's flat form."""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_optuna_study_reads_as_intended(tmp_path: Path) -> None:
    study = load_study(write(tmp_path, OPTUNA_STUDY))
    assert (study.searcher.type, study.searcher.n_startup_trials, study.num_samples) == ("optuna", 1, SAMPLES)
    assert {m.model: sorted(m.search) for m in study.models} == {"multvae": ["beta", "layers"],
                                                                 "autorec": ["hidden", "l2"]}
    assert study_record(study).to_json()["searcher"] == SEEDED["searcher"]
    default = load_study(write(tmp_path, TINY_STUDY, "tiny.yaml"))
    assert default.searcher.type == "random" and study_record(default).to_json()["searcher"] == {"type": "random"}
    text = OPTUNA_STUDY.replace("  n_startup_trials: 1\n", "")
    assert load_study(write(tmp_path, text)).searcher.n_startup_trials == 5


def searcher_for(tmp_path: Path, samples: int = 3) -> PerModelOptuna:
    study = load_study(write(tmp_path, OPTUNA_STUDY.replace(f"num_samples: {SAMPLES}", f"num_samples: {samples}")))
    setup = search_setup(study)
    assert setup.param_space is None and setup.num_samples == 2 * samples and setup.max_concurrent_trials == 1
    return setup.search_alg


def test_suggestions_take_turns_per_model_until_each_budget_is_used(tmp_path: Path) -> None:
    searcher = searcher_for(tmp_path, samples=3)
    models = []
    for index in range(6):
        config = TrainConfig.from_dict(searcher.suggest(f"t{index}")["trial"])
        models.append(config.model)
        assert (config.max_epochs, config.seed, config.params.lr, config.patience) == (6, 0, 1e-2, 6)
        if config.model == "multvae":
            assert (0.1 <= config.params.beta <= 0.3 and config.params.layers in ((), (16,))
                    and config.params.hidden == 16)
        else:
            assert 1e-4 <= config.params.l2 <= 1e-2 and 8 <= config.params.hidden < 24
        if index == 0:  # the seeded configuration first
            assert (config.params.beta, config.params.layers) == (0.25, (16,))
        searcher.on_trial_complete(f"t{index}", {"best_valid_ndcg": float(index)})
    assert models == ["multvae", "autorec"] * 3
    assert searcher.suggest("t6") == searcher.FINISHED and searcher.handed_out == {"multvae": 3, "autorec": 3}
    studies = {model: s._ot_study for model, s in searcher.get_state()["searchers"].items()}  # OptunaSearch's
    # each model's TPE was told only of its own trials
    assert [t.value for t in studies["multvae"].trials] == [0.0, 2.0, 4.0]
    assert [t.value for t in studies["autorec"].trials] == [1.0, 3.0, 5.0]


def test_save_and_restore_round_trip_counts_running_trials_and_optuna_studies(tmp_path: Path) -> None:
    searcher = searcher_for(tmp_path)
    for index in range(3):
        searcher.suggest(f"t{index}")
    searcher.on_trial_complete("t0", {"best_valid_ndcg": 0.3})
    searcher.on_trial_complete("t1", None, error=True)  # t2 (Mult-VAE) is still running
    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = searcher_for(tmp_path)
    restored.restore(str(tmp_path / "searcher.pkl"))
    assert restored.handed_out == searcher.handed_out == {"multvae": 2, "autorec": 1}
    assert restored.get_state()["trial_models"] == {"t2": "multvae"}

    def trials(of: PerModelOptuna) -> dict[str, list]:
        return {model: [(t.state, t.value, t.params) for t in s._ot_study.trials]
                for model, s in of.get_state()["searchers"].items()}

    assert trials(restored) == trials(searcher)
    assert trials(restored)["autorec"][0][0] == optuna.trial.TrialState.FAIL
    restored.on_trial_complete("t2", {"best_valid_ndcg": 0.2})  # a trial that was running reaches its TPE
    searcher.on_trial_complete("t2", {"best_valid_ndcg": 0.2})
    for index in range(3, 6):  # both go on with the same suggestions: the samplers' random states came along
        assert restored.suggest(f"t{index}") == searcher.suggest(f"t{index}")
    assert restored.suggest("t6") == searcher.FINISHED


BAD = [
    ("type", "searcher: {type: tpe}", "searcher.type: must be one of random, optuna, got 'tpe'"),
    ("option", "searcher: {type: optuna, n_trials: 3}",
     "searcher.n_trials: unknown key; allowed in searcher: type, n_startup_trials"),
    ("option-of-optuna", "searcher: {type: random, n_startup_trials: 3}",
     "searcher.n_startup_trials: applies to searcher type optuna only"),
    ("startup", "searcher: {type: optuna, n_startup_trials: 0}", "searcher.n_startup_trials: must be >= 1, got 0"),
    ("not-a-mapping", "searcher: optuna",
     "searcher: must be a mapping of keys type, n_startup_trials, points_to_evaluate, got 'optuna'"),
    ("grid", "searcher: {type: optuna}", "models.multvae.search.beta: grid is not searched with searcher type optuna"),
]


@pytest.mark.parametrize(("stem", "line", "fragment"), BAD, ids=[case[0] for case in BAD])
def test_bad_searcher_is_refused_naming_the_key(tmp_path: Path, stem: str, line: str, fragment: str) -> None:
    path = write(tmp_path, TINY_STUDY + line + "\n", f"{stem}.yaml")  # TINY_STUDY searches grids
    if stem != "grid":
        path.write_text(path.read_text().replace("{grid:", "{choice:"))
    with pytest.raises(RaycfError, match=re.escape(f"{path}: {fragment}")) as caught:
        load_study(path)
    assert "\n" not in str(caught.value)


def refuse_ray(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("Ray was started before the study was checked")


@pytest.mark.parametrize("stem", ["type", "option", "grid"])
def test_bad_searcher_is_one_line_exit_2_before_ray(
    tmp_path: Path, stem: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    _, line, fragment = next(case for case in BAD if case[0] == stem)
    path = write(tmp_path, TINY_STUDY + line + "\n")
    if stem != "grid":
        path.write_text(path.read_text().replace("{grid:", "{choice:"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", refuse_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    code = run_raycf("tune", str(path), "--storage", str(tmp_path / "runs"))
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith(f"raycf: error: {path}: ") and error.count("\n") == 1, error
    assert fragment in error and "Traceback" not in error
    assert not (tmp_path / "runs").exists()


def in_order(run_dir: Path) -> pd.DataFrame:
    """trials.parquet in the order the searcher handed the trials out (the counter in their directory names)."""
    order = {}
    for trial_dir in run_dir.glob("run_trial_*"):
        trial_id, counter = trial_dir.name.split("_")[2:4]  # run_trial_<id>_<counter>_<values>
        order[trial_id] = int(counter)
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    assert trials["error"].isna().all(), trials["error"].tolist()
    return trials.assign(order=trials["trial_id"].map(order)).sort_values("order").reset_index(drop=True)


def sampled(run_dir: Path) -> list[tuple[str, str]]:
    """(model, config JSON) of every trial of the run, in the order the searcher handed them out."""
    trials = in_order(run_dir)
    return list(zip(trials["model"], trials["config"], strict=True))


@pytest.fixture(scope="module")
def optuna_run(ray_cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The optuna study run once on the session's Ray: its run directory."""
    storage = tmp_path_factory.mktemp("optuna")
    assert run_raycf("tune", str(write(storage, OPTUNA_STUDY)), "--storage", str(storage), "--name", "run") == 0
    return storage / "run"


def test_each_model_runs_its_budget_with_its_own_asha(optuna_run: Path) -> None:
    trials = in_order(optuna_run)
    assert trials["model"].tolist() == ["multvae", "autorec"] * SAMPLES  # one of each model in turn
    assert json.loads((optuna_run / STUDY_FILE).read_text())["searcher"] == SEEDED["searcher"]
    configs = [json.loads(config) for config in trials["config"]]
    assert (configs[0]["beta"], configs[0]["layers"]) == (0.25, "16")  # the seeded configuration ran first
    assert len({json.dumps(config) for config in configs}) == len(configs)
    for config in configs:
        TrainConfig.from_dict(config)
        assert (0.1 <= config["beta"] <= 0.3) if config["model"] == "multvae" else (1e-4 <= config["l2"] <= 1e-2)
    # Each model's first trial is alone in its model's ASHA rungs, so ASHA never stops it (one shared ASHA
    # would judge AutoRec's first epochs against Mult-VAE's).
    assert (trials["stopped_by"][:2] != "asha").all(), trials[["model", "stopped_by", "epochs_run"]]


def test_the_same_seed_samples_the_same_configurations_one_trial_at_a_time(optuna_run: Path, tmp_path: Path) -> None:
    assert run_raycf("tune", str(write(tmp_path, OPTUNA_STUDY)), "--storage", str(tmp_path), "--name", "again") == 0
    assert sampled(tmp_path / "again") == sampled(optuna_run)


def test_resume_continues_the_searchers(ray_cluster, optuna_run: Path, tmp_path: Path) -> None:
    """A driver killed after the first trial ended: the resumed study hands out what the uninterrupted one did,
    each model still exactly its budget (a searcher restarted from scratch would repeat the first configurations)."""
    run_dir = tmp_path / "run"
    driver = start_driver(ray_cluster, write(tmp_path, OPTUNA_STUDY), tmp_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        rows = [rows for rows in all_rows(run_dir).values() if rows]
        if any(ended(trial) for trial in rows):
            break
        assert driver.poll() is None, "the study ended before it could be interrupted"
        time.sleep(0.05)
    # Not at once: the trial's last checkpoint has just replaced its previous one, and Tune's experiment state
    # (what a resume starts from) names the new one a moment later; the next trial is still starting then.
    time.sleep(0.5)
    kill_driver(ray_cluster, driver)
    assert not (run_dir / TRIALS_FILE).exists(), "the study finished before it could be interrupted"
    assert len(all_rows(run_dir)) < 2 * SAMPLES
    assert run_raycf("tune", "--resume", str(run_dir)) == 0
    assert sampled(run_dir) == sampled(optuna_run)


def test_the_report_says_how_the_pick_validates_against_the_seeded_reference(optuna_run: Path) -> None:
    assert run_raycf("report", str(optuna_run)) == 0
    report = (optuna_run / REPORT_MD).read_text()
    assert "seeded with 1 configurations" in report
    trials = in_order(optuna_run)
    seeded = trials[trials["model"] == "multvae"].iloc[0]
    pick = pd.read_parquet(optuna_run / LEADERBOARD_FILE).set_index("model").loc["multvae"]
    if pick["trial_id"] == seeded["trial_id"]:
        expected = f"- Mult-VAE: the pick is its seeded reference (trial {seeded['trial_id']}"
    else:
        side = "below" if pick["valid_ndcg"] < seeded["valid_ndcg"] else "above"
        expected = (f"- Mult-VAE: the searched pick (trial {pick['trial_id']}: {pick['valid_ndcg']:.4f}) validates "
                    f"{side} its seeded reference (trial {seeded['trial_id']}")
    assert "## Seeded references" in report and expected in report, report
    assert "AutoRec:" not in report.split("## Seeded references")[1].split("##")[0]  # AutoRec was not seeded


SEEDED_STUDY = OPTUNA_STUDY.replace("points_to_evaluate: {multvae: [{beta: 0.25, layers: [16]}]}", "{points}")
BAD_POINTS = [
    ("choice", "{multvae: [{layers: [600]}]}",
     "searcher.points_to_evaluate.multvae[0].layers: '600' is outside the searched space {choice: ['', '16']}"),
    ("range", "{multvae: [{beta: 0.9}]}",
     "searcher.points_to_evaluate.multvae[0].beta: 0.9 is outside the searched space {uniform: [0.1, 0.3]}"),
    ("reference-outside", "{autorec: [{l2: 1.0e-3}]}",
     "searcher.points_to_evaluate.autorec[0].hidden: not given; its reference value 200 is outside the searched "
     "space {randint: [8, 24]}"),
    ("fixed", "{multvae: [{hidden: 16}]}",
     "searcher.points_to_evaluate.multvae[0].hidden: is fixed in models.multvae.fixed"),
    ("not-searched", "{multvae: [{dropout: 0.5}]}",
     "searcher.points_to_evaluate.multvae[0].dropout: is not searched for multvae (searched: beta, layers)"),
    ("other-model", "{ease: [{l2: 500.0}]}", "searcher.points_to_evaluate.ease: not a model of this study"),
    ("empty", "{multvae: []}", "searcher.points_to_evaluate.multvae: must be a non-empty list of configurations"),
]


@pytest.mark.parametrize(("stem", "points", "fragment"), BAD_POINTS, ids=[case[0] for case in BAD_POINTS])
def test_a_seeded_configuration_outside_the_space_is_refused(tmp_path: Path, stem: str, points: str,
                                                            fragment: str) -> None:
    path = write(tmp_path, SEEDED_STUDY.replace("{points}", f"points_to_evaluate: {points}"), f"{stem}.yaml")
    with pytest.raises(RaycfError, match=re.escape(f"{path}: {fragment}")) as caught:
        load_study(path)
    assert "\n" not in str(caught.value)


def test_random_search_runs_its_seeds_as_grid_points_first(tmp_path: Path) -> None:
    seeded = TINY_STUDY + "searcher: {points_to_evaluate: {autorec: [{l2: 1.0e-3}]}}\n"
    setup = search_setup(load_study(write(tmp_path, seeded)))
    grid = setup.param_space["trial"]["grid_search"]
    assert len(grid) == 3 and grid[0]["model"] == "autorec" and grid[0]["l2"] == 1e-3
    assert TrainConfig.from_dict(grid[0]) == TrainConfig.for_model("autorec", hidden=16, lr=1e-2, patience=6,
                                                                   l2=1e-3, max_epochs=12)
    twice = seeded.replace("models:", "num_samples: 2\nmodels:")
    with pytest.raises(RaycfError, match=re.escape("searcher.points_to_evaluate: with searcher type random each "
                                                   "seeded configuration is one more grid point")):
        load_study(write(tmp_path, twice, "twice.yaml"))


def test_a_bad_seed_is_one_line_exit_2_before_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, SEEDED_STUDY.replace("{points}", "points_to_evaluate: {multvae: [{beta: 0.9}]}"))
    monkeypatch.setattr(ray, "init", refuse_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert run_raycf("tune", str(path), "--storage", str(tmp_path / "runs")) == 2
    error = capsys.readouterr().err
    assert error == f"raycf: error: {path}: {BAD_POINTS[1][2]}; give a value in it (or widen the search)\n"
    assert not (tmp_path / "runs").exists()
