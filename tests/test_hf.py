"""The [hf] extra: a Hugging Face dataset saved locally (save_to_disk and parquet) and flwr-datasets'
partitioners, through real runs; a missing extra is one line naming the install."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import datasets  # noqa: E402  (the [hf] extra, which the [test] extra installs)

from conftest import make_config, read_rounds  # noqa: E402
from fedsim.extras import extra_hint  # noqa: E402
from fedsim.data.hf import flwr_partition, hf_dataset  # noqa: E402
from fedsim.engine.context import RunContext  # noqa: E402
from fedsim.engine.simulation import simulate  # noqa: E402
from fedsim.params import ParamError  # noqa: E402


def build(n: int, seed: int, colour: bool = False) -> "datasets.Dataset":
    rng = np.random.default_rng(seed)
    shape = (10, 10, 3) if colour else (10, 10)
    features = datasets.Features({"pixels": datasets.Image(), "digit": datasets.ClassLabel(names=[str(i) for i in range(4)])})
    return datasets.Dataset.from_dict({"pixels": [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)],
                                       "digit": [int(v) for v in rng.integers(0, 4, n)]}, features=features)


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, "datasets.DatasetDict"]:
    data = datasets.DatasetDict({"train": build(60, 0), "test": build(20, 1)})
    data.save_to_disk(str(tmp_path / "hf"))
    return tmp_path / "hf", data


def test_a_saved_dataset_loads_pixel_for_pixel(saved) -> None:
    folder, data = saved
    loaded = hf_dataset(str(folder), image_key="pixels", label_key="digit")
    assert loaded.num_classes == 4 and loaded.input_shape == (1, 10, 10)
    assert loaded.y_train.tolist() == data["train"]["digit"]
    np.testing.assert_array_equal(np.rint(loaded.denormalise(loaded.x_test) * 255)[:, 0],
                                  np.stack([np.asarray(im) for im in data["test"]["pixels"]]))


def test_parquet_files_and_colour_images(tmp_path: Path) -> None:
    for split, seed in (("train", 0), ("test", 1)):
        build(12, seed, colour=True).to_parquet(str(tmp_path / f"{split}-00000.parquet"))
    loaded = hf_dataset(str(tmp_path), image_key="pixels", label_key="digit")
    assert loaded.input_shape == (3, 10, 10) and len(loaded.y_train) == 12


def test_wrong_keys_and_folders_are_one_clear_line(saved, tmp_path: Path) -> None:
    folder, _ = saved
    with pytest.raises(ValueError, match="has no column 'image'; columns: pixels, digit"):
        hf_dataset(str(folder))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        hf_dataset(str(tmp_path / "none"))
    assert extra_hint(ModuleNotFoundError("No module named 'flwr_datasets'", name="flwr_datasets")) == \
        '; it comes with the optional [hf] extra: pip install -e ".[hf]"'
    assert extra_hint(ModuleNotFoundError("x", name="numpy")) == ""


def test_a_run_on_it_with_a_flwr_datasets_partitioner(saved, tmp_path: Path) -> None:
    folder, _ = saved
    overrides = ["dataset=hf", f"dataset.path={folder}", "dataset.image_key=pixels", "dataset.label_key=digit", "partition=flwr",
                 "partition.partitioner.alpha=1.0", "+partition.partitioner.min_partition_size=3", "num_clients=3",
                 "clients_per_round=3", "rounds=2", "model=cnn"]
    ctx = RunContext.from_config(make_config(*overrides))
    from flwr_datasets.partitioner import DirichletPartitioner

    reference = DirichletPartitioner(num_partitions=3, partition_by="label", alpha=1.0, seed=int(ctx.seed), min_partition_size=3)
    expected = flwr_partition(ctx.data.y_train, 3, ctx.seed, reference)
    assert [p.tolist() for p in ctx.partitions] == [p.tolist() for p in expected]  # exactly flwr-datasets' split
    assert sorted(np.concatenate(ctx.partitions).tolist()) == list(range(60))
    simulate(make_config(*overrides), tmp_path / "run", progress=False)
    assert [r["clients_aggregated"] for r in read_rounds(tmp_path / "run")] == [3, 3]
    with pytest.raises(ParamError, match="num_partitions=2: must equal num_clients=3"):
        flwr_partition(ctx.data.y_train, 3, 0, DirichletPartitioner(num_partitions=2, partition_by="label", alpha=1.0))
