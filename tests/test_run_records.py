"""study.json and best.json as typed records (raycf.runs.record): what the driver writes is what every reader
gets back, and study.json files of older runs still read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raycf.runs.record import BestRecord, SelectRecord, StudyRecord
from raycf.storage.location import Location
from raycf.study.schema import load_study
from raycf.tune.driver import study_record

STUDIES = Path(__file__).resolve().parents[1] / "studies"


@pytest.mark.parametrize("name", ["quickstart", "ml1m-strong", "ml1m-baselines", "ml1m-search"])
def test_a_study_record_round_trips_through_study_json(name: str, tmp_path: Path) -> None:
    study = load_study(STUDIES / f"{name}.yaml", check_ratings=False)
    record = study_record(study)
    record.write(Location.of(str(tmp_path), ""))
    read = StudyRecord.read(Location.of(str(tmp_path), ""))
    assert read == record
    assert read.selection == study.selection  # metric, mode and the report metrics, in one place
    assert read.data_spec == study.data and read.models == tuple(search.model for search in study.models)
    facts = json.loads((tmp_path / "study.json").read_text())
    assert (facts["metric"], facts["mode"], facts["report_metrics"]) == (
        study.metric, study.mode, list(study.report_metrics))


def test_an_older_study_json_reads_with_the_later_keys_defaulted(tmp_path: Path) -> None:
    """A run written before searchers, robust selection, tracking and report metrics: a bare metric name."""
    record = study_record(load_study(STUDIES / "quickstart.yaml", check_ratings=False))
    facts = record.to_json()
    for key in ("report_metrics", "select", "searcher", "tracking", "checkpoint_every", "repeat_seeds"):
        del facts[key]
    facts["metric"] = "ndcg"
    old = StudyRecord.from_json(facts)
    assert old.selection.label == "ndcg@5" and old.selection.report == ()
    assert (old.select, old.searcher, old.tracking, old.mlflow, old.repeat_seeds) == (None, None, None, None, ())
    selected = StudyRecord.from_json({**record.to_json(), "select": {"top": 3, "seeds": [0, 1]}})
    assert selected.select == SelectRecord(3, (0, 1))


def test_a_run_without_records_reads_none(tmp_path: Path) -> None:
    run = Location.of(str(tmp_path), "")
    assert StudyRecord.read(run) is None and BestRecord.read(run) is None
    (tmp_path / "best.json").write_text(json.dumps({
        "model": "ease", "trial_id": "t1", "checkpoint": "x/model.pt", "best_epoch": 1,
        "valid": {"ndcg": 0.3}, "seconds": 2.5, "stopped_by": {"complete": 1}}))
    best = BestRecord.read(run)
    assert (best.model, best.checkpoint, best.valid, best.facts["stopped_by"]) == (
        "ease", "x/model.pt", {"ndcg": 0.3}, {"complete": 1})
