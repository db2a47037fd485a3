"""The `time` scheme: a global time cut; records before the first cut train, those before the second validate,
the rest test."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from raycf.data.schemes.checks import check_fractions, raw_ids, refuse_duplicates
from raycf.data.schemes.registry import SplitScheme, register
from raycf.data.split import FORMAT_VERSION, Split, finish_split, ones_matrix
from raycf.errors import DataError

if TYPE_CHECKING:
    from raycf.data.spec import DataSpec


@register
class TimeScheme(SplitScheme):
    name = "time"
    help = "a global time cut"
    spec_fields = ("time_cuts",)

    @classmethod
    def split(cls, frame: pd.DataFrame, spec: DataSpec, fractions: tuple[float, float, float], seed: int,
              **manifest: Any) -> Split:
        cuts = None if spec.time_cuts is None else (parse_time(spec.time_cuts[0]), parse_time(spec.time_cuts[1]))
        return split_time(frame, fractions=fractions, cuts=cuts, **manifest)

    @classmethod
    def input_parts(cls, part: str) -> tuple[str, ...]:
        """Everything before the part's cut: train for valid; train and valid for test and score."""
        return ("train",) if part == "valid" else ("train", "valid")


def parse_time(text: str | int) -> int:
    """Epoch seconds (UTC) of an ISO date or datetime ("2003-01-01"), or of epoch seconds given as such."""
    if isinstance(text, int) or str(text).lstrip("-").isdigit():
        return int(text)
    try:
        stamp = pd.Timestamp(str(text))
    except ValueError:
        raise DataError(f"time cut {text!r} is neither a date (2003-01-01) nor epoch seconds; "
                        "fix --time-cuts") from None
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.timestamp())


def time_cuts(timestamps: np.ndarray, fractions: tuple[float, float, float] | None, cuts: tuple[int, int] | None,
              where: str) -> tuple[int, int]:
    """The two cut timestamps: explicit, or where the records ordered by time reach the train and train + valid
    fractions."""
    if cuts is not None:
        if not cuts[0] < cuts[1]:
            raise DataError(f"{where}: time cuts must increase, got {list(cuts)}; "
                            "e.g. --time-cuts 2002-01-01,2002-07-01")
        return int(cuts[0]), int(cuts[1])
    if fractions is None:
        raise DataError(f"{where}: give the split fractions or two time cuts")
    train, valid, _ = check_fractions(fractions)
    ordered = np.sort(timestamps)
    last = len(ordered) - 1
    first, second = (ordered[min(last, round(share * len(ordered)))] for share in (train, train + valid))
    return int(first), int(second)


def split_time(
    interactions: pd.DataFrame, *, fractions: tuple[float, float, float] | None = (0.6, 0.2, 0.2),
    cuts: tuple[int, int] | None = None, source: str = "", source_sha256: str = "",
    extra: dict[str, Any] | None = None,
) -> Split:
    """A global time cut: records before the first cut train, those before the second validate, the rest test
    (no validation or test record is older than its cut). Validation and test records of users or items
    without a train record are dropped and counted."""
    where = f"split of {source}" if source else "split"
    if "timestamp" not in interactions:
        raise DataError(f"{where}: the time scheme needs a timestamp per record and {source or 'the data'} has none; "
                        "name the column with --time-col, or use --scheme records")
    users_raw, items_raw = raw_ids(interactions, "user_id"), raw_ids(interactions, "item_id")
    stamps = interactions["timestamp"].to_numpy(dtype=np.int64)
    first, second = time_cuts(stamps, fractions, cuts, where)
    part_of = np.where(stamps < first, 0, np.where(stamps < second, 1, 2))
    train = part_of == 0
    if not train.any():
        raise DataError(f"{where}: no record before the first time cut; move the cut later")
    user_ids = pd.factorize(users_raw[train], sort=True)[1]
    item_ids = pd.factorize(items_raw[train], sort=True)[1]
    user_codes, item_codes = pd.Index(user_ids).get_indexer(users_raw), pd.Index(item_ids).get_indexer(items_raw)
    refuse_duplicates(pd.factorize(users_raw)[0], items_raw, pd.factorize(users_raw)[1])
    shape = (len(user_ids), len(item_ids))
    matrices = {"train": ones_matrix(user_codes[train], item_codes[train], shape)}
    dropped = {}
    for code, part in ((1, "valid"), (2, "test")):
        inside = part_of == code
        kept = inside & (user_codes >= 0) & (item_codes >= 0)
        dropped[part] = {"new_user": int((inside & (user_codes < 0)).sum()),
                         "new_item": int((inside & (user_codes >= 0) & (item_codes < 0)).sum())}
        if not kept.any():
            raise DataError(f"{where}: no {part} record after the time cuts (of users and items seen before them); "
                            "move the cuts")
        matrices[part] = ones_matrix(user_codes[kept], item_codes[kept], shape)
    manifest = {
        "format_version": FORMAT_VERSION, "scheme": "time", "source": source, "source_sha256": source_sha256,
        "cuts": [first, second], "cuts_utc": [pd.Timestamp(t, unit="s").isoformat() for t in (first, second)],
        "fractions": None if cuts is not None or fractions is None else list(check_fractions(fractions)),
        "n_users": shape[0], "n_items": shape[1],
        "counts": {name: int(matrix.nnz) for name, matrix in matrices.items()},
        "dropped": dropped, "n_records": len(users_raw), **(extra or {}),
    }
    return finish_split(matrices, user_ids, item_ids, manifest, TimeScheme)
