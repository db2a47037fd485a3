"""Synthetic one-class interactions with planted latent structure and popularity skew."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raycf.errors import DataError

_CLUSTERS_PER_FACTOR = 2  # user clusters per latent dimension
_USER_SPREAD = 0.6  # spread of a user's factor around its cluster centre
_TEMPERATURE = 0.2  # softmax temperature of the user-item affinity
_COUNT_SIGMA = 0.7  # log-normal spread of the per-user interaction count
_CHUNK_CELLS = 1 << 22  # user x item scores held per chunk (16 MiB of float32)


def generate_synthetic(
    n_users: int = 2000,
    n_items: int = 500,
    *,
    n_factors: int = 8,
    mean_interactions: int = 40,
    min_interactions: int = 20,
    popularity_skew: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Return distinct (user_id, item_id) pairs, int64 raw ids, sorted by user then item.

    Users (ids 1..n_users) belong to clusters of unit latent factors; items (a seeded sparse
    set of ids) have unit factors and a Zipf popularity. Each user draws
    max(min_interactions, log-normal count) distinct items with probability proportional to
    exp(u.v / temperature) * popularity, sampled without replacement by Gumbel-top-k.
    """
    _validate(n_users, n_items, n_factors, mean_interactions, min_interactions, popularity_skew, seed)
    root = np.random.SeedSequence(seed)
    rng = np.random.default_rng(root)

    item_ids = np.sort(rng.choice(10 * n_items, size=n_items, replace=False)).astype(np.int64) + 1
    log_pop = (-popularity_skew * np.log(rng.permutation(n_items) + 1.0)).astype(np.float32)
    n_clusters = _CLUSTERS_PER_FACTOR * n_factors
    centres = _unit(rng.standard_normal((n_clusters, n_factors)))
    noise = rng.standard_normal((n_users, n_factors)) * (_USER_SPREAD / math.sqrt(n_factors))
    users = _unit(centres[rng.integers(n_clusters, size=n_users)] + noise)
    items = _unit(rng.standard_normal((n_items, n_factors))).astype(np.float32)
    user_logits = (users / _TEMPERATURE).astype(np.float32)
    mu = math.log(mean_interactions) - _COUNT_SIGMA**2 / 2
    counts = np.rint(rng.lognormal(mu, _COUNT_SIGMA, size=n_users))
    counts = np.clip(counts, min_interactions, n_items).astype(np.int64)

    chunk = max(1, _CHUNK_CELLS // n_items)
    starts = range(0, n_users, chunk)
    seeds = root.spawn(len(starts))

    def sample(i: int) -> np.ndarray:
        rows = slice(starts[i], starts[i] + chunk)
        return _sample_chunk(np.random.default_rng(seeds[i]), user_logits[rows], items, log_pop, counts[rows])

    item_index = np.concatenate([sample(i) for i in range(len(starts))])
    user_id = np.repeat(np.arange(1, n_users + 1, dtype=np.int64), counts)
    return pd.DataFrame({"user_id": user_id, "item_id": item_ids[item_index]})


def _sample_chunk(
    rng: np.random.Generator,
    user_logits: np.ndarray,
    items: np.ndarray,
    log_pop: np.ndarray,
    counts: np.ndarray,
) -> np.ndarray:
    """Gumbel-top-k: each row's counts[row] item indices, ascending, rows concatenated."""
    n_items = items.shape[0]
    keys = user_logits @ items.T
    keys += log_pop
    gumbel = rng.random(keys.shape, dtype=np.float32)
    with np.errstate(divide="ignore"):
        np.log(gumbel, out=gumbel)
        np.negative(gumbel, out=gumbel)
        np.log(gumbel, out=gumbel)  # now -Gumbel noise
    keys -= gumbel
    k_max = int(counts.max())
    top = np.argpartition(keys, n_items - k_max, axis=1)[:, n_items - k_max :]
    order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
    top = np.take_along_axis(top, order, axis=1)
    top = np.where(np.arange(k_max) < counts[:, None], top, n_items)
    top.sort(axis=1)
    return top[top < n_items]


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length."""
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _validate(
    n_users: int,
    n_items: int,
    n_factors: int,
    mean_interactions: int,
    min_interactions: int,
    popularity_skew: float,
    seed: int,
) -> None:
    """Raise DataError naming the first unusable argument."""
    for name, value in (
        ("n_users", n_users),
        ("n_items", n_items),
        ("n_factors", n_factors),
        ("mean_interactions", mean_interactions),
        ("min_interactions", min_interactions),
    ):
        if not _is_int(value) or value < 1:
            raise DataError(f"synthetic data: {name} must be an integer >= 1, got {value!r}")
    if not _is_int(seed) or seed < 0:
        raise DataError(f"synthetic data: seed must be an integer >= 0, got {seed!r}")
    if isinstance(popularity_skew, bool) or not isinstance(popularity_skew, (int, float)) or not (
        math.isfinite(popularity_skew) and popularity_skew >= 0
    ):
        raise DataError(f"synthetic data: popularity_skew must be a number >= 0, got {popularity_skew!r}")
    for name, value in (("min_interactions", min_interactions), ("mean_interactions", mean_interactions)):
        if value > n_items:
            raise DataError(
                f"synthetic data: {name}={value} exceeds n_items={n_items}; lower {name} or raise n_items"
            )


def _is_int(value: object) -> bool:
    """True for Python and numpy integers, not for bools."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)
