"""Seed derivation: every random draw is a pure function of (seed, purpose, round, client).

Nothing depends on execution order, so results are identical for any number of
Ray workers and on either backend.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch


def derive_seed(seed: int, purpose: str, *keys: int) -> int:
    """A 63-bit seed for ``purpose`` (e.g. "train") at the given integer keys."""
    entropy = [int(seed), zlib.crc32(purpose.encode()), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(2, np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, purpose: str, *keys: int) -> np.random.Generator:
    """A numpy Generator for ``purpose`` at ``keys``."""
    return np.random.default_rng(derive_seed(seed, purpose, *keys))


def torch_generator(seed: int, purpose: str, *keys: int, device: str = "cpu") -> torch.Generator:
    """A torch Generator for ``purpose`` at ``keys``."""
    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, purpose, *keys))
    return gen
