"""The Ray Serve application: one deployment whose replicas each hold the run's model (ServedModel) and answer
JSON over HTTP; single queries from concurrent requests are batched dynamically (`@serve.batch`) into one ranking.

    POST /recommend        {"user_id": ID} or {"items": [IDS]}, optional "k", "exclude", "exclude_history"
    POST /recommend/batch  {"queries": [QUERY, ...]} -> {"results": [ANSWER, ...]}
    GET  /healthz          {"status": "ok"}
    GET  /model            what is served (run, model, trial, checkpoint, split_sha256, sizes)

Every refusal is one JSON line {"error": MESSAGE} with status 400 (malformed JSON), 404 (unknown user or path),
405 (wrong method) or 422 (an invalid field); no request can take a replica down.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import asdict
from typing import Any, cast

import torch
from ray import serve
from ray.serve import metrics
from starlette.requests import Request
from starlette.responses import JSONResponse

from raycf.runs.loading import load_run_model
from raycf.serving.deploy import AppArgs
from raycf.serving.queries import Query, RequestError, parse_query
from raycf.serving.ranker import ServedModel

DEPLOYMENT_NAME = "Recommender"
BATCH_WAIT_S = 0.002
"""How long a replica waits for more queries to fill a batch."""
MAX_BATCH_QUERIES = 10_000
"""The most queries one batch request may hold."""


@serve.deployment(name=DEPLOYMENT_NAME)
class Recommender:
    """A replica: the run's model, and its request counters and histograms on Ray's metrics endpoint."""

    def __init__(self, args: dict[str, Any]) -> None:
        options = AppArgs(**args)
        torch.set_num_threads(max(1, int(options.cpus_per_replica)))
        self.served = ServedModel.of(load_run_model(options.run, options.model, options.trial, "serve"), options.run)
        self.rank_batch.set_max_batch_size(options.max_batch_size)  # type: ignore[attr-defined]  # added by serve.batch
        self.requests = metrics.Counter("raycf_serve_requests", "Requests answered, by route and status.",
                                        tag_keys=("route", "status"))  # type: ignore[arg-type]  # Ray's hint
        self.latency = metrics.Histogram("raycf_serve_latency_ms", "Request latency in the replica (ms).",
                                         boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], tag_keys=("route",))
        self.fallbacks = metrics.Counter("raycf_serve_fallbacks", "Answers of popular items to users with no known "
                                         "item (cold start).")
        self.batch_sizes = metrics.Histogram("raycf_serve_batch_size", "Queries ranked together.",
                                             boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256])

    async def __call__(self, request: Request) -> JSONResponse:
        started = time.perf_counter()
        route = request.url.path.rstrip("/") or "/"
        try:
            status, body = 200, await self.route(request, route)
        except RequestError as error:
            status, body = error.status, {"error": str(error)}
        except Exception as error:  # a bug must answer, not take the replica down
            status, body = 500, {"error": f"internal error: {type(error).__name__}: {str(error).splitlines()[0]}"}
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe((time.perf_counter() - started) * 1000, tags={"route": route})
        return JSONResponse(body, status_code=status)

    async def route(self, request: Request, route: str) -> dict[str, Any]:
        routes = {"/recommend": "POST", "/recommend/batch": "POST", "/healthz": "GET", "/model": "GET"}
        if route not in routes:
            raise RequestError(404, f"no route {route}; use POST /recommend, POST /recommend/batch, GET /healthz or "
                                    "GET /model")
        if request.method != routes[route]:
            raise RequestError(405, f"{route} takes {routes[route]}, not {request.method}")
        if route == "/healthz":
            return {"status": "ok"}
        if route == "/model":
            return self.served.facts
        body = await json_body(request)
        if route == "/recommend":
            return await self.rank_batch(parse_query(body, self.served.user_ids, self.served.item_ids))
        queries = body.get("queries") if isinstance(body, dict) else None
        if not isinstance(queries, list) or not 1 <= len(queries) <= MAX_BATCH_QUERIES:
            raise RequestError(422, f"body: expected {{\"queries\": [QUERY, ...]}} with 1 to {MAX_BATCH_QUERIES:,} "
                                    "queries")
        parsed = [parse_query(query, self.served.user_ids, self.served.item_ids, f"queries[{i}]")
                  for i, query in enumerate(queries)]
        return {"results": list(await asyncio.gather(*(self.rank_batch(query) for query in parsed)))}

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=BATCH_WAIT_S)
    async def rank_batch(self, queries: list[Query]) -> list[dict[str, Any]]:
        """The queries that arrived together, ranked as one batch."""
        self.batch_sizes.observe(len(queries))
        answers = self.served.answer(queries)
        fallbacks = sum(answer["fallback"] for answer in answers)
        if fallbacks:
            self.fallbacks.inc(fallbacks)
        return answers


async def json_body(request: Request) -> Any:
    """The request's JSON; RequestError 400 in one line when it is not JSON."""
    raw = await request.body()
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise RequestError(400, f"body: malformed JSON ({error}); send a JSON object") from None


def application(args: AppArgs) -> serve.Application:
    """The application for `args`: its deployment with their replicas and CPUs."""
    deployment = cast(serve.Deployment, Recommender).options(
        num_replicas=args.replicas, ray_actor_options={"num_cpus": args.cpus_per_replica},
        max_ongoing_requests=ongoing_requests(args.max_batch_size))
    return deployment.bind(asdict(args))


def ongoing_requests(max_batch_size: int) -> int:
    """Requests a replica takes at once: room for two full batches (one ranked while the next fills), at least
    Serve's default 5."""
    return max(5, 2 * max_batch_size)


def build(args: dict[str, Any]) -> serve.Application:
    """Application builder for a Serve config file (`import_path: raycf.serving.app:build`, `args`: AppArgs)."""
    return application(AppArgs(**args))
