"""Scaling: the quickstart study and a synthetic scoring job on one node against two simulated nodes
(the same total CPUs, and twice the CPUs), with the share of wall time that was not model work.

    python benchmarks/bench_scaling.py [--cpus-per-node 1 --users 50000 --items 5000]

On a machine with fewer cores than the largest layout asks for, that layout is oversubscribed: read
its figures as Ray's overhead under contention, not as a speed-up.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import pandas as pd
import ray
from bench_score import make_run, single_process_rate, timed_scoring
from bench_tune import trial_timings
from ray.cluster_utils import Cluster

from raycf.data.schemes.records import split_interactions
from raycf.data.synthetic import generate_synthetic
from raycf.score.job import ScoreOptions
from raycf.study.schema import load_study
from raycf.tune.driver import TRIALS_FILE, TuneOptions, run_study

STUDY = Path(__file__).resolve().parents[1] / "studies" / "quickstart.yaml"


def start(node_cpus: list[int]) -> Cluster:
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": node_cpus[0], "include_dashboard": False})
    for cpus in node_cpus[1:]:
        cluster.add_node(num_cpus=cpus)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="ERROR", configure_logging=False)
    return cluster


def study_figures(storage: Path, name: str, slots: int) -> str:
    """Wall time, and how much of the trial slots' time was not spent in epochs."""
    started = time.perf_counter()
    run_dir = Path(run_study(load_study(STUDY), TuneOptions(storage=str(storage), name=name, verbose=0)).run_dir)
    wall = time.perf_counter() - started
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    timings = [trial_timings(next(run_dir.glob(f"*{trial_id}*"))) for trial_id in trials["trial_id"]]
    inside = sum(total for total, _, _ in timings)
    work = sum(work for _, work, _ in timings)
    epochs = sum(epochs for _, _, epochs in timings)
    return (f"study {wall:6.1f}s, {epochs} epochs; not model work: {1 - work / (wall * slots):.0%} of "
            f"{slots} slots x wall ({1 - work / inside:.0%} inside the trainables)")


def scoring_figures(run: Path, out: Path, actors: int, users: int, single_rate: float) -> str:
    """Wall time and the share of the actors' time not spent scoring (against one in-process thread)."""
    seconds = timed_scoring(run, ScoreOptions(out=str(out), actors=actors, batch_size=1024))
    compute = users / single_rate
    return (f"scoring {seconds:6.1f}s, {users / seconds:7.0f} users/s with {actors} actors; "
            f"not scoring: {1 - compute / (seconds * actors):.0%} of actors x wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--items", type=int, default=5_000)
    args = parser.parse_args()
    c = args.cpus_per_node
    root = Path(tempfile.mkdtemp(prefix="raycf-bench-scaling-"))
    split = split_interactions(generate_synthetic(n_users=args.users, n_items=args.items, seed=0), seed=0,
                              source="synthetic")
    run = make_run(split, root / "scoring-run")
    print(f"machine: {os.cpu_count()} cores; scoring set {split.n_users} users x {split.n_items} items")
    layouts = {f"1 node x {2 * c} CPU": [2 * c], f"2 nodes x {c} CPU": [c, c], f"2 nodes x {2 * c} CPU": [2 * c, 2 * c]}
    single_rate = 0.0
    for label, node_cpus in layouts.items():
        cluster = start(node_cpus)
        try:
            if not single_rate:
                single_rate = single_process_rate(run, split, 1024)
                print(f"one thread in-process: {single_rate:.0f} users/s")
            total = sum(node_cpus)
            print(f"{label:16s} | {study_figures(root / 'studies', label.replace(' ', '-'), total)}")
            scores = scoring_figures(run, root / f"scores-{total}-{len(node_cpus)}", total, split.n_users, single_rate)
            print(f"{'':16s} | {scores}")
        finally:
            ray.shutdown()
            cluster.shutdown()


if __name__ == "__main__":
    main()
