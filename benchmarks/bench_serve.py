"""`raycf serve` under closed-loop HTTP load: requests per second and p50/p95/p99 latency at 1, 8 and 64
concurrent clients, for ML-1M Mult-VAE and EASE, with and without dynamic batching, and the same ranking behind a
bare single-process uvicorn server (no Ray) measured in the same run as the reference for Serve's overhead.

    python benchmarks/bench_serve.py                      # ../shared/data/ml-1m/ratings.dat.gz, 10 s per point
    python benchmarks/bench_serve.py --seconds 5 --clients 1,8,64 --models multvae,ease

Each client (an asyncio task, httpx) sends one POST /recommend for a random known user (k = 10) and waits for the
answer before the next; the client runs on the same machine as the server (its CPU time counts against both).
The models are trained once into --work (2 epochs for Mult-VAE: speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ML1M = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-1m" / "ratings.dat.gz"


def trained(work: Path, name: str, ratings: Path) -> Path:
    """The model's `raycf train` run on ML-1M, trained once."""
    from raycf.data.spec import DataSpec
    from raycf.models.config import TrainConfig
    from raycf.train.trainer import run_training

    out = work / name
    if not (out / "checkpoint.pt").exists():
        config = (TrainConfig.for_model("multvae", max_epochs=2) if name == "multvae"
                  else TrainConfig.for_model(name))
        run_training(DataSpec(dataset=None, ratings=str(ratings)), config, fractions=(0.6, 0.2, 0.2), mask="train",
                     out=out)
    return out


async def closed_loop(url: str, users: list, clients: int, seconds: float) -> dict[str, float]:
    """`clients` tasks asking for random users back to back for `seconds`: requests/s and latency percentiles."""
    latencies: list[float] = []
    failures = 0
    rng = np.random.default_rng(0)
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal failures
        while time.perf_counter() < stop:
            body = json.dumps({"user_id": users[int(rng.integers(len(users)))], "k": 10})
            started = time.perf_counter()
            response = await http.post(f"{url}/recommend", content=body)
            latencies.append(time.perf_counter() - started)
            failures += response.status_code != 200

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=60) as http:
        await http.post(f"{url}/recommend", content=json.dumps({"user_id": users[0]}))  # warm
        began = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        elapsed = time.perf_counter() - began
    p50, p95, p99 = np.percentile(np.array(latencies) * 1000, [50, 95, 99])
    return {"rps": len(latencies) / elapsed, "p50": p50, "p95": p95, "p99": p99, "failures": failures}


BARE = """
import sys, json
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from raycf.runs.loading import load_run_model
from raycf.serving.queries import parse_query
from raycf.serving.ranker import ServedModel
import torch
torch.set_num_threads(1)
served = ServedModel.of(load_run_model(sys.argv[1], verb="serve"), sys.argv[1])
async def recommend(request: Request) -> JSONResponse:
    query = parse_query(json.loads(await request.body()), served.user_ids, served.item_ids)
    return JSONResponse(served.answer([query])[0])
uvicorn.run(Starlette(routes=[Route("/recommend", recommend, methods=["POST"])]), host="127.0.0.1",
            port=int(sys.argv[2]), log_level="warning")
"""


def wait_for(url: str, users: list, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/recommend", content=json.dumps({"user_id": users[0]}), timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ratings", type=Path, default=Path(os.environ.get("RAYCF_ML1M", ML1M)))
    parser.add_argument("--work", type=Path, default=Path("/tmp/raycf-bench-serve"))
    parser.add_argument("--models", default="multvae,ease")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--port", type=int, default=8311)
    args = parser.parse_args()
    import ray

    import raycf
    from raycf.data.source import load_split

    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Ray {ray.__version__}")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    clients = [int(part) for part in args.clients.split(",")]
    print("| model | server | clients | requests/s | p50 ms | p95 ms | p99 ms | failed |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        run = trained(args.work, name, args.ratings)
        users = load_split(run / "split").user_ids.tolist()
        for label, batch in (("Serve, batching (32)", 32), ("Serve, no batching", 1)):
            serving = raycf.serve(str(run), port=args.port, max_batch_size=batch, cpus_per_replica=1)
            wait_for(serving.url, users)
            for count in clients:
                row = asyncio.run(closed_loop(serving.url, users, count, args.seconds))
                print(f"| {name} | {label} | {count} | {row['rps']:.0f} | {row['p50']:.1f} | {row['p95']:.1f} | "
                      f"{row['p99']:.1f} | {row['failures']} |", flush=True)
        bare_port = args.port + 1
        server = subprocess.Popen([sys.executable, "-c", BARE, str(run), str(bare_port)])
        try:
            wait_for(f"http://127.0.0.1:{bare_port}", users)
            for count in clients:
                row = asyncio.run(closed_loop(f"http://127.0.0.1:{bare_port}", users, count, args.seconds))
                print(f"| {name} | bare uvicorn | {count} | {row['rps']:.0f} | {row['p50']:.1f} | {row['p95']:.1f} | "
                      f"{row['p99']:.1f} | {row['failures']} |", flush=True)
        finally:
            server.terminate()
            server.wait()
    from ray import serve

    serve.shutdown()


if __name__ == "__main__":
    main()
