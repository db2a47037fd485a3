"""The Python API: `raycf.load(path).recommend(...)` on raw ids gives exactly `raycf score`'s top-k lists (one
ranking path), for a records split and for held-out users of the `users` scheme; typed results; bad paths."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import raycf
from raycf.api import LoadedModel
from raycf.data.source import load_split
from raycf.data.spec import DataSpec
from raycf.errors import RaycfError
from raycf.models.config import TrainConfig
from raycf.score.job import ScoreOptions, ScoreResult, run_scoring
from raycf.train.trainer import TrainRun, run_training

SYNTHETIC = {"n_users": 200, "n_items": 80}


def trained(tmp_path: Path, name: str, model: str, data: DataSpec, **overrides: object) -> Path:
    run = run_training(data, TrainConfig.for_model(model, max_epochs=3, **overrides), fractions=(0.6, 0.2, 0.2),
                       mask="train", out=tmp_path / name)
    assert isinstance(run, TrainRun) and run.out == str(tmp_path / name) and run.metrics["model"] == model
    assert run.summary.startswith(f"{model} on synthetic: best epoch")
    return tmp_path / name


def histories(run: Path) -> tuple[np.ndarray, list[np.ndarray]]:
    """Every user's raw id and the raw item ids `raycf score` gives it as input."""
    split = load_split(run / "split")
    inputs = split.inputs("score")
    return split.user_ids, [split.item_ids[inputs[row].indices] for row in range(split.n_users)]


def score_lists(result: ScoreResult) -> pd.DataFrame:
    return pd.read_parquet(Path(result.out) / "topk").sort_values(["user_id", "rank"], ignore_index=True)


@pytest.mark.parametrize(("model", "scheme"), [("multvae", {"scheme": "users", "heldout_users": 30})])
def test_recommend_gives_exactly_the_lists_of_raycf_score(ray_cluster, tmp_path: Path, model: str,
                                                          scheme: dict) -> None:
    overrides = {"hidden": 8} if model in ("autorec", "multvae") else {"l2": 10.0}
    run = trained(tmp_path, "run", model, DataSpec(synthetic=SYNTHETIC, **scheme), **overrides)
    result = run_scoring(str(run), ScoreOptions(out=str(tmp_path / "scores"), k=7, actors=1, batch_size=64))
    assert isinstance(result, ScoreResult) and result.summary["model"] == model
    users, inputs = histories(run)
    recommended = raycf.load(str(run)).recommend(inputs, k=7, batch_size=50)
    frame = recommended.to_frame()
    frame["user_id"] = users[frame.pop("user")]
    expected = score_lists(result)
    assert recommended.unknown_items == 0 and len(frame) == len(expected) > 0.9 * 7 * len(users)
    assert frame["user_id"].tolist() == expected["user_id"].tolist()
    assert frame["item_id"].tolist() == expected["item_id"].tolist()
    assert frame["rank"].tolist() == expected["rank"].tolist()
    # the same scores, up to float rounding of other batch shapes (50 users here, 64 in the scorer)
    assert np.allclose(frame["score"], expected["score"], rtol=1e-5, atol=1e-6)


def test_recommend_excludes_what_it_is_told_and_ignores_unknown_items(tmp_path: Path) -> None:
    loaded = raycf.load(str(trained(tmp_path, "pop", "pop", DataSpec(synthetic=SYNTHETIC))))
    assert isinstance(loaded, LoadedModel)
    top = loaded.recommend([[]], k=3).items[0]  # popularity: the same list for everyone
    history = [top[0], "no-such-item"] if loaded.item_ids.dtype == object else [top[0], 10**9]
    kept = loaded.recommend([history], k=3, exclude=None)
    assert list(kept.items[0]) == list(top) and kept.unknown_items == 1
    assert top[0] not in loaded.recommend([history], k=3).items[0]  # the history is excluded by default
    assert top[1] not in loaded.recommend([history], k=3, exclude=[[top[1]]]).items[0]
    with pytest.raises(RaycfError, match=r"^recommend: exclude has 2 entries for 1 users; give one collection"):
        loaded.recommend([history], exclude=[[], []])


def test_load_refuses_what_is_not_a_raycf_run(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RaycfError, match=r"empty: not a run directory: expected best\.json \(raycf tune\)"):
        raycf.load(str(tmp_path / "empty"))
    run = trained(tmp_path, "run", "pop", DataSpec(synthetic=SYNTHETIC))
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(RaycfError, match=r"checkpoint\.pt: not a readable raycf checkpoint.*\(or train again\)$"):
        raycf.load(str(run))


@pytest.fixture(scope="module")
def popularity_model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    return raycf.load(str(trained(tmp_path_factory.mktemp("api"), "pop", "pop", DataSpec(synthetic=SYNTHETIC))))


def test_recommend_refuses_bad_input_in_one_line(popularity_model: LoadedModel) -> None:
    item = int(popularity_model.item_ids[0])
    kind = rf"this model's item ids are integers \(e\.g\. {popularity_model.item_ids[0]}\)$"
    cases = [
        (([74, 175],), {}, r"^recommend: histories must be one collection of raw item ids per user, got a flat list "
                           r"\(74, 175\); for one user write recommend\(\[\[74, 175\]\]\)$"),
        (("74, 175",), {}, r"^recommend: histories must be one collection of raw item ids per user \(a list of "
                           r"lists, or a dict of user id -> list\), got str$"),
        (([[item, None]],), {}, rf"^recommend: histories\[0\] holds None, not an item id: {kind}"),
        (([[item], ["abc"]],), {}, rf"^recommend: histories\[1\] holds 'abc', not an item id: {kind}"),
        (([[item], [1.5]],), {}, rf"^recommend: histories\[1\] holds 1\.5, not an item id: {kind}"),
        (([[item], 5],), {}, r"^recommend: histories\[1\] is 5, not a collection of raw item ids$"),
        (([[item], "abc"],), {}, r"^recommend: histories\[1\] is 'abc', not a collection of raw item ids$"),
        (([[item]],), {"exclude": "all"}, r"^recommend: exclude must be 'history', None, or one collection of raw "
                                          r"item ids per user, got 'all'$"),
        (([[item]],), {"exclude": [[None]]}, rf"^recommend: exclude\[0\] holds None, not an item id: {kind}"),
        (([[item]],), {"k": 0}, r"^recommend: k must be an integer >= 1, got 0$"),
        (([[item]],), {"k": "5"}, r"^recommend: k must be an integer >= 1, got '5'$"),
        (([[item]],), {"batch_size": 2.5}, r"^recommend: batch_size must be an integer >= 1, got 2\.5$"),
    ]
    for args, options, message in cases:
        with pytest.raises(RaycfError, match=message):
            popularity_model.recommend(*args, **options)


def test_recommend_labels_users_by_the_ids_given(popularity_model: LoadedModel) -> None:
    items = popularity_model.item_ids
    by_id = popularity_model.recommend({6040: [items[0]], 17: [items[1], items[2]]}, k=2).to_frame()
    assert by_id["user"].tolist() == [6040, 6040, 17, 17] and not by_id["fallback"].any()
    series = pd.Series([[items[3]], []], index=["ann", "bob"])
    frame = popularity_model.recommend(series, k=2).to_frame()
    assert frame["user"].tolist() == ["ann", "ann", "bob", "bob"]
    assert frame["fallback"].tolist() == [False, False, True, True]
    assert popularity_model.recommend([[items[0]], []], k=1).to_frame()["user"].tolist() == [0, 1]


def test_the_package_lists_its_public_api() -> None:
    assert {"load", "RaycfError"} <= set(raycf.__all__) and set(raycf.__all__) <= set(dir(raycf))
    assert raycf.RaycfError is RaycfError and raycf.load is raycf.api.load
