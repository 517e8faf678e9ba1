"""Hugging Face datasets saved locally, and flwr-datasets' partitioners, as fedsim data (the ``[hf]`` extra).

``dataset=hf dataset.path=DIR``: a ``DatasetDict`` written by ``datasets.save_to_disk`` (or a folder of
parquet files named ``<split>*.parquet``), read with the ``datasets`` library from local disk only
(offline mode is forced: nothing is downloaded). ``image_key`` holds images (HF ``Image`` features or
uint8 arrays, (H, W) or (H, W, C)), ``label_key`` integer labels (a ``ClassLabel`` gives the class count).
Online users can first fetch anything the Hub or flwr-datasets knows, ``save_to_disk`` it, and point here.

``partition=flwr partition.partitioner._target_=flwr_datasets.partitioner.DirichletPartitioner ...``:
any flwr-datasets partitioner splits the training labels (a ``label`` column); fedsim passes
``num_partitions=num_clients`` and the run seed where the partitioner takes them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fedsim.data.image_data import ImageData, from_uint8
from fedsim.extras import optional_import
from fedsim.params import ParamError

def hf_dataset(path: str, image_key: str = "image", label_key: str = "label", train_split: str = "train",
               test_split: str = "test") -> ImageData:
    """An image classification dataset saved locally by Hugging Face ``datasets``."""
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    datasets = optional_import("datasets", "dataset=hf")
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset=hf: dataset.path={path}: no such folder (a datasets.save_to_disk folder or parquet files)")
    splits = _load(datasets, folder, (train_split, test_split))
    for split in (train_split, test_split):
        if split not in splits:
            raise ValueError(f"dataset=hf: {folder} has no split {split!r}; splits: {', '.join(splits)} (set dataset.train_split / test_split)")
        missing = [k for k in (image_key, label_key) if k not in splits[split].column_names]
        if missing:
            raise ValueError(f"dataset=hf: split {split!r} has no column {missing[0]!r}; columns: {', '.join(splits[split].column_names)} "
                             "(set dataset.image_key / dataset.label_key)")
    feature = splits[train_split].features[label_key]
    x_train, y_train = _arrays(splits[train_split], image_key, label_key)
    x_test, y_test = _arrays(splits[test_split], image_key, label_key)
    num_classes = int(feature.num_classes) if hasattr(feature, "num_classes") else int(max(y_train.max(), y_test.max()) + 1)
    return from_uint8(f"hf:{folder.name}", x_train, y_train, x_test, y_test, num_classes)


def _load(datasets: Any, folder: Path, wanted: tuple[str, ...]) -> dict[str, Any]:
    parquet = {s: sorted(str(p) for p in folder.glob(f"{s}*.parquet")) for s in wanted}
    if all(parquet.values()):
        return dict(datasets.load_dataset("parquet", data_files=parquet))
    loaded = datasets.load_from_disk(str(folder))
    return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {wanted[0]: loaded}


def _arrays(split: Any, image_key: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, H, W) or (N, C, H, W) and int64 labels of one split."""
    images = [np.asarray(img) for img in split[image_key]]
    shapes = {im.shape for im in images}
    if len(shapes) != 1:
        raise ValueError(f"dataset=hf: images of different shapes {sorted(shapes)[:3]}; resize them before saving")
    x = np.stack(images)
    if x.dtype != np.uint8:
        raise ValueError(f"dataset=hf: images must be uint8 pixels, got {x.dtype}")
    if x.ndim == 4:  # (N, H, W, C), as PIL gives colour images
        x = x.transpose(0, 3, 1, 2)
    return x, np.asarray(split[label_key], dtype=np.int64)


def flwr_partition(labels: np.ndarray, num_clients: int, seed: int, partitioner: Any) -> list[np.ndarray]:
    """The index arrays a flwr-datasets partitioner assigns to each of ``num_clients`` partitions."""
    datasets = optional_import("datasets", "partition=flwr")
    partitioner.dataset = datasets.Dataset.from_dict({"label": np.asarray(labels).tolist(), "__index__": list(range(len(labels)))})
    if partitioner.num_partitions != num_clients:  # read once the dataset is set (partitioners compute it lazily)
        raise ParamError(f"partition.partitioner.num_partitions={partitioner.num_partitions}: must equal num_clients={num_clients}")
    parts = [np.asarray(partitioner.load_partition(i)["__index__"], dtype=np.int64) for i in range(num_clients)]
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise ValueError(f"partition=flwr: partition {empty[0]} is empty; no fedsim client may be (raise alpha or min_partition_size)")
    return [np.sort(p) for p in parts]
