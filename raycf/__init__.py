"""raycf: recommender-system hyperparameter studies and batch scoring on Ray.

Python API: `raycf.load(path)` (raycf.api.load) returns a trained model whose `recommend(histories, k)` takes
and gives raw item ids; `raycf.serve(run)` (raycf.serving.deploy.serve) serves a run over HTTP with Ray Serve;
`raycf.RaycfError` is what every refusal raises; `raycf.train.trainer.run_training`,
`raycf.tune.driver.run_study` and `raycf.score.job.run_scoring` run the commands' jobs and return typed results
(TrainRun, StudyResult, ScoreResult).
"""

from __future__ import annotations

from typing import Any

from raycf.errors import RaycfError

__version__ = "0.1.0"
__all__ = ["RaycfError", "load", "serve"]


def __getattr__(name: str) -> Any:
    """`raycf.load` and `raycf.serve`, imported on first use so that `import raycf` stays light (no torch, no Ray)."""
    if name == "load":
        from raycf.api import load

        return load
    if name == "serve":
        from raycf.serving.deploy import serve

        return serve
    raise AttributeError(f"module 'raycf' has no attribute {name!r}")


def __dir__() -> list[str]:
    """The public API (for tab completion) beside the module's own names."""
    return sorted({*globals(), *__all__})
