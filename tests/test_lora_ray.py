"""FFA-LoRA with DP-SGD end to end through Flower's Ray simulation engine: same numbers as the inline backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import make_config, read_rounds
from fedsim.engine.simulation import simulate
from test_lora import TINY


def test_ffa_lora_dp_through_ray_matches_inline(tmp_path: Path) -> None:
    run = (*TINY, "strategy=ffa_lora", "dp.noise_multiplier=1.0", "dp.reproducible_noise=true", "rounds=2")
    simulate(make_config(*run, "backend=ray", "backend.num_cpus=2"), tmp_path / "ray", progress=False)
    simulate(make_config(*run), tmp_path / "inline", progress=False)
    ray, inline = read_rounds(tmp_path / "ray"), read_rounds(tmp_path / "inline")
    assert [r["clients_aggregated"] for r in ray] == [3, 3]
    assert [r["bytes_up"] for r in ray] == [r["bytes_up"] for r in inline]
    assert [r["test_acc"] for r in ray] == [r["test_acc"] for r in inline]
    assert [r["test_loss"] for r in ray] == pytest.approx([r["test_loss"] for r in inline], rel=1e-6)
    epsilons = [r["clients"]["0"]["dp_epsilon"] for r in ray]
    assert epsilons == pytest.approx([r["clients"]["0"]["dp_epsilon"] for r in inline]) and epsilons[0] < epsilons[1]
