"""Omniscient attacks and the robust combines added for them: each one's defining property, and an
attack x defense grid through the real engine."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest
import torch

from fedsim.attacks.poisoning.omniscient import ALIE, FallOfEmpires, MinMax, MinSum
from fedsim.defenses.robust_extra import CenteredClipping, FoolsGold, GeometricMedian
from fedsim.strategy import ClientUpdate

GEN = torch.Generator().manual_seed(0)
HONEST = [{"w": torch.randn(4, 3, generator=GEN), "b": torch.randn(3, generator=GEN)} for _ in range(7)]


def flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([update["w"].flatten(), update["b"].flatten()])


def test_alie_is_mean_minus_z_std_with_the_papers_z() -> None:
    forged = ALIE(count=3).forge(1, HONEST, [7, 8, 9])
    n, f = 10, 3
    z = NormalDist().inv_cdf((n - (math.floor(n / 2 + 1) - f)) / n)
    rows = torch.stack([flat(h) for h in HONEST])
    expected = rows.mean(0) - z * rows.std(0)
    assert len(forged) == 3 and all(torch.allclose(flat(x), expected, atol=1e-6) for x in forged)
    assert forged[0]["w"].shape == (4, 3) and forged[0] is not forged[1]


def test_fall_of_empires_reverses_the_inner_product_with_the_honest_mean() -> None:
    mean = torch.stack([flat(h) for h in HONEST]).mean(0)
    for epsilon in (0.1, 100.0):
        (forged,) = FallOfEmpires(count=1, epsilon=epsilon).forge(1, HONEST, [7])
        torch.testing.assert_close(flat(forged), -epsilon * mean)
        assert float(flat(forged) @ mean) < 0


@pytest.mark.parametrize("attack", [MinMax, MinSum])
def test_min_max_and_min_sum_push_as_far_as_their_bound_allows(attack) -> None:
    honest = torch.stack([flat(h) for h in HONEST])
    pairwise = torch.cdist(honest, honest)
    forger = attack(count=2)
    (forged, _) = forger.forge(1, HONEST, [7, 8])
    x = flat(forged)
    if attack is MinMax:
        assert float(torch.cdist(x[None], honest).max()) <= float(pairwise.max()) + 1e-5
    else:
        assert float(torch.cdist(x[None], honest).pow(2).sum()) <= float(pairwise.pow(2).sum(1).max()) + 1e-4
    beyond = honest.mean(0) + (float((x - honest.mean(0)).norm() / forger.perturbation(honest).norm()) + 0.01) * forger.perturbation(honest)
    assert not forger.within(beyond, honest, pairwise)  # gamma is maximal (to the search's tolerance)
    assert float((x - honest.mean(0)).norm()) > 0


def updates(rows: list[torch.Tensor], counts: list[int] | None = None) -> list[ClientUpdate]:
    return [ClientUpdate(i, {"v": r}, (counts or [1] * len(rows))[i]) for i, r in enumerate(rows)]


def test_geometric_median_resists_fewer_than_half_outliers() -> None:
    honest = [torch.tensor([1.0, 0.0]) + 0.01 * torch.randn(2, generator=GEN) for _ in range(6)]
    for scale in (1e2, 1e6):
        outliers = [torch.tensor([scale, -scale])] * 5
        median = GeometricMedian().combiner()(updates(honest + outliers))["v"]
        assert float((median - torch.tensor([1.0, 0.0])).norm()) < 1.0  # bounded, whatever the outliers' scale
    mean = GeometricMedian().combiner()(updates(honest + [torch.tensor([1e6, -1e6])] * 6))["v"]
    assert float(mean.norm()) > 1e3  # at half the weight it breaks down


def test_geometric_median_of_collinear_points_is_the_weighted_median() -> None:
    points = [torch.tensor([float(x), 0.0]) for x in (0, 1, 2, 10)]
    median = GeometricMedian(iterations=200).combiner()(updates(points, [1, 1, 5, 1]))["v"]
    torch.testing.assert_close(median, torch.tensor([2.0, 0.0]), atol=1e-3, rtol=0)


def test_centered_clipping_moves_at_most_tau_over_n_per_outlier() -> None:
    defense = CenteredClipping(tau=1.0)
    combine = defense.combiner()
    honest = [torch.zeros(3)] * 9
    out = combine(updates(honest + [torch.tensor([1e9, 0.0, 0.0])]))["v"]
    assert float(out.norm()) <= 1.0 / 10 + 1e-6
    again = combine(updates(honest + [torch.tensor([1e9, 0.0, 0.0])]))["v"]
    assert float(again.norm()) <= 2 * (1.0 / 10) + 1e-6  # from the previous aggregate: the state carries
    assert set(defense.state_dict()) == {"center"}


def test_foolsgold_gives_identical_sybils_no_weight() -> None:
    defense = FoolsGold()
    combine = defense.combiner()
    sybil = torch.tensor([5.0, 5.0, 0.0, 0.0])
    honest = [torch.tensor([1.0, 0.0, 0.2, 0.0]), torch.tensor([0.0, 1.0, 0.0, 0.3]), torch.tensor([0.1, 0.0, 1.0, 0.0])]
    for _ in range(3):
        out = combine(updates(honest + [sybil, sybil, sybil]))["v"]
    w = defense.weights(torch.stack([defense.histories[i] for i in range(6)]))
    assert w[3:].tolist() == [0.0, 0.0, 0.0] and float(w[:3].min()) > 0
    torch.testing.assert_close(out, (w[:3, None] * torch.stack(honest)).sum(0) / w[:3].sum())


GRID_ATTACKS = ["alie", "foe", "ipm", "min_max", "min_sum"]
GRID_DEFENSES = ["geometric_median", "centered_clipping", "foolsgold"]


@pytest.mark.parametrize("attack", GRID_ATTACKS)
def test_each_omniscient_attack_runs_through_the_engine_and_is_scored(run_sim, attack) -> None:
    _, records, _ = run_sim(f"attack={attack}", "attack.count=1", "rounds=2")
    roles = [c["role"] for c in records[0]["clients"].values()]
    kinds = {c["kind"] for c in records[0]["clients"].values() if c["role"] == "malicious"}
    assert roles.count("malicious") == 1 and kinds == {"foe" if attack == "ipm" else attack}
    assert all(math.isfinite(r["test_loss"]) for r in records) or attack == "foe"


@pytest.mark.parametrize(
    ("defense", "attackers"),
    [(["defense=geometric_median"], 1), (["defense=centered_clipping", "defense.tau=0.05"], 1), (["defense=foolsgold"], 2)],
)
def test_each_new_defense_survives_foe_where_fedavg_does_not(run_sim, defense, attackers) -> None:
    """Through the engine: geometric median and centered clipping (a radius at the scale of these
    updates; the default 10 is far above it and lets FOE through) against one FOE attacker, FoolsGold
    against two identical FOE sybils (its threat model: one attacker alone is not a sybil)."""
    attacked = ("attack=foe", f"attack.count={attackers}", "rounds=3", "num_clients=6", "clients_per_round=6")
    _, plain, _ = run_sim(*attacked)
    _, defended, _ = run_sim(*attacked, *defense)
    assert defended[-1]["test_acc"] > plain[-1]["test_acc"] + 0.2, (defended[-1]["test_acc"], plain[-1]["test_acc"])
