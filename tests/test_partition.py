"""Client partitioners: coverage, determinism, label skew, argument validation, configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hydra.utils import instantiate
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from fedsim.data import dirichlet, iid, mnist5k, shards

CONF = Path(__file__).resolve().parents[1] / "experiments" / "conf"

SCHEMES = {
    "iid": lambda labels, k, seed: iid(labels, k, seed),
    "dirichlet": lambda labels, k, seed: dirichlet(labels, k, seed, alpha=0.5),
    "shards": lambda labels, k, seed: shards(labels, k, seed, classes_per_client=2),
}


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return mnist5k().y_train


def assert_exact_cover(parts: list[np.ndarray], n: int, num_clients: int) -> None:
    assert len(parts) == num_clients
    assert all(p.dtype == np.int64 and len(p) > 0 for p in parts)
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted, no duplicates within a client
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(n))


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
@pytest.mark.parametrize("num_clients", [5, 7, 100])  # shards needs num_clients * 2 >= 10 classes
def test_exact_cover(labels: np.ndarray, scheme: str, num_clients: int) -> None:
    assert_exact_cover(SCHEMES[scheme](labels, num_clients, 3), len(labels), num_clients)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_deterministic_in_seed(labels: np.ndarray, scheme: str) -> None:
    first, again, other = (SCHEMES[scheme](labels, 20, seed) for seed in (5, 5, 6))
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


def test_iid_sizes_balanced(labels: np.ndarray) -> None:
    sizes = [len(p) for p in iid(labels, 7, 0)]
    assert max(sizes) - min(sizes) <= 1


def _mean_top_class_fraction(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    return float(np.mean([np.bincount(labels[p]).max() / len(p) for p in parts]))


def _mean_label_entropy(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    def entropy(p: np.ndarray) -> float:
        q = np.bincount(labels[p]) / len(p)
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return float(np.mean([entropy(p) for p in parts]))


def test_dirichlet_skew_grows_as_alpha_falls(labels: np.ndarray) -> None:
    runs = [dirichlet(labels, 20, 0, alpha=a) for a in (100.0, 1.0, 0.1)]
    top = [_mean_top_class_fraction(labels, parts) for parts in runs]
    entropy = [_mean_label_entropy(labels, parts) for parts in runs]
    assert top[0] < top[1] < top[2]
    assert entropy[0] > entropy[1] > entropy[2]
    assert top[0] < 0.2 and top[2] > 0.5  # near-uniform vs. dominated by one class


def test_dirichlet_min_size(labels: np.ndarray) -> None:
    parts = dirichlet(labels, 10, 0, alpha=0.3, min_size=150)
    assert min(len(p) for p in parts) >= 150
    assert_exact_cover(parts, len(labels), 10)


def test_dirichlet_impossible_min_size_gives_up(labels: np.ndarray) -> None:
    with pytest.raises(ValueError, match="alpha=0.01"):
        dirichlet(labels, 200, 0, alpha=0.01)


@pytest.mark.parametrize(("num_clients", "classes_per_client"), [(100, 2), (30, 2), (7, 3), (10, 1)])
def test_shards_label_count(labels: np.ndarray, num_clients: int, classes_per_client: int) -> None:
    parts = shards(labels, num_clients, 0, classes_per_client)
    assert_exact_cover(parts, len(labels), num_clients)
    assert max(len(np.unique(labels[p])) for p in parts) <= classes_per_client
    sizes = [len(p) for p in parts]
    assert max(sizes) <= 1.2 * min(sizes)  # near-equal shards


def test_shards_imbalanced_classes_are_pure() -> None:
    labels = np.repeat([0, 1, 2], [50, 7, 1])
    parts = shards(labels, 5, 0, 2)
    assert_exact_cover(parts, len(labels), 5)
    assert max(len(np.unique(labels[p])) for p in parts) <= 2


@pytest.mark.parametrize(
    ("call", "param"),
    [
        (lambda y: iid(y, 0, 0), "num_clients"),
        (lambda y: iid(y, len(y) + 1, 0), "num_clients"),
        (lambda y: iid(y, 2, -1), "seed"),
        (lambda y: iid(y.reshape(-1, 2), 2, 0), "labels"),
        (lambda y: dirichlet(y, 10, 0, alpha=0.0), "alpha"),
        (lambda y: dirichlet(y, 10, 0, alpha=-1.0), "alpha"),
        (lambda y: dirichlet(y, 10, 0, alpha=1.0, min_size=0), "min_size"),
        (lambda y: dirichlet(y, 10, 0, alpha=1.0, min_size=401), "min_size"),
        (lambda y: shards(y, 10, 0, classes_per_client=0), "classes_per_client"),
        (lambda y: shards(y, 3, 0, classes_per_client=2), "classes_per_client"),
        (lambda y: shards(y, 3000, 0, classes_per_client=2), "classes_per_client"),
    ],
)
def test_bad_arguments_name_the_parameter(labels: np.ndarray, call, param: str) -> None:
    with pytest.raises(ValueError, match=param):
        call(labels)


@settings(max_examples=60, deadline=None)
@given(
    raw=st.lists(st.integers(0, 5), min_size=1, max_size=200),
    data=st.data(),
)
def test_exact_cover_property(raw: list[int], data: st.DataObject) -> None:
    labels = np.array(raw)
    n, num_classes = len(labels), len(np.unique(labels))
    seed = data.draw(st.integers(0, 2**32), label="seed")
    num_clients = data.draw(st.integers(1, n), label="num_clients")
    assert_exact_cover(iid(labels, num_clients, seed), n, num_clients)

    alpha = data.draw(st.floats(0.05, 100.0), label="alpha")
    # "No draw" is allowed only where the split is really improbable. For alpha >= 1 a client's
    # share of a class is Beta(alpha, (k-1) alpha), which puts it under one sample of n with
    # probability <= about k/n; at n >= 2k^2 a draw leaves no client empty with probability
    # >= ~exp(-1/2), so 1000 draws all failing has probability < 1e-200.
    feasible = alpha >= 1 and n >= 2 * num_clients**2
    try:
        assert_exact_cover(dirichlet(labels, num_clients, seed, alpha), n, num_clients)
    except ValueError as err:
        assert "no draw" in str(err) and not feasible, f"{err} (n={n}, clients={num_clients}, alpha={alpha})"

    cpc = data.draw(st.integers(1, 4), label="classes_per_client")
    if num_classes <= num_clients * cpc <= n:
        parts = shards(labels, num_clients, seed, cpc)
        assert_exact_cover(parts, n, num_clients)
        assert max(len(np.unique(labels[p])) for p in parts) <= cpc


@pytest.mark.parametrize("seed", range(5))
def test_dirichlet_splits_small_datasets_and_refuses_only_the_improbable(seed: int) -> None:
    labels = np.repeat(np.arange(3), 20)  # 60 samples
    assert_exact_cover(dirichlet(labels, 5, seed, 1.0), 60, 5)  # n >= 2 k^2: always found
    with pytest.raises(ValueError, match="no draw in 1000 gave every one of 60 clients >= 1 samples with alpha=0.05"):
        dirichlet(labels, 60, seed, 0.05)  # one sample each, at alpha 0.05: essentially never


@pytest.mark.parametrize("name", ["iid", "dirichlet", "shards"])
def test_partition_configs_instantiate(labels: np.ndarray, name: str) -> None:
    partitioner = instantiate(OmegaConf.load(CONF / "partition" / f"{name}.yaml"))
    parts = partitioner(labels=labels, num_clients=10, seed=0)
    assert_exact_cover(parts, len(labels), 10)


def test_show_writes_the_partitions_label_counts(tmp_path: Path, capsys) -> None:
    from fedsim.data.show import main
    from fedsim.engine.context import RunContext
    from conftest import make_config

    overrides = ["dataset=digits", "partition=shards", "partition.classes_per_client=2", "num_clients=6"]
    assert main([*overrides, "--out", str(tmp_path)]) == 0
    counts = np.loadtxt(tmp_path / "label_distribution.csv", delimiter=",", skiprows=1, dtype=int)[:, 1:]
    ctx = RunContext.from_config(make_config(*overrides))
    assert counts.sum(1).tolist() == [len(p) for p in ctx.partitions]
    assert ((counts > 0).sum(1) <= 2).all()
    assert (tmp_path / "label_distribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["partition=bogus", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("fedsim.data.show: error: ")
