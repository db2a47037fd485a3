"""`raycf score`: a Ray Data batch job that ranks every user's unseen items with one checkpoint.

The users (raw id and their train / validation / test item lists) form a Ray dataset; a pool of scorer
actors, each holding the model (sent once through the object store), turns batches of users into their
top-k lists and test metrics. Every input is checked before the first Ray call (`prepare_scoring`); the
outputs are staged and committed at the end (`ScoringJob.run`; a rename locally, a pointer object on an
object store: see raycf.storage.location), by one run at a time where the output is local (a lock file beside it).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import torch
from ray.data.exceptions import ExecutionTimeoutError
from ray.exceptions import (
    GetTimeoutError,
    NodeDiedError,
    ObjectLostError,
    RayActorError,
    WorkerCrashedError,
)
from scipy.sparse import csr_matrix

from raycf.data.source import load_split
from raycf.data.split import MASK_PROTOCOLS, Split
from raycf.errors import RaycfError
from raycf.eval.metrics import (
    METRICS,
    MetricAt,
    exact_mean,
    exact_sum,
    hits_at_k,
    metrics_at,
    user_metrics,
)
from raycf.eval.ranking import item_popularity, recommend_rows
from raycf.integrations.mlflow_runs import log_scoring
from raycf.models import Recommender
from raycf.models.checkpoint import check_same_split, checkpoint_from_bytes
from raycf.runs.layout import (
    SCORES_DIR,
    SPLIT_DIR,
    SUMMARY_JSON,
    SUMMARY_PARQUET,
    TOPK_DIR,
    USER_METRICS_DIR,
)
from raycf.runs.targets import RunTarget, read_checkpoint_bytes, resolve_target
from raycf.score.monitoring import ScoringMetrics
from raycf.storage.atomic import DirectoryLock, PendingOutput
from raycf.storage.json_text import json_text
from raycf.storage.location import POINTER_FILE, VERSION_PREFIX, Location, parquet_bytes

USER_METRIC_COLUMNS = ("user_id", "n_test", "hits", *METRICS)
"""user_metrics/'s columns; the report metrics follow, by label (`recall@20`)."""


def list_column(matrix: csr_matrix) -> pa.Array:
    """CSR rows as an Arrow list<int32> column (item indices)."""
    return pa.ListArray.from_arrays(pa.array(matrix.indptr.astype(np.int32)), pa.array(matrix.indices.astype(np.int32)))


def user_table(split: Split, rows: np.ndarray) -> pa.Table:
    """One row per user: raw id, the user's input (train items, or a held-out user's fold-in: Split.inputs),
    validation and test item indices."""
    return pa.table({
        "user_id": pa.array(split.user_ids[rows]),
        "train": list_column(split.inputs("score")[rows]),
        "valid": list_column(split.valid[rows]),
        "test": list_column(split.test[rows]),
    })


def select_users(split: Split, users_file: str | None) -> np.ndarray:
    """Row indices of the users to score: all, or the raw ids listed one per line in `users_file`."""
    if users_file is None:
        return np.arange(split.n_users)
    path = Path(users_file)
    try:
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise RaycfError(f"{path}: cannot read the --users file ({error}); pass a file of raw user ids, "
                         "one per line") from None
    if not lines:
        raise RaycfError(f"{path}: no user ids in the --users file; list raw user ids, one per line")
    kind = split.user_ids.dtype
    try:
        wanted = np.array(lines, dtype=kind if kind.kind in "iu" else object)
    except ValueError:
        raise RaycfError(f"{path}: user ids must be integers like the split's (e.g. {split.user_ids[0]})") from None
    position = np.searchsorted(split.user_ids, wanted)
    found = (position < split.n_users) & (split.user_ids[np.minimum(position, split.n_users - 1)] == wanted)
    if not found.all():
        first = int(np.flatnonzero(~found)[0])
        raise RaycfError(f"{path}: line {first + 1}: unknown user id {lines[first]!r} "
                         f"({int((~found).sum())} unknown); list users of the run's split")
    return np.unique(position)


def lists_to_csr(column: pa.ChunkedArray | pa.Array, n_items: int) -> csr_matrix:
    """An Arrow list<int32> column back into a CSR of ones."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    offsets = array.offsets.to_numpy()
    indices = array.flatten().to_numpy()
    data = np.ones(len(indices), dtype=np.float32)
    return csr_matrix((data, indices, offsets - offsets[0]), shape=(len(array), n_items))


class Scorer:
    """Ray Data actor: holds the model; batch of users -> top-k lists (the training set's most popular items for
    a user without any input item, flagged) and per-user test metrics."""

    def __init__(
        self, checkpoint: list[ray.ObjectRef], item_ids: np.ndarray, popularity: np.ndarray, k: int, mask: str,
        threads: int, device: str, report: tuple[MetricAt, ...] = (),
    ) -> None:
        self.model, _ = checkpoint_from_bytes(ray.get(checkpoint[0]), "checkpoint")
        torch.set_num_threads(threads)
        self.device = device
        self.model.to(device)
        self.item_ids, self.popularity, self.k, self.mask, self.report = item_ids, popularity, k, mask, report
        self.depth = max([k, *(metric.k for metric in report)])
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        n_items = len(self.item_ids)
        train = lists_to_csr(batch["train"], n_items)
        test = lists_to_csr(batch["test"], n_items)
        known = train if self.mask == "train" else (train + lists_to_csr(batch["valid"], n_items)).tocsr()
        ranked, ranked_scores, fallback = recommend_rows(self.model, train, known, self.depth, self.popularity)
        top, top_scores = ranked[:, :self.k].cpu().numpy(), ranked_scores[:, :self.k].cpu().numpy()
        ranked_hits = hits_at_k(ranked.cpu().numpy(), test)
        hits = ranked_hits[:, :self.k]
        n_test = np.diff(test.indptr)
        per_user = {**user_metrics(hits, n_test, self.k), **metrics_at(ranked_hits, n_test, self.report)}
        valid_slot = top >= 0
        lengths = valid_slot.sum(axis=1)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
        return pa.table({
            "user_id": batch["user_id"],
            "n_test": pa.array(n_test.astype(np.int32)),
            "hits": pa.array(hits.sum(axis=1).astype(np.int32)),
            **{name: pa.array(values, mask=n_test == 0) for name, values in per_user.items()},  # null: no test item
            "items": pa.ListArray.from_arrays(pa.array(offsets), pa.array(self.item_ids[top[valid_slot]])),
            "scores": pa.ListArray.from_arrays(pa.array(offsets), pa.array(top_scores[valid_slot].astype(np.float32))),
            "fallback": pa.array(fallback),
            "node_id": pa.array([self.node_id] * batch.num_rows),
        })


def explode_topk(batch: pa.Table) -> pa.Table:
    """Per-user lists -> one row per (user, rank), with the user's cold-start flag."""
    items = batch["items"].combine_chunks()
    lengths = np.diff(items.offsets.to_numpy())
    ranks = np.concatenate([np.arange(1, n + 1) for n in lengths]) if len(lengths) else np.array([], dtype=int)
    return pa.table({
        "user_id": pa.array(np.repeat(batch["user_id"].to_numpy(), lengths)),
        "rank": pa.array(ranks.astype(np.int16)),
        "item_id": items.flatten(),
        "score": batch["scores"].combine_chunks().flatten(),
        "fallback": pa.array(np.repeat(batch["fallback"].to_numpy(zero_copy_only=False), lengths)),
    })


@dataclass(frozen=True)
class ScoreOptions:
    out: str | None = None
    """Output directory (path or URI); default RUN_DIR/scores."""
    k: int = 5
    batch_size: int = 1024
    actors: int = 2
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    mask: str = "train"
    users: str | None = None
    report: tuple[MetricAt, ...] | None = None
    """Metrics beside P/R/NDCG/MRR@k in user_metrics/ and the summary; None: the run's own report metrics."""
    stall_timeout_s: float = 600.0
    """Fail when the job makes no progress this long, e.g. the actor of a lost node has nowhere to restart
    (waiting for the actors to start counts too)."""


@dataclass
class Tally:
    """Running sums over the scored batches: users, users with a test item, exact metric sums, nodes."""

    k: int
    names: tuple[str, ...] = METRICS
    """The per-user metric columns summed: P/R/NDCG/MRR at k, then the report metrics' labels."""
    users: int = 0
    evaluated: int = 0
    sums: dict[str, int] = field(default_factory=dict)
    nodes: set[str] = field(default_factory=set)

    def add(self, batch: pa.Table) -> None:
        with_test = batch["n_test"].to_numpy() > 0
        self.users += batch.num_rows
        self.evaluated += int(with_test.sum())
        for name in self.names:
            self.sums[name] = self.sums.get(name, 0) + exact_sum(batch[name].to_numpy()[with_test])
        self.nodes.update(batch["node_id"].unique().to_pylist())

    def summary(self) -> dict[str, Any]:
        """Means over users with at least one test item, and who was left out of them and why."""
        return {
            **{name: exact_mean(self.sums.get(name, 0), self.evaluated) for name in self.names},
            "k": self.k,
            "users_scored": self.users,
            "users_evaluated": self.evaluated,
            "users_skipped": {"no_test_items": self.users - self.evaluated},
            "nodes": sorted(self.nodes),
        }


@contextmanager
def failures_explained(out: Location, options: ScoreOptions) -> Iterator[None]:
    """A full disk, an unwritable output and a stalled or broken cluster as one-line RaycfErrors."""
    as_it_was = f"{out.uri} is left as it was"
    try:
        yield
    except ExecutionTimeoutError:
        raise RaycfError(
            f"scoring made no progress for {options.stall_timeout_s:g} s: a scorer actor has nowhere to (re)start, "
            f"e.g. a node was lost and no node left has {options.cpus_per_actor:g} CPU and "
            f"{options.gpus_per_actor:g} GPU free; add a node or lower --actors / --cpus-per-actor / "
            f"--gpus-per-actor, and run again ({as_it_was})") from None
    except GetTimeoutError:
        raise RaycfError(
            f"the cluster could not start {options.actors} scorer actors of {options.cpus_per_actor:g} CPU and "
            f"{options.gpus_per_actor:g} GPU within {options.stall_timeout_s:g} s; lower --actors / "
            f"--cpus-per-actor / --gpus-per-actor or add nodes ({as_it_was})") from None
    except (RayActorError, ObjectLostError, NodeDiedError, WorkerCrashedError) as error:
        raise RaycfError(f"scoring lost work on the cluster ({str(error).splitlines()[0]}); run again "
                         f"({as_it_was})") from None
    except OSError as error:
        if error.errno is None:
            raise
        raise RaycfError(f"{out.uri}: cannot write the output ({os.strerror(error.errno)}); free some space or "
                         f"choose another --out ({as_it_was})") from None


SCORING_OUTPUT = frozenset({TOPK_DIR, USER_METRICS_DIR, SUMMARY_JSON, SUMMARY_PARQUET, POINTER_FILE})
"""What a committed scoring output holds (on an object store: a pointer and `v-*` versions)."""


def check_replaceable(out: Location) -> None:
    """A scoring replaces its output whole: refuse an --out that holds anything but an earlier scoring output (a
    run directory, its split, a folder of runs, a file), which that would delete."""
    try:
        info = out.filesystem.get_file_info(out.path)
        if info.type == pafs.FileType.NotFound:
            return
        if info.type != pafs.FileType.Directory:
            raise RaycfError(f"--out {out.uri}: a file, not a directory; give a new directory for the scoring output")
        names = sorted(entry.base_name for entry in out.filesystem.get_file_info(pafs.FileSelector(out.path)))
    except OSError as error:
        raise RaycfError(f"--out {out.uri}: cannot read what is there ({str(error).splitlines()[0]}); choose "
                         "another --out") from None
    foreign = [name for name in names if name not in SCORING_OUTPUT and not name.startswith(VERSION_PREFIX)]
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise RaycfError(f"--out {out.uri}: holds {shown}, which is no `raycf score` output, and a scoring replaces "
                         "its --out whole; give a new directory (e.g. RUN_DIR/scores-NAME) or an earlier scoring "
                         "output (nothing was written)")


def stage_output(out: Location) -> tuple[DirectoryLock | None, PendingOutput]:
    """Lock a local output (see DirectoryLock), remove staging directories of killed runs, stage a new one.

    Returns the lock (None for an object-store URI, which cannot be locked) and the pending output."""
    out.check_access("--out")
    check_replaceable(out)
    lock = DirectoryLock(Path(out.path)) if not out.is_object_store else None
    try:
        if lock is not None:
            lock.path.parent.mkdir(parents=True, exist_ok=True)
            lock.acquire()
            for leftover in lock.path.parent.glob(f"{glob.escape(lock.directory.name)}.tmp-{'?' * 8}"):
                shutil.rmtree(leftover)
        pending = PendingOutput.begin(out)
    except OSError as error:
        if lock is not None:
            lock.release()
        raise RaycfError(f"{out.uri}: cannot write the output there ({str(error).splitlines()[0]}); choose "
                         "another --out") from None
    return lock, pending


class ScoreResult(NamedTuple):
    """What a scoring job wrote: the output directory (path or URI) and its summary.json content."""

    out: str
    summary: dict[str, Any]


@dataclass
class ScoringJob:
    """A scoring job whose inputs are read and checked and whose output is staged (and locked when local),
    before any Ray call. `run` scores and releases; `release` alone gives the output back unused."""

    options: ScoreOptions
    target: RunTarget
    split: Split
    rows: np.ndarray
    checkpoint: bytes
    model: Recommender
    checkpoint_epoch: int | None
    output: PendingOutput
    lock: DirectoryLock | None

    def run(self, progress: Callable[[int, int], None] | None = None) -> ScoreResult:
        """Score every selected user once, write topk/, user_metrics/ and the summary, move them into place.

        Returns the output's location and the summary; the staging directory and the lock are released
        whatever happens."""
        started = time.perf_counter()
        staged = self.output.staged
        try:
            with failures_explained(self.output.final, self.options):
                summary = _score(self.split, self.rows, self.checkpoint, self.options, staged, progress)
                seconds = time.perf_counter() - started
                summary.update({
                    "mask": self.options.mask,
                    "model": self.model.name,
                    "trial_id": self.target.trial_id,
                    "hyperparameters": self.model.config.to_dict(),
                    "checkpoint": self.target.checkpoint,
                    "checkpoint_epoch": self.checkpoint_epoch,
                    "dataset": self.split.manifest["source"],
                    "split_sha256": self.split.manifest["split_sha256"],
                    "seconds": round(seconds, 3),
                    "users_per_second": round(summary["users_scored"] / seconds, 1),
                })
                flat = {key: json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else value
                        for key, value in summary.items()}
                staged.write_bytes(SUMMARY_PARQUET, parquet_bytes(pd.DataFrame([flat])))
                staged.write_bytes(SUMMARY_JSON, json_text(summary).encode())
                self.output.commit()
        finally:
            self.release()
        log_scoring(self.target.run, self.output.final, [SUMMARY_JSON, SUMMARY_PARQUET], self.test_metrics(summary),
                    self.model.name, self.target.trial_id, self.checkpoint_epoch)  # a tracked study's (else nothing)
        return ScoreResult(self.output.final.uri, summary)

    def test_metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        """The summary's test metrics by label: P/R/NDCG/MRR at k (`ndcg@5`), then the report metrics."""
        at_k = {f"{name}@{self.options.k}": summary[name] for name in METRICS}
        return {**at_k, **{metric.label: summary[metric.label] for metric in self.options.report or ()}}

    def release(self) -> None:
        """Remove the staging directory (when still there) and the lock."""
        self.output.discard()
        if self.lock is not None:
            self.lock.release()


def prepare_scoring(
    run_dir: str, options: ScoreOptions, model: str | None = None, trial: str | None = None
) -> ScoringJob:
    """Every check of a scoring job, before any Ray call: options, target, split, checkpoint, --users,
    and the output location (created, locked, staged). RaycfError on the first that fails."""
    if options.mask not in MASK_PROTOCOLS:
        raise RaycfError(f"--mask must be one of {', '.join(MASK_PROTOCOLS)}, got {options.mask!r}")
    target = resolve_target(run_dir, model, trial)
    with tempfile.TemporaryDirectory() as local:
        if not target.run.has(f"{SPLIT_DIR}/manifest.json"):
            raise RaycfError(f"{target.run.uri}: no {SPLIT_DIR}/ beside the checkpoint; score a run directory")
        split = load_split(target.run.get_directory(SPLIT_DIR, Path(local)))
    checkpoint_bytes = read_checkpoint_bytes(target.checkpoint)
    scored_model, meta = checkpoint_from_bytes(checkpoint_bytes, target.checkpoint, expect_items=split.n_items)
    check_same_split(meta, split.manifest["split_sha256"], target.checkpoint)
    rows = select_users(split, options.users)
    if options.report is None:
        options = dataclasses.replace(options, report=target.report_metrics())
    out = Location.of(options.out or f"{target.run.uri}/{SCORES_DIR}", "")
    lock, output = stage_output(out)
    return ScoringJob(options, target, split, rows, checkpoint_bytes, scored_model, meta.get("epoch"), output, lock)


def run_scoring(
    run_dir: str, options: ScoreOptions, model: str | None = None, trial: str | None = None
) -> ScoreResult:
    """`prepare_scoring` then `ScoringJob.run`: the output's location and the summary."""
    return prepare_scoring(run_dir, options, model, trial).run()


def _score(split: Split, rows: np.ndarray, checkpoint: bytes, options: ScoreOptions, staged: Location,
           progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """The Ray Data pipeline: users -> scorer actor pool -> streamed into topk/ and user_metrics/ Parquet;
    `progress(scored, total)` after each batch (then Ray Data's own progress display is off).

    The driver only ever holds one batch of top-k lists; the scores never leave the actors.
    """
    table = user_table(split, rows)
    block = max(options.batch_size, -(-table.num_rows // (4 * options.actors)))
    blocks = [table.slice(start, block) for start in range(0, table.num_rows, block)]
    actors = max(1, min(options.actors, len(blocks)))  # an actor without a block would only start and idle
    users = ray.data.from_arrow(blocks)
    users.context.execution_no_progress_timeout_s = options.stall_timeout_s
    users.context.wait_for_min_actors_s = int(options.stall_timeout_s)  # all actors up before work: it spreads
    users.context.enable_progress_bars = progress is None
    scored = users.map_batches(
        Scorer,
        fn_constructor_kwargs={
            "checkpoint": [ray.put(checkpoint)],
            "item_ids": split.item_ids,
            "popularity": item_popularity(split.train),
            "k": options.k,
            "mask": options.mask,
            "threads": max(1, int(options.cpus_per_actor)),
            "device": "cuda" if options.gpus_per_actor > 0 else "cpu",
            "report": options.report or (),
        },
        batch_size=options.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors),
        num_cpus=options.cpus_per_actor,
        num_gpus=options.gpus_per_actor,
    )
    report = tuple(metric.label for metric in options.report or ())
    tally = Tally(options.k, (*METRICS, *report))
    gauges = ScoringMetrics(staged.uri)
    writers: dict[str, pq.ParquetWriter] = {}
    try:
        for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow"):
            assert isinstance(batch, pa.Table)  # batch_format pyarrow
            per_user = batch.select([*USER_METRIC_COLUMNS, *report])
            for name, part in ((USER_METRICS_DIR, per_user), (TOPK_DIR, explode_topk(batch))):
                if name not in writers:
                    staged.filesystem.create_dir(f"{staged.path}/{name}", recursive=True)
                    writers[name] = pq.ParquetWriter(f"{staged.path}/{name}/part-0.parquet", part.schema,
                                                     filesystem=staged.filesystem)
                writers[name].write_table(part)
            tally.add(batch)
            gauges.add(batch.num_rows)
            if progress is not None:
                progress(tally.users, len(rows))
    finally:
        for writer in writers.values():
            writer.close()
    return {**tally.summary(), "actors": actors}
