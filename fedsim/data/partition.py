"""Client partitioners: pure functions of (labels, num_clients, seed, scheme parameters).

Each returns one sorted int64 index array per client. No client is empty, and every sample index
appears in exactly one client (``natural`` with fewer clients than owners uses the chosen owners' only).
"""

from __future__ import annotations

import numpy as np

from fedsim.params import ParamError, check_range, check_that

_SALT = 7919  # separates partition draws from other uses of the same run seed
_MAX_DIRICHLET_TRIES = 1000


def iid(labels: np.ndarray, num_clients: int, seed: int) -> list[np.ndarray]:
    """Uniformly random split into ``num_clients`` parts whose sizes differ by at most one."""
    n = _check(labels, num_clients, seed)
    return _finish(np.array_split(_rng(seed).permutation(n), num_clients))


def dirichlet(
    labels: np.ndarray, num_clients: int, seed: int, alpha: float, min_size: int = 1
) -> list[np.ndarray]:
    """Label-skewed split: each class is spread over clients with proportions ~ Dir(alpha).

    The scheme of Yurochkin et al. 2019 / Hsu et al. 2019 (flwr-datasets'
    ``DirichletPartitioner``): smaller ``alpha`` means more skew. Proportions are
    redrawn, at most 1000 times, until every client holds at least ``min_size`` samples.
    """
    n = _check(labels, num_clients, seed)
    check_range("partition.alpha", alpha, low=0, low_open=True)
    check_range("partition.min_size", min_size, 1, n // num_clients, integer=True)
    rng = _rng(seed)
    by_class = _indices_by_class(labels)
    sizes = np.array([len(idx) for idx in by_class])
    for _ in range(_MAX_DIRICHLET_TRIES):
        counts = _dirichlet_counts(sizes, num_clients, alpha, rng)
        if counts.sum(axis=0).min() >= min_size:
            break
    else:
        raise ValueError(
            f"dirichlet: no draw in {_MAX_DIRICHLET_TRIES} gave every one of {num_clients} clients "
            f">= {min_size} samples with alpha={alpha}; raise alpha, or lower num_clients or min_size"
        )
    parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for idx, class_counts in zip(by_class, counts):
        for client, chunk in enumerate(np.split(rng.permutation(idx), np.cumsum(class_counts)[:-1])):
            parts[client].append(chunk)
    return _finish([np.concatenate(p) for p in parts])


def natural(labels: np.ndarray, num_clients: int, seed: int, groups: np.ndarray | None = None) -> list[np.ndarray]:
    """The dataset's own split: one client per natural owner (FEMNIST's writers, LEAF's partition).

    ``groups`` is the owner of each example (the engine passes the dataset's ``groups``). With as many
    clients as owners every example is used; with fewer, ``num_clients`` owners are drawn (seeded) and
    the others' examples are left out, as LEAF's user sampling does.
    """
    n = _check(labels, num_clients, seed)
    if groups is None:
        raise ParamError("partition=natural: this dataset has no natural split; use a dataset that has one "
                         "(dataset=femnist), or partition=iid|dirichlet|shards")
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"partition=natural: {len(groups)} owners for {n} examples")
    owners = np.unique(groups)
    check_that("num_clients", num_clients, num_clients <= len(owners),
               f"at most the dataset's {len(owners)} natural owners (partition=natural: one client per writer)")
    chosen = owners if num_clients == len(owners) else np.sort(_rng(seed).choice(owners, size=num_clients, replace=False))
    return _finish([np.flatnonzero(groups == owner) for owner in chosen])


def shards(labels: np.ndarray, num_clients: int, seed: int, classes_per_client: int) -> list[np.ndarray]:
    """Pathological non-IID split (McMahan et al. 2017): each client gets ``classes_per_client`` shards.

    Samples are grouped by label and cut into ``num_clients * classes_per_client``
    single-label shards of near-equal size (each class gets shards in proportion to its
    size, so every sample lands in a shard); the shards are dealt at random. A client
    therefore sees at most ``classes_per_client`` labels. When class sizes are
    multiples of the shard size this is exactly McMahan's sort-and-cut.
    """
    n = _check(labels, num_clients, seed)
    check_range("partition.classes_per_client", classes_per_client, low=1, integer=True)
    num_shards = num_clients * classes_per_client
    by_class = _indices_by_class(labels)
    if not len(by_class) <= num_shards <= n:
        raise ValueError(
            f"partition.classes_per_client={classes_per_client}: num_clients * classes_per_client = {num_shards} must lie between the number "
            f"of classes ({len(by_class)}) and the number of samples ({n})"
        )
    rng = _rng(seed)
    per_class = _allocate_shards(np.array([len(idx) for idx in by_class]), num_shards)
    pieces = [
        shard
        for idx, k in zip(by_class, per_class)
        for shard in np.array_split(rng.permutation(idx), k)
    ]
    order = rng.permutation(num_shards)
    return _finish(
        [np.concatenate([pieces[s] for s in order[c::num_clients]]) for c in range(num_clients)]
    )


def _check(labels: np.ndarray, num_clients: int, seed: int) -> int:
    """Validate the common arguments; return the number of samples."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {labels.shape}")
    if num_clients < 1 or num_clients > len(labels):
        raise ValueError(f"num_clients must be in [1, {len(labels)}] (number of samples), got {num_clients}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return len(labels)


def _rng(seed: int) -> np.random.Generator:
    """The partition generator: a function of ``seed`` alone."""
    return np.random.default_rng([int(seed), _SALT])


def _indices_by_class(labels: np.ndarray) -> list[np.ndarray]:
    """Sample indices of each distinct label, in label order."""
    _, inverse = np.unique(np.asarray(labels), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def _dirichlet_counts(
    sizes: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> np.ndarray:
    """(classes, clients) sample counts: each class's size cut at Dir(alpha) proportions."""
    proportions = rng.dirichlet(np.full(num_clients, alpha), size=len(sizes))
    cuts = np.floor(np.cumsum(proportions, axis=1)[:, :-1] * sizes[:, None]).astype(np.int64)
    cuts = np.minimum(cuts, sizes[:, None])
    return np.diff(cuts, axis=1, prepend=0, append=sizes[:, None])


def _allocate_shards(sizes: np.ndarray, num_shards: int) -> np.ndarray:
    """Shards per class: at least one each, proportional to class size, rest by D'Hondt.

    Every count stays <= its class size because ``num_shards`` <= total samples.
    """
    per_class = np.maximum(1, num_shards * sizes // sizes.sum())
    if per_class.sum() > num_shards:
        per_class = np.ones(len(sizes), dtype=np.int64)
    for _ in range(num_shards - int(per_class.sum())):
        per_class[np.argmax(sizes / per_class)] += 1
    return per_class


def _finish(parts: list[np.ndarray]) -> list[np.ndarray]:
    """Sort each client's indices and make them int64."""
    return [np.sort(p).astype(np.int64) for p in parts]
