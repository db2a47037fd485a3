"""Bad input, in one table: each case goes through the real CLI and must exit with status 2 and one
`raycf: error:` line on stderr that names the culprit and a way out, with no traceback, and write nothing.

Cases that do not score must be refused before Ray starts (they run as if no Ray ran yet, and `ray.init`
fails the test); scoring cases run against the session's Ray, so the CLI starts no other.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import ray
import torch
from conftest import run_raycf, write_code_pickle

from raycf.data.spec import DataSpec
from raycf.models import build_model
from raycf.models.checkpoint import save_checkpoint
from raycf.models.config import TrainConfig
from raycf.train.memory import MEMORY_LIMIT_ENV
from raycf.train.trainer import run_training

Args = Callable[[Path], list[str]]
"""Writes a case's files under the given directory and returns the command line."""

GOOD = "1::2::5::978300760\n"
STUDY = "name: s\ndata: {dataset: synthetic}\n"
MULTVAE = "models:\n  multvae: {}\n"
MARKER = "code-ran"
"""Created in the case's directory if a checkpoint's pickled code ever runs."""
GPUS = str(torch.cuda.device_count() + 1)
"""One GPU more than torch sees on this machine: what a local Ray could never provide."""


@dataclass(frozen=True)
class Case:
    args: Args
    where: str
    """Names the offending file, line or field."""
    fix: str
    """The way out the message gives."""
    scores: bool = False
    """Reaches the scorer: needs the session's Ray and a `raycf train` run at DIR/run."""


def train(text: str | bytes | None, *options: str) -> Args:
    """`raycf train` on a ratings file r.dat holding `text` (None: no file)."""

    def args(tmp: Path) -> list[str]:
        ratings = tmp / "r.dat"
        if text is not None:
            ratings.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["train", "--model", "multvae", "--ratings", str(ratings), *options,
                "--out", str(tmp / "out"), "--max-epochs", "1", "--quiet"]

    return args


def synthetic(*options: str) -> Args:
    """`raycf train` of popularity on the built-in synthetic data (2,000 users, no timestamps)."""
    return lambda tmp: ["train", "--model", "pop", "--dataset", "synthetic", *options, "--out", str(tmp / "out")]


def tune(study: str | None, *options: str) -> Args:
    """`raycf tune` on a study file s.yaml holding `study` (None: no file)."""

    def args(tmp: Path) -> list[str]:
        path = tmp / "s.yaml"
        if study is not None:
            path.write_text(study)
        return ["tune", str(path), *options, "--storage", str(tmp / "out")]

    return args


def score(*options: str, breaking: Callable[[Path], None] | None = None) -> Args:
    """`raycf score` on the run at DIR/run, its checkpoint.pt first broken by `breaking`."""

    def args(tmp: Path) -> list[str]:
        if breaking is not None:
            breaking(tmp / "run" / "checkpoint.pt")
        return ["score", str(tmp / "run"), *(option.format(tmp=tmp) for option in options)]

    return args


def command(*argv: str) -> Args:
    """A command line as it is, `{tmp}` standing for the case's directory."""
    return lambda tmp: [arg.format(tmp=tmp) for arg in argv]


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:300])


def other_dataset(path: Path) -> None:
    """A valid checkpoint trained on 7 items: the run's split has more."""
    save_checkpoint(path, build_model(TrainConfig.for_model("autorec", hidden=8), 7))


def other_model_weights(path: Path) -> None:
    """The AutoRec checkpoint with Mult-VAE's weights in it."""
    payload = torch.load(path, weights_only=True)
    payload["state_dict"] = build_model(TrainConfig.for_model("multvae", hidden=8), payload["n_items"]).state_dict()
    torch.save(payload, path)


def bare_state_dict(path: Path) -> None:
    """Only the weights, as torch.save(model.state_dict()) writes them."""
    torch.save(torch.load(path, weights_only=True)["state_dict"], path)


def code_pickle(path: Path) -> None:
    write_code_pickle(path, path.parents[1] / MARKER)


def case(case_id: str, args: Args, where: str, fix: str, *, scores: bool = False) -> Any:
    """One row: pytest.param(Case(...), id=case_id)."""
    return pytest.param(Case(args, where, fix, scores), id=case_id)


CASES = [
    # ratings files (raycf train reads and splits them before any training)
    case("ratings-missing", train(None), "r.dat: no such file", "check the path given with --ratings"),
    case("ratings-empty", train(""), "r.dat is empty", "pass a file with at least one rating"),
    case("ratings-binary", train(bytes(range(256)) * 4), "r.dat is binary", "pass --format with one of"),
    case("ratings-wrong-separator", train("1,2,5,978300760\n2,3,4,978300760\n"), "r.dat line 1 has 1 fields",
         "pass --format with one of"),
    case("ratings-wrong-field-count", train(GOOD + "1::3::4\n"), "r.dat line 2 has 3 fields",
         "fix that line"),
    case("ratings-non-numeric-id", train(GOOD + "x::3::4::978300760\n"), "r.dat line 2: user id 'x'",
         "fix or remove that line"),
    case("ratings-negative-rating", train(GOOD + "2::3::-4::978300760\n"), "r.dat line 2: rating '-4'",
         "fix or remove that line"),
    case("ratings-nan-rating", train(GOOD + "2::3::nan::978300760\n"), "r.dat line 2: rating 'nan'",
         "fix or remove that line"),
    case("ratings-unexpected-header", train("UserID::MovieID::Rating::Timestamp\n" + GOOD),
         "r.dat line 1 looks like a header", "use --format csv"),
    case("ratings-one-user", train("1::2::5::1\n1::3::5::1\n1::4::5::1\n"), "r.dat has only one distinct user",
         "at least two users"),
    case("ratings-one-item", train("1::2::5::1\n2::2::5::1\n3::2::5::1\n"), "r.dat has only one distinct item",
         "at least two users and two items"),
    case("ratings-empty-split-part", train("1::2::5::1\n2::3::5::1\n"), "r.dat: the valid part is empty",
         "a larger valid fraction in --split"),
    # study files (refused before Ray starts)
    case("study-unknown-key", tune(STUDY + MULTVAE + "bogus: 1\n"), "s.yaml: bogus: unknown key", "allowed: name,"),
    case("study-wrong-type", tune(STUDY + MULTVAE + "num_samples: many\n"), "s.yaml: num_samples:",
         "must be an integer >= 1"),
    case("study-wrong-field-type", tune(STUDY + "models:\n  multvae: {fixed: {hidden: wide}}\n"),
         "s.yaml: models.multvae.fixed.hidden:", "must be int"),
    case("study-empty-grid", tune(STUDY + "models:\n  multvae: {search: {beta: {grid: []}}}\n"),
         "s.yaml: models.multvae.search.beta.grid:", "must be a non-empty list"),
    case("study-negative-max-t", tune(STUDY + MULTVAE + "scheduler: {max_t: -5}\n"), "s.yaml: scheduler.max_t:",
         "must be >= 1"),
    case("study-negative-max-epochs", tune(STUDY + "models:\n  multvae: {fixed: {max_epochs: -5}}\n"),
         "s.yaml: models.multvae.fixed.max_epochs:", "set scheduler.max_t instead"),
    case("study-grace-period-over-max-t", tune(STUDY + MULTVAE + "scheduler: {max_t: 5, grace_period: 10}\n"),
         "s.yaml: scheduler.grace_period:", "must be <= scheduler.max_t (5)"),
    case("study-unknown-model", tune(STUDY + "models:\n  bpr: {}\n"), "s.yaml: models.bpr: unknown model",
         "choose from multvae, autorec"),
    case("study-unknown-scheduler", tune(STUDY + MULTVAE + "scheduler: {type: pbt}\n"), "s.yaml: scheduler.type:",
         "must be one of asha, fifo"),
    case("study-duplicated-model", tune(STUDY + MULTVAE + "  multvae: {}\n"),
         "s.yaml: models.multvae: duplicate key on line 5", "give each key once"),
    # checkpoints (raycf score on a raycf train run whose checkpoint.pt is broken)
    case("checkpoint-truncated", score(breaking=truncate), "checkpoint.pt: not a readable raycf checkpoint",
         "raycf train", scores=True),
    case("checkpoint-from-another-dataset", score(breaking=other_dataset),
         "checkpoint.pt: checkpoint was trained on 7 items", "score it with the split it was trained on",
         scores=True),
    case("checkpoint-weights-of-another-model", score(breaking=other_model_weights),
         "checkpoint.pt: checkpoint does not fit its model", "raycf train", scores=True),
    case("checkpoint-bare-state-dict", score(breaking=bare_state_dict), "checkpoint.pt: not a raycf checkpoint",
         "raycf train", scores=True),
    case("checkpoint-pickle-with-code", score(breaking=code_pickle), "checkpoint.pt: not a readable raycf checkpoint",
         "raycf train", scores=True),
    # command lines
    case("cli-unknown-train-option", train(GOOD, "--no-such-option"), "--no-such-option", "raycf train --help"),
    case("cli-unknown-score-option", command("score", "{tmp}/run", "--frob"), "--frob", "raycf score --help"),
    case("cli-unknown-model", command("train", "--model", "bpr", "--out", "{tmp}/out"), "'--model'",
         "'multvae', 'autorec'"),
    case("cli-dataset-and-ratings", train(GOOD, "--dataset", "synthetic"), "--dataset and --ratings", "give one"),
    case("cli-model-and-trial", command("score", "{tmp}/run", "--model", "multvae", "--trial", "t1"),
         "--model and --trial", "give one"),
    case("cli-study-and-resume", tune(STUDY + MULTVAE, "--resume", "runs/x"), "STUDY_FILE",
         "or --resume RUN_DIR to continue one (not both)"),
    case("cli-negative-max-epochs", command("train", "--model", "autorec", "--max-epochs", "-1", "--out", "{tmp}/out"),
         "max_epochs", "must be >= 1"),
    # baselines: a hyperparameter of another model, or one out of range
    case("cli-hyperparameter-of-another-model", command("train", "--model", "pop", "--dropout", "0.2", "--out",
                                                         "{tmp}/out"),
         "dropout is not a hyperparameter of pop", "remove it"),
    case("cli-ease-lambda-zero", command("train", "--model", "ease", "--l2", "0", "--out", "{tmp}/out"),
         "l2 must be > 0 for ease", "got 0.0"),
    case("cli-itemknn-no-neighbors", command("train", "--model", "itemknn", "--neighbors", "0", "--out", "{tmp}/out"),
         "neighbors", "must be >= 1"),
    case("cli-ials-no-factors", command("train", "--model", "ials", "--factors", "0", "--out", "{tmp}/out"),
         "factors", "must be >= 1"),
    case("study-hyperparameter-of-another-model", tune(STUDY + "models:\n  pop: {fixed: {l2: 5.0}}\n"),
         "s.yaml: models.pop.fixed.l2: l2 is not a hyperparameter of pop (pop takes no hyperparameters)", "remove it"),
    case("study-ease-lambda-negative", tune(STUDY + "models:\n  ease: {search: {l2: {grid: [-1.0, 10.0]}}}\n"),
         "s.yaml: models.ease.search.l2.grid[0]: l2 must be > 0 for ease", "got -1.0"),
    # protocols: split schemes, filters and metrics that cannot apply
    case("cli-time-split-without-timestamps", synthetic("--scheme", "time"),
         "the time scheme needs a timestamp per record", "name the column with --time-col"),
    case("cli-more-held-out-users-than-exist", synthetic("--scheme", "users", "--heldout-users", "5000"),
         "5,000 validation + 5,000 test users held out of 2,000 users", "hold out fewer users"),
    case("cli-fold-in-outside-0-1", synthetic("--scheme", "users", "--heldout-users", "100", "--fold-in", "1.5"),
         "fold_in must be in (0, 1), got 1.5", "e.g. --fold-in 0.8"),
    case("cli-k-core-leaves-nothing", synthetic("--k-core", "100000"), "--k-core 100000", "lower it"),
    case("cli-unknown-metric", synthetic("--metric", "auc@5"), "unknown metric 'auc@5'",
         "name one of precision, recall, ndcg, mrr, hit_rate, map"),
    case("cli-report-metric-k-below-1", synthetic("--report-metrics", "recall@20,ndcg@0"), "metric 'ndcg@0'",
         "k must be an integer >= 1"),
    case("study-users-scheme-without-held-out-users", tune("name: s\ndata: {dataset: synthetic, scheme: users}\n"
                                                           + MULTVAE), "s.yaml: data.heldout_users",
         "scheme users needs it"),
    case("study-unknown-report-metric", tune(STUDY + MULTVAE + "report_metrics: [recall@20, auc]\n"),
         "s.yaml: report_metrics[1]: unknown metric 'auc'", "use name@k"),
    case("cli-missing-study-file", tune(None), "s.yaml: no such study file", "check the path"),
    case("cli-missing-run-dir", command("score", "{tmp}/nowhere"), "nowhere: not a run directory",
         "expected best.json (raycf tune)", scores=True),
    case("cli-missing-run-dir-before-ray", command("score", "{tmp}/nowhere"), "nowhere: not a run directory",
         "expected best.json (raycf tune)"),
    case("cli-missing-users-file", score("--users", "{tmp}/users.txt"), "users.txt", "one per line", scores=True),
    # resources this machine lacks (a local Ray would wait for them forever; checked before it starts)
    case("cli-gpus-per-actor-without-gpu", score("--gpus-per-actor", GPUS), f"--gpus-per-actor {GPUS}: torch sees",
         "use --gpus-per-actor 0 to run on the CPU, or --address a Ray cluster with GPU nodes"),
    case("cli-gpus-per-trial-without-gpu", tune(STUDY + MULTVAE, "--gpus-per-trial", GPUS),
         f"--gpus-per-trial {GPUS}: torch sees", "use --gpus-per-trial 0"),
    case("study-gpus-per-trial-without-gpu", tune(STUDY + MULTVAE + f"resources: {{gpus_per_trial: {GPUS}}}\n"),
         f"s.yaml: resources.gpus_per_trial: {GPUS}: torch sees", "use --gpus-per-trial 0"),
]


MALFORMED_URIS = {
    "no-bucket": ("s3://", "s3://: no bucket in the URI", "give it as s3://BUCKET/PATH"),
    "empty-bucket": ("s3:///x", "s3:///x: no bucket in the URI", "give it as s3://BUCKET/PATH"),
    "unknown-scheme": ("foo://x", "foo://x: not a path or URI raycf can open", "give a local path, or a URI"),
}
URI_COMMANDS = {
    "train-out": (synthetic(), "--out"),
    "tune-storage": (tune(STUDY + MULTVAE), "--storage"),
    "tune-resume": (command("tune", "--resume", "URI"), None),
    "score-run-dir": (command("score", "URI"), None),
    "score-out": (score(), "--out"),
    "report-run-dir": (command("report", "URI"), None),
    "report-scores": (command("report", "{tmp}/run", "--scores", "URI"), None),
    "compare-scores": (command("compare", "URI", "{tmp}/other", "--out", "{tmp}/cmp"), None),
    "compare-out": (command("compare", "{tmp}/a", "{tmp}/b", "--out", "URI"), None),
}


def with_uri(args: Args, uri: str, option: str | None) -> Args:
    """`args` with its `option` (the last one given: it wins) or its URI placeholder set to `uri`."""
    if option is not None:
        return lambda tmp: [*args(tmp), option, uri]
    return lambda tmp: [uri if arg == "URI" else arg for arg in args(tmp)]


CASES += [
    case(f"uri-{kind}-{name}", with_uri(args, uri, option), where, fix, scores=name == "score-out")
    for kind, (uri, where, fix) in MALFORMED_URIS.items() for name, (args, option) in URI_COMMANDS.items()
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small `raycf train` output (AutoRec on 200 synthetic users x 80 items), copied by scoring cases."""
    out = tmp_path_factory.mktemp("bad-input") / "run"
    run_training(DataSpec(synthetic={"n_users": 200, "n_items": 80}), TrainConfig.for_model("autorec", hidden=8,
                 max_epochs=2), fractions=(0.6, 0.2, 0.2), mask="train", out=out)
    return out


def refuse_ray(*_args: object, **_kwargs: object) -> None:
    raise AssertionError("Ray was started before the input was checked")


def no_ray_yet() -> bool:
    return False


def tree(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*"))


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    bad: Case, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if bad.scores:
        request.getfixturevalue("ray_cluster")
        shutil.copytree(request.getfixturevalue("trained_run"), tmp_path / "run")
    else:
        monkeypatch.setattr(ray, "is_initialized", no_ray_yet)
        monkeypatch.setattr(ray, "init", refuse_ray)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)  # the raycf command would start a local Ray
    argv = bad.args(tmp_path)
    before = tree(tmp_path)
    code = run_raycf(*argv)
    error = capsys.readouterr().err
    assert code == 2, error
    assert error.startswith("raycf: error: ") and error.endswith("\n") and error.count("\n") == 1, error
    assert bad.where in error and bad.fix in error, error
    assert "Traceback" not in error
    assert tree(tmp_path) == before  # no output, no staging directory, no marker of pickled code
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_run_name_in_use_is_refused_before_ray_starts(
    where: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ray, "is_initialized", no_ray_yet)
    monkeypatch.setattr(ray, "init", refuse_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "s.yaml").write_text(STUDY + MULTVAE)
    if where == "local":
        storage = str(tmp_path / "runs")
        (tmp_path / "runs" / "taken").mkdir(parents=True)
        (tmp_path / "runs" / "taken" / "study.json").write_text("{}")
        written = lambda: tree(tmp_path)  # noqa: E731
    else:
        store = request.getfixturevalue("object_store")
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)
        storage = store.uri("dup-runs")
        store.client().put_object(Bucket=store.bucket, Key="dup-runs/taken/study.json", Body=b"{}")
        written = lambda: store.keys("dup-runs/")  # noqa: E731
    before = written()
    code = run_raycf("tune", str(tmp_path / "s.yaml"), "--storage", storage, "--name", "taken")
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1, error
    assert f"raycf: error: {storage}/taken: a run of that name exists; pick another --name" in error
    assert written() == before


EASE_STUDY = """
name: big
data:
  dataset: synthetic
  synthetic: {n_users: 300, n_items: 400}
resources: {cpus_per_trial: 2}
max_failures: 0
models:
  ease:
    search:
      l2: {grid: [10.0, 100.0]}
"""
EASE_NEEDS = 16 * 400 * 400
"""Bytes EASE needs to fit 400 items (raycf.models.ease.fit_bytes)."""


@pytest.mark.parametrize(("limit", "where", "fix"), [
    (str(EASE_NEEDS / 2**30 / 2), "s.yaml: models.ease: ease on 400 items needs", f"or a higher {MEMORY_LIMIT_ENV}"),
    ("lots", f"{MEMORY_LIMIT_ENV}='lots': expected a number of GiB > 0", "unset it"),
], ids=["under-the-need", "not-a-number"])
def test_a_memory_limit_is_checked_before_ray_starts(
    limit: str, where: str, fix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ray, "is_initialized", no_ray_yet)
    monkeypatch.setattr(ray, "init", refuse_ray)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, limit)
    (tmp_path / "s.yaml").write_text(EASE_STUDY)
    code = run_raycf("tune", str(tmp_path / "s.yaml"), "--storage", str(tmp_path / "runs"))
    error = capsys.readouterr().err
    assert code == 2 and error.count("\n") == 1 and where in error and fix in error, error
    assert not (tmp_path / "runs").exists()


def test_a_fit_too_big_for_the_node_that_fits_it_is_refused_there(
    session_cluster, ray_cluster, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """The driver has the memory; the only node with room for a trial (2 CPUs) has less (MEMORY_LIMIT_ENV in its
    raylet's environment): each trial refuses on that node before it builds its model."""
    node = session_cluster.add_node(num_cpus=2, env_vars={MEMORY_LIMIT_ENV: str(EASE_NEEDS / 2**30 / 2)})
    session_cluster.wait_for_nodes()
    try:
        (tmp_path / "s.yaml").write_text(EASE_STUDY)
        code = run_raycf("tune", str(tmp_path / "s.yaml"), "--storage", str(tmp_path), "--name", "run")
    finally:
        session_cluster.remove_node(node)
    error = capsys.readouterr().err
    assert code == 2 and "no trial finished an epoch" in error, error
    trials = pd.read_parquet(tmp_path / "run" / "trials.parquet")
    assert len(trials) == 2 and trials["checkpoint"].isna().all(), trials.to_dict()
    for message in trials["error"]:
        assert f"on node {node.node_id}: ease on 400 items needs 0.0 GiB ({EASE_NEEDS:,} bytes)" in message, message
        assert f"is available here; use a machine with more memory (or a higher {MEMORY_LIMIT_ENV})" in message
