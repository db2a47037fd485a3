"""The names of raycf's output files and directories, and the write-up's reference figures, in one light module
(no Ray, no torch): the modules that write the files and those that read them learn the names here."""

from __future__ import annotations

# a split, in every run directory
SPLIT_DIR = "split"

# raycf train --out DIR
CHECKPOINT_NAME = "checkpoint.pt"
METRICS_FILE = "metrics.json"

# raycf tune: the run directory
STUDY_FILE = "study.json"
LEADERBOARD_FILE = "leaderboard.parquet"
TRIALS_FILE = "trials.parquet"
BEST_FILE = "best.json"
RETRIES_FILE = "retries.json"
"""Each trial's failures (retries) by trial directory name, written by the driver when the study ends."""
REPEATS_FILE = "repeats.parquet"
REPEATS_SUMMARY = "repeats.json"
SELECT_FILE = "select.parquet"
# raycf tune: a trial checkpoint directory
MODEL_FILE = "model.pt"
STATE_FILE = "trainer.pt"
ENDED_FILE = "ended.json"
"""Written into the last checkpoint of a trial that Tune ended (ASHA stop or its own end)."""

# raycf score --out DIR (default RUN_DIR/scores)
SCORES_DIR = "scores"
TOPK_DIR = "topk"
USER_METRICS_DIR = "user_metrics"
SUMMARY_JSON = "summary.json"
SUMMARY_PARQUET = "summary.parquet"

# raycf report (into the run directory) and raycf compare --out DIR
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
CURVES_PNG = "report_learning_curves.png"
HYPERPARAMETERS_PNG = "report_hyperparameters.png"
COMPARE_JSON = "compare.json"
COMPARE_MD = "compare.md"

REFERENCE_K = 5
REFERENCE = {
    "autorec": {"precision": 0.2707, "recall": 0.0724, "ndcg": 0.2807, "mrr": 0.4715},
    "multvae": {"precision": 0.2718, "recall": 0.0771, "ndcg": 0.2819, "mrr": 0.4747},
}
"""The write-up's test metrics on ML-1M (k = REFERENCE_K, train-only masking)."""
