"""study.json and best.json as typed records: what a `raycf tune` run directory says of its study and of its
best trial, written once by the driver and read back by a resume, the report, scoring and tracking."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from raycf.data.spec import DataSpec
from raycf.eval.metrics import Selection
from raycf.runs.layout import BEST_FILE, STUDY_FILE
from raycf.storage.json_text import json_text
from raycf.storage.location import Location


@dataclass(frozen=True)
class SelectRecord:
    """Robust selection: each model's `top` configurations trained again on every split seed in `seeds`."""

    top: int
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class StudyRecord:
    """study.json: the study a run directory holds, as resumes, reports and trackers need it."""

    name: str
    study_file: str
    seed: int
    data: str
    """The data source in words (a ratings path or a dataset name)."""
    data_spec: DataSpec
    fractions: tuple[float, float, float]
    selection: Selection
    """The validation metric, its mode and the report metrics (study.json's `metric`, `mode`, `report_metrics`)."""
    scheduler: str
    max_t: int
    cpus_per_trial: float
    gpus_per_trial: float
    num_samples: int
    models: tuple[str, ...]
    repeat_seeds: tuple[int, ...] = ()
    select: SelectRecord | None = None
    checkpoint_every: int | None = None
    searcher: dict[str, Any] | None = None
    """The searcher's type and the options it used (None in runs older than searchers)."""
    tracking: dict[str, Any] | None = None
    """`mlflow` (a tracking URI or None) and `tensorboard` (None: no tracking)."""
    searched: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
    """Each model's searched hyperparameters (what names a trial in the dashboard and the console)."""

    @property
    def mlflow(self) -> str | None:
        """The MLflow tracking URI the study logs to, if any."""
        return (self.tracking or {}).get("mlflow")

    def to_json(self) -> dict[str, Any]:
        """study.json's content."""
        return {
            "study_file": self.study_file, "name": self.name, "seed": self.seed, "data": self.data,
            "fractions": list(self.fractions), "metric": self.selection.label,
            "report_metrics": [metric.label for metric in self.selection.report], "mode": self.selection.mode,
            "scheduler": self.scheduler, "max_t": self.max_t, "cpus_per_trial": self.cpus_per_trial,
            "gpus_per_trial": self.gpus_per_trial, "num_samples": self.num_samples, "models": list(self.models),
            "data_spec": dataclasses.asdict(self.data_spec), "repeat_seeds": list(self.repeat_seeds),
            "select": None if self.select is None else {"top": self.select.top, "seeds": list(self.select.seeds)},
            "checkpoint_every": self.checkpoint_every, "searcher": self.searcher, "tracking": self.tracking,
            "searched": {model: list(names) for model, names in self.searched.items()},
        }

    @classmethod
    def from_json(cls, facts: dict[str, Any]) -> StudyRecord:
        """The record of a study.json (older runs lack the later keys: their defaults apply; a bare metric name
        means k = 5)."""
        spec = dict(facts["data_spec"])
        if spec.get("time_cuts") is not None:
            spec["time_cuts"] = tuple(spec["time_cuts"])
        select = facts.get("select")
        return cls(
            name=facts["name"], study_file=facts["study_file"], seed=facts["seed"], data=facts["data"],
            data_spec=DataSpec(**spec), fractions=tuple(facts["fractions"]),  # type: ignore[arg-type]
            selection=Selection.parse(facts["metric"], facts["mode"], ",".join(facts.get("report_metrics", []))),
            scheduler=facts["scheduler"], max_t=facts["max_t"], cpus_per_trial=facts["cpus_per_trial"],
            gpus_per_trial=facts["gpus_per_trial"], num_samples=facts["num_samples"],
            models=tuple(facts["models"]), repeat_seeds=tuple(facts.get("repeat_seeds", ())),
            select=None if not select else SelectRecord(select["top"], tuple(select["seeds"])),
            checkpoint_every=facts.get("checkpoint_every"), searcher=facts.get("searcher"),
            tracking=facts.get("tracking"),
            searched={model: tuple(names) for model, names in facts.get("searched", {}).items()},
        )

    @classmethod
    def read(cls, run: Location) -> StudyRecord | None:
        """The record in run directory `run`; None where it has no study.json (a `raycf train` output)."""
        return cls.from_json(json.loads(run.read_bytes(STUDY_FILE))) if run.has(STUDY_FILE) else None

    def write(self, run: Location) -> None:
        run.write_bytes(STUDY_FILE, json_text(self.to_json()).encode())


@dataclass(frozen=True)
class BestRecord:
    """best.json: the study's best trial (by robust selection's mean where the study has one) and the run's
    totals. The file holds more (its `config`, `stopped_by`, ...), which `facts` keeps whole."""

    model: str
    trial_id: str
    checkpoint: str
    """Relative to the run directory (absolute in older runs)."""
    best_epoch: int
    valid: dict[str, float]
    seconds: float
    facts: dict[str, Any]

    @classmethod
    def from_json(cls, facts: dict[str, Any]) -> BestRecord:
        return cls(model=facts["model"], trial_id=facts["trial_id"], checkpoint=facts["checkpoint"],
                   best_epoch=facts["best_epoch"], valid=facts["valid"], seconds=facts["seconds"], facts=facts)

    @classmethod
    def read(cls, run: Location) -> BestRecord | None:
        """The record in run directory `run`; None where the study has no finished trial yet."""
        return cls.from_json(json.loads(run.read_bytes(BEST_FILE))) if run.has(BEST_FILE) else None

    def write(self, run: Location) -> None:
        run.write_bytes(BEST_FILE, json_text(self.facts).encode())
