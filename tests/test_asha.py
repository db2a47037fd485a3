"""PerModelASHA with real Tune trials and result files: per-model rungs, rungs refilled on resume."""

from __future__ import annotations

import json
from pathlib import Path

from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler

from raycf.tune.asha import PerModelASHA
from raycf.tune.driver import TIME_ATTR

METRIC = "valid_ndcg"


def scheduler() -> PerModelASHA:
    asha = PerModelASHA(time_attr=TIME_ATTR, max_t=9, grace_period=1, reduction_factor=3)
    asha.set_search_properties(METRIC, "max")
    return asha


def trial(storage: Path, name: str, model: str = "multvae") -> Trial:
    context = StorageContext(storage_path=str(storage), experiment_dir_name="study", trial_dir_name=name)
    return Trial("raycf_trial", config={"trial": {"model": model}}, trial_id=name, storage=context, stub=True)


def report(asha: PerModelASHA, reported: Trial, epoch: int, ndcg: float) -> str:
    """Hand a result to the scheduler and append it to the trial's result file, as Tune's driver does."""
    result = {TIME_ATTR: epoch, METRIC: ndcg}
    path = Path(reported.path) / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as stream:
        stream.write(json.dumps(result) + "\n")
    return asha.on_trial_result(None, reported, result)


def test_a_model_competes_only_with_its_own_trials(tmp_path: Path) -> None:
    asha = scheduler()
    strong, weak = trial(tmp_path, "vae", "multvae"), trial(tmp_path, "autorec", "autorec")
    for added in (strong, weak):
        asha.on_trial_add(None, added)
    assert report(asha, strong, 1, 0.5) == TrialScheduler.CONTINUE
    assert report(asha, weak, 1, 0.1) == TrialScheduler.CONTINUE  # alone in AutoRec's rung
    later = trial(tmp_path, "vae-later")
    asha.on_trial_add(None, later)
    assert report(asha, later, 1, 0.1) == TrialScheduler.STOP  # below Mult-VAE's cutoff


def test_a_resumed_scheduler_decides_as_the_uninterrupted_one(tmp_path: Path) -> None:
    live = scheduler()
    before = [trial(tmp_path, f"t{index}") for index in range(4)]
    for index, added in enumerate(before):
        live.on_trial_add(None, added)
    for epoch in (1, 2, 3):
        for index, added in enumerate(before):
            report(live, added, epoch, 0.2 + 0.1 * index + 0.01 * epoch)
    (Path(before[0].path) / "result.json").open("a").write('{"epoch": 4, "valid_nd')  # cut short by a kill

    resumed, forgetful = scheduler(), scheduler()  # a resume gets the scheduler as pickled at the start
    for added in before:
        resumed.on_trial_add(None, added)  # the rungs are refilled from the result files

    decisions: dict[str, list[str]] = {"live": [], "resumed": [], "forgetful": []}
    for index, ndcg in enumerate((0.1, 0.45, 0.25, 0.6, 0.35)):
        for name, asha in (("live", live), ("resumed", resumed), ("forgetful", forgetful)):
            newcomer = trial(tmp_path / name, f"new{index}")
            asha.on_trial_add(None, newcomer)
            decisions[name].append(report(asha, newcomer, 1, ndcg))
    assert decisions["resumed"] == decisions["live"]
    assert decisions["live"][0] == TrialScheduler.STOP
    assert decisions["forgetful"][0] == TrialScheduler.CONTINUE  # empty rungs let the weak newcomer through


def test_a_model_with_its_own_grace_period_is_judged_later(tmp_path: Path) -> None:
    asha = PerModelASHA(time_attr=TIME_ATTR, max_t=9, grace_period=1, reduction_factor=3,
                        per_model={"autorec": {"grace_period": 3, "max_t": 6}})
    asha.set_search_properties(METRIC, "max")
    fast, slow = ([trial(tmp_path, f"{model}{index}", model) for index in range(2)] for model in ("multvae", "autorec"))
    for added in (*fast, *slow):
        asha.on_trial_add(None, added)
    assert [report(asha, added, 1, ndcg) for added, ndcg in zip(fast, (0.5, 0.1))] == [
        TrialScheduler.CONTINUE, TrialScheduler.STOP]  # Mult-VAE's first rung is at epoch 1
    # AutoRec's first rung is at epoch 3: a poor start is not judged, and its trials end at their own max_t 6
    assert [report(asha, added, 1, ndcg) for added, ndcg in zip(slow, (0.5, 0.1))] == [TrialScheduler.CONTINUE] * 2
    assert [report(asha, added, 3, ndcg) for added, ndcg in zip(slow, (0.5, 0.1))] == [
        TrialScheduler.CONTINUE, TrialScheduler.STOP]
    assert report(asha, slow[0], 5, 0.6) == TrialScheduler.CONTINUE
    assert report(asha, slow[0], 6, 0.6) == TrialScheduler.STOP  # its own max_t
    assert report(asha, fast[0], 6, 0.6) == TrialScheduler.CONTINUE  # the study's max_t is 9
