"""FEMNIST from LEAF's JSON layout (a tiny fixture written in that exact format) and partition=natural."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_config, read_rounds
from fedsim.data import femnist, natural
from fedsim.engine.context import RunContext
from fedsim.engine.simulation import simulate
from fedsim.params import ParamError

WRITERS = {"f0000_14": 10, "f0001_41": 7, "f0002_22": 12, "f0003_33": 9}  # writer -> examples


def write_leaf(root: Path) -> dict[str, tuple[np.ndarray, list[int]]]:
    """LEAF's all_data/all_data_<k>.json: users, num_samples, user_data {user: {x: [[784 floats]], y: [...]}}."""
    rng = np.random.default_rng(0)
    (root / "all_data").mkdir(parents=True)
    written, names = {}, list(WRITERS)
    for k, chunk in enumerate((names[:2], names[2:])):
        blob = {"users": chunk, "num_samples": [WRITERS[u] for u in chunk], "user_data": {}}
        for u in chunk:
            pixels = rng.integers(0, 256, (WRITERS[u], 784)) / 255.0
            labels = [int(v) for v in rng.integers(0, 62, WRITERS[u])]
            blob["user_data"][u] = {"x": pixels.tolist(), "y": labels}
            written[u] = (pixels, labels)
        (root / "all_data" / f"all_data_{k}.json").write_text(json.dumps(blob))
    return written


def test_femnist_reads_leaf_json_and_keeps_each_writers_examples_together(tmp_path: Path) -> None:
    written = write_leaf(tmp_path)
    data = femnist(str(tmp_path), test_fraction=0.2, seed=3)
    held = {u: int(0.2 * n) for u, n in WRITERS.items()}
    assert data.num_classes == 62 and data.input_shape == (1, 28, 28)
    assert len(data.y_train) == sum(n - held[u] for u, n in WRITERS.items()) and len(data.y_test) == sum(held.values())
    for w, (u, (pixels, labels)) in enumerate(written.items()):
        mine = data.groups == w
        assert mine.sum() == WRITERS[u] - held[u]
        assert set(data.y_train[mine].tolist()) <= set(labels)  # a writer's training examples are its own
        train_pixels = np.rint(data.denormalise(data.x_train[mine]) * 255).reshape(-1, 784)
        own = {tuple(row) for row in np.rint(pixels * 255).astype(int)}
        assert all(tuple(row) in own for row in train_pixels.astype(int))


def test_natural_partition_is_one_client_per_writer(tmp_path: Path) -> None:
    write_leaf(tmp_path)
    data = femnist(str(tmp_path))
    parts = natural(data.y_train, 4, seed=0, groups=data.groups)
    assert [sorted(set(data.groups[p].tolist())) for p in parts] == [[0], [1], [2], [3]]
    assert sum(len(p) for p in parts) == len(data.y_train)
    two = natural(data.y_train, 2, seed=5, groups=data.groups)  # a seeded choice of writers
    assert len({int(data.groups[p][0]) for p in two}) == 2 and all(len(set(data.groups[p].tolist())) == 1 for p in two)
    with pytest.raises(ParamError, match=r"num_clients=5: must be at most the dataset's 4 natural owners"):
        natural(data.y_train, 5, seed=0, groups=data.groups)
    with pytest.raises(ParamError, match="partition=natural: this dataset has no natural split"):
        natural(data.y_train, 2, seed=0)


def test_a_natural_femnist_run_gives_each_client_one_writer(tmp_path: Path) -> None:
    write_leaf(tmp_path / "leaf")
    overrides = ["dataset=femnist", f"dataset.root={tmp_path / 'leaf'}", "partition=natural", "num_clients=4",
                 "clients_per_round=4", "model=cnn", "rounds=2"]
    ctx = RunContext.from_config(make_config(*overrides))
    assert [len(p) for p in ctx.partitions] == [9, 7, 11, 9]  # each writer's examples less floor(10%) held out
    simulate(make_config(*overrides), tmp_path / "run", progress=False)
    rounds = read_rounds(tmp_path / "run")
    assert [r["clients_aggregated"] for r in rounds] == [4, 4]
    assert {c: v["num_examples"] for c, v in rounds[0]["clients"].items()} == {"0": 9, "1": 7, "2": 11, "3": 9}


@pytest.mark.parametrize(
    ("content", "message"),
    [("{not json", "not a LEAF JSON file"), (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[0.5] * 10], "y": [1]}}}),
                                              "expected x of shape"),
     (json.dumps({"users": ["a"], "user_data": {"a": {"x": [[2.0] * 784], "y": [1]}}}), "pixel values must lie in")],
)
def test_a_malformed_leaf_file_is_one_clear_error(tmp_path: Path, content: str, message: str) -> None:
    (tmp_path / "all_data").mkdir()
    (tmp_path / "all_data" / "all_data_0.json").write_text(content)
    with pytest.raises(ValueError, match=message):
        femnist(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no LEAF JSON files"):
        femnist(str(tmp_path / "elsewhere"))
