"""Dataset loaders: embedded datasets, on-disk IDX and CIFAR-10 formats, Hydra configs."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fedsim.data import ImageData, cifar10, cifar100, digits, fashion_mnist, from_uint8, mnist, mnist5k, read_idx

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"


@pytest.fixture(scope="module")
def m5k() -> ImageData:
    return mnist5k()


# --- embedded -------------------------------------------------------------------------


def test_mnist5k_shapes_and_types(m5k: ImageData) -> None:
    assert m5k.x_train.shape[1:] == m5k.x_test.shape[1:] == (1, 28, 28) == m5k.input_shape
    assert len(m5k.x_train) + len(m5k.x_test) == 5000
    assert len(m5k.x_test) == 1000
    assert m5k.x_train.dtype == m5k.x_test.dtype == np.float32
    assert m5k.y_train.dtype == m5k.y_test.dtype == np.int64
    assert m5k.num_classes == 10
    assert set(np.unique(m5k.y_train)) == set(range(10))


def test_mnist5k_split_is_fixed_and_stratified(m5k: ImageData) -> None:
    again = mnist5k()
    np.testing.assert_array_equal(again.x_test, m5k.x_test)
    np.testing.assert_array_equal(again.y_test, m5k.y_test)
    assert np.bincount(m5k.y_test).tolist() == [100] * 10
    assert np.bincount(m5k.y_train).tolist() == [400] * 10


def test_mnist5k_normalised_and_denormalisable(m5k: ImageData) -> None:
    assert abs(float(m5k.x_train.mean())) < 1e-3
    assert float(m5k.x_train.std()) == pytest.approx(1.0, abs=1e-3)
    assert 0.05 < m5k.mean[0] < 0.3 and 0.2 < m5k.std[0] < 0.5  # MNIST: ~0.13, ~0.31
    pixels = m5k.denormalise(m5k.x_test)
    assert pixels.shape == m5k.x_test.shape
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0
    assert pixels.min() == pytest.approx(0.0, abs=1e-6) and pixels.max() == pytest.approx(1.0, abs=1e-6)
    # pixel values are multiples of 1/255
    np.testing.assert_allclose(pixels * 255, np.rint(pixels * 255), atol=1e-3)


def test_mnist5k_test_fraction_validated() -> None:
    with pytest.raises(ValueError, match="test_fraction"):
        mnist5k(test_fraction=1.0)


def test_digits_shapes() -> None:
    data = digits()
    assert data.x_train.shape[1:] == (1, 8, 8) and data.x_test.shape[1:] == (1, 8, 8)
    assert len(data.x_train) + len(data.x_test) == 1797
    assert data.num_classes == 10
    assert data.denormalise(data.x_train).max() == pytest.approx(1.0, abs=1e-6)


# --- from_uint8 -----------------------------------------------------------------------


def test_from_uint8_validates_shapes() -> None:
    x = np.zeros((4, 5, 5), np.uint8)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="test images are"):
        from_uint8("toy", x, y, np.zeros((4, 6, 6), np.uint8), y, 2)
    with pytest.raises(ValueError, match="y_train"):
        from_uint8("toy", x, y[:3], x, y, 2)
    with pytest.raises(ValueError, match="uint8"):
        from_uint8("toy", x.astype(np.float32), y, x, y, 2)
    with pytest.raises(ValueError, match="labels must lie"):
        from_uint8("toy", x, y + 2, x, y, 2)


def test_from_uint8_uses_train_statistics_per_channel() -> None:
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (20, 3, 4, 4), dtype=np.uint8)
    x_train[:, 1] //= 4  # distinct channel statistics
    x_test = rng.integers(0, 256, (5, 3, 4, 4), dtype=np.uint8)
    data = from_uint8("toy", x_train, np.zeros(20, int), x_test, np.zeros(5, int), 1)
    expected_mean = (x_train / 255.0).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(data.mean, expected_mean, rtol=1e-9)
    np.testing.assert_allclose(data.std, (x_train / 255.0).std(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(data.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.denormalise(data.x_test) * 255, x_test, atol=1e-3)


# --- IDX (MNIST / Fashion-MNIST) ------------------------------------------------------

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _idx_bytes(array: np.ndarray) -> bytes:
    """The IDX on-disk encoding of a uint8 array: 00 00 08 <ndim>, big-endian dims, data."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write_idx_set(folder: Path, compress: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        IDX_NAMES[0]: rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        IDX_NAMES[1]: np.array([0, 1, 2, 3, 9, 5], dtype=np.uint8),
        IDX_NAMES[2]: rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        IDX_NAMES[3]: np.array([7, 8, 1], dtype=np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        if compress:
            (folder / f"{name}.gz").write_bytes(gzip.compress(_idx_bytes(array)))
        else:
            (folder / name).write_bytes(_idx_bytes(array))
    return arrays


@pytest.mark.parametrize(
    ("loader", "subdir", "compress"),
    [
        (mnist, "", False),
        (mnist, "", True),
        (mnist, "raw", True),
        (mnist, "MNIST/raw", False),
        (fashion_mnist, "FashionMNIST/raw", True),
    ],
)
def test_idx_round_trip(tmp_path: Path, loader, subdir: str, compress: bool) -> None:
    arrays = _write_idx_set(tmp_path / subdir, compress)
    data = loader(str(tmp_path))
    assert data.x_train.shape == (6, 1, 28, 28) and data.x_test.shape == (3, 1, 28, 28)
    np.testing.assert_array_equal(data.y_train, arrays[IDX_NAMES[1]])
    np.testing.assert_array_equal(data.y_test, arrays[IDX_NAMES[3]])
    assert data.y_train.dtype == np.int64
    np.testing.assert_allclose(data.denormalise(data.x_train)[:, 0] * 255, arrays[IDX_NAMES[0]], atol=1e-3)
    np.testing.assert_allclose(data.denormalise(data.x_test)[:, 0] * 255, arrays[IDX_NAMES[2]], atol=1e-3)


def test_read_idx_big_endian_dims(tmp_path: Path) -> None:
    array = np.arange(2 * 300 * 3, dtype=np.uint8).reshape(2, 300, 3)  # 300 > 255: needs all 4 dim bytes
    (tmp_path / "a.idx").write_bytes(_idx_bytes(array))
    np.testing.assert_array_equal(read_idx(tmp_path / "a.idx"), array)


def test_idx_bad_magic_raises(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, compress=False)
    path = tmp_path / IDX_NAMES[0]
    path.write_bytes(b"\x12\x34" + path.read_bytes()[2:])
    with pytest.raises(ValueError, match="magic"):
        mnist(str(tmp_path))


def test_idx_size_mismatch_raises(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, compress=False)
    path = tmp_path / IDX_NAMES[2]
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="bytes"):
        mnist(str(tmp_path))


def test_idx_missing_file_raises(tmp_path: Path) -> None:
    _write_idx_set(tmp_path, compress=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as err:
        mnist(str(tmp_path))
    message = str(err.value)
    assert "mnist" in message and str(tmp_path) in message
    assert "t10k-labels-idx1-ubyte" in message and "train-images-idx3-ubyte" in message


# --- CIFAR-10 -------------------------------------------------------------------------

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


def _write_cifar(folder: Path, n: int = 2) -> dict[str, tuple[np.ndarray, list[int]]]:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(CIFAR_BATCHES):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [(i + j) % 10 for j in range(n)]
        with (folder / name).open("wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": labels}, f)
        written[name] = (data, labels)
    return written


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_round_trip(tmp_path: Path, point_at_folder: bool) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    written = _write_cifar(folder)
    data = cifar10(str(folder if point_at_folder else tmp_path))
    assert data.x_train.shape == (10, 3, 32, 32) and data.x_test.shape == (2, 3, 32, 32)
    assert data.input_shape == (3, 32, 32) and len(data.mean) == len(data.std) == 3
    assert data.y_train.tolist() == [label for name in CIFAR_BATCHES[:-1] for label in written[name][1]]
    pixels = np.rint(data.denormalise(data.x_train) * 255)
    first = written["data_batch_1"][0][0]
    # row layout: 1024 red values, then green, then blue; each plane row-major 32x32
    for channel in range(3):
        for row in (0, 5, 31):
            for col in (0, 17, 31):
                assert pixels[0, channel, row, col] == first[channel * 1024 + row * 32 + col]
    test_pixels = np.rint(data.denormalise(data.x_test) * 255)
    np.testing.assert_array_equal(test_pixels.reshape(2, -1), written["test_batch"][0])


def test_cifar10_missing_raises(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match="data_batch_3") as err:
        cifar10(str(tmp_path))
    assert "cifar10" in str(err.value) and str(tmp_path) in str(err.value)


def _write_cifar100(folder: Path, n: dict[str, int]) -> dict[str, dict[bytes, object]]:
    """``train`` / ``test`` as the python version of CIFAR-100 holds them (plus ``meta``, unused)."""
    rng = np.random.default_rng(2)
    folder.mkdir(parents=True)
    written = {}
    for name, count in n.items():
        batch = {b"filenames": [f"x{j}.png".encode() for j in range(count)], b"batch_label": name.encode(),
                 b"fine_labels": [(7 * j) % 100 for j in range(count)], b"coarse_labels": [(3 * j) % 20 for j in range(count)],
                 b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
        written[name] = batch
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": [b"apple"]}, protocol=2))
    return written


@pytest.mark.parametrize("labels, classes", [("fine", 100), ("coarse", 20)])
def test_cifar100_round_trip(tmp_path: Path, labels: str, classes: int) -> None:
    written = _write_cifar100(tmp_path / "cifar-100-python", {"train": 5, "test": 3})
    data = cifar100(str(tmp_path), labels=labels)
    assert data.x_train.shape == (5, 3, 32, 32) and data.x_test.shape == (3, 3, 32, 32) and data.num_classes == classes
    assert data.y_train.tolist() == written["train"][f"{labels}_labels".encode()]
    np.testing.assert_array_equal(np.rint(data.denormalise(data.x_test) * 255).reshape(3, -1), written["test"][b"data"])


def test_cifar100_refuses_a_payload_and_names_a_missing_file(tmp_path: Path) -> None:
    folder, marker = tmp_path / "cifar-100-python", tmp_path / "pwned"
    _write_cifar100(folder, {"train": 2, "test": 2})

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "train").write_bytes(pickle.dumps({b"data": Payload(), b"fine_labels": [0]}, protocol=2))
    with pytest.raises(ValueError, match=r"train: not a CIFAR batch \(refused global"):
        cifar100(str(tmp_path))
    assert not marker.exists()
    (folder / "test").unlink()
    with pytest.raises(FileNotFoundError, match="test"):
        cifar100(str(tmp_path))
    with pytest.raises(ValueError, match="dataset.labels='both': must be one of fine, coarse"):
        cifar100(str(tmp_path), labels="both")


# --- Hydra configs --------------------------------------------------------------------


def test_dataset_configs_target_loaders() -> None:
    data = instantiate(OmegaConf.load(CONF / "dataset" / "mnist5k.yaml"))
    assert isinstance(data, ImageData) and data.name == "mnist5k"
    assert instantiate(OmegaConf.load(CONF / "dataset" / "digits.yaml")).input_shape == (1, 8, 8)
    for name in ("mnist", "fashion_mnist", "cifar10", "cifar100"):
        cfg = OmegaConf.load(CONF / "dataset" / f"{name}.yaml")
        assert cfg._target_ == f"fedsim.data.files.{name}"
        assert OmegaConf.is_missing(cfg, "root")
