"""Robust aggregators (Flower's functions as fedsim defenses) on constructed updates and in a run."""

from __future__ import annotations

import json

import pytest
import torch

from fedsim.defenses.robust import Bulyan, Krum, Median, MultiKrum, TrimmedMean
from fedsim.engine.simulation import simulate
from fedsim.strategy import ClientUpdate
from poisoning_helpers import make_cfg


def updates_with_outliers(n_honest: int = 7, n_bad: int = 2) -> list[ClientUpdate]:
    gen = torch.Generator().manual_seed(0)
    honest = [{"w": 1.0 + 0.01 * torch.randn(3, 4, generator=gen), "b": torch.ones(4)} for _ in range(n_honest)]
    bad = [{"w": torch.full((3, 4), -50.0), "b": torch.full((4,), 80.0)} for _ in range(n_bad)]
    return [ClientUpdate(i, u, 10) for i, u in enumerate(honest + bad)]


def test_krum_and_multi_krum_drop_the_outliers():
    ups = updates_with_outliers()
    v = Krum(num_malicious=2).screen(1, ups)
    assert sum(v.keep) == 1 and not any(v.keep[7:])
    v = MultiKrum(num_malicious=2, num_selected=5).screen(1, ups)
    assert sum(v.keep) == 5 and not any(v.keep[7:]) and v.labels[7:] == ["malicious", "malicious"]


@pytest.mark.parametrize("defense", [Median(), TrimmedMean(beta=0.25), Bulyan(num_malicious=1)])
def test_coordinate_wise_aggregates_ignore_the_outliers(defense):
    ups = updates_with_outliers(n_honest=7, n_bad=2) if not isinstance(defense, Bulyan) else updates_with_outliers(7, 1)
    v = defense.screen(1, ups)
    combined = defense.combiner()([u for u, keep in zip(ups, v.keep) if keep])
    torch.testing.assert_close(combined["w"], torch.ones(3, 4), atol=0.05, rtol=0)
    torch.testing.assert_close(combined["b"], torch.ones(4))


def test_bulyan_skips_a_round_that_is_too_small():
    assert not any(Bulyan(num_malicious=2).screen(1, updates_with_outliers(5, 1)).keep)


def test_bad_parameters_name_the_field():
    with pytest.raises(ValueError, match="defense.beta=0.5"):
        TrimmedMean(beta=0.5)
    with pytest.raises(ValueError, match="defense.num_malicious=-1"):
        Krum(num_malicious=-1)


def test_median_defense_stops_sign_flippers_end_to_end(tmp_path):
    common = ["rounds=4", "lr=0.2", "num_clients=10", "clients_per_round=10", "attack=sign_flip", "attack.fraction=0.4",
              "attack.scale=4"]
    plain = simulate(make_cfg(*common), tmp_path / "none", progress=False)
    robust = simulate(make_cfg(*common, "defense=median"), tmp_path / "median", progress=False)
    assert robust["final_test_acc"] > plain["final_test_acc"] + 0.3
    record = json.loads((tmp_path / "median" / "rounds.jsonl").read_text().splitlines()[-1])
    assert record["clients_aggregated"] == 10 and record["detection"]["by_kind"]["sign_flip"]["clients"] == 4
