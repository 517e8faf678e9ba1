"""Data attacks (label flips, unreliable clients), the mixed attack and attack metrics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedsim.attack import BENIGN, MALICIOUS, UNRELIABLE
from fedsim.attacks.poisoning.label_flip import LabelFlip, MultiLabelFlip
from fedsim.attacks.poisoning.unreliable import Unreliable
from conftest import Run
from poisoning_helpers import make_cfg

GEN = torch.Generator().manual_seed(0)


def test_targeted_flip_changes_only_the_source_label():
    y = torch.arange(10).repeat(3)
    x = torch.randn(30, 1, 4, 4)
    x2, y2 = LabelFlip(fraction=0.1, source=1, target=7).poison_data(x, y, GEN)
    assert torch.equal(x2, x)
    assert (y2[y == 1] == 7).all() and torch.equal(y2[y != 1], y[y != 1])


def test_all_label_permutation_and_multi_label_flip():
    y = torch.arange(10)
    _, y_all = LabelFlip(fraction=0.1, mode="all").poison_data(torch.zeros(10, 1), y, GEN)
    assert y_all.tolist() == [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    _, y_multi = MultiLabelFlip(fraction=0.1, sources=[1, 2, 3], target=7).poison_data(torch.zeros(10, 1), y, GEN)
    assert y_multi.tolist() == [0, 7, 7, 7, 4, 5, 6, 7, 8, 9]


@pytest.mark.parametrize(
    "kwargs, field",
    [({"source": 1, "target": 1}, "attack.target=1: must be a label other than the source 1"),
     ({"target": 12}, r"attack.target=12: must be an integer in \[0, 9\]"), ({"mode": "x"}, "attack.mode='x'")],
)
def test_label_flip_rejects_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        LabelFlip(fraction=0.1, **kwargs)


class Fixed(nn.Module):
    """Predicts a fixed class per true label (through a lookup on a one-hot input)."""

    def __init__(self, answer: list[int]) -> None:
        super().__init__()
        self.answer = torch.tensor(answer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(self.answer[x.long().flatten()], 10).float()


def test_attack_success_rate_and_source_recall():
    y = torch.tensor([1, 1, 1, 1, 2, 3])
    model = Fixed([0, 7, 2, 3, 4, 5, 6, 7, 8, 9])  # every 1 predicted as 7
    m = LabelFlip(fraction=0.1).test_metrics(model, y[:, None].float(), y)
    assert m == {"source_recall": 0.0, "attack_success_rate": 1.0}
    honest = Fixed(list(range(10)))
    assert LabelFlip(fraction=0.1).test_metrics(honest, y[:, None].float(), y)["attack_success_rate"] == 0.0


@pytest.mark.parametrize("degradation", ["blur", "noise", "low_res"])
def test_unreliable_uses_fewer_samples_and_degrades_some(degradation):
    x = torch.randn(400, 1, 8, 8)
    y = torch.arange(400) % 10
    attack = Unreliable(fraction=0.1, degradation=degradation)
    x2, y2 = attack.poison_data(x, y, torch.Generator().manual_seed(1))
    assert 80 < len(y2) < 160  # about 30% used
    kept = torch.nonzero(torch.isin(x.flatten(1)[:, 0], x2.flatten(1)[:, 0])).flatten()  # undegraded survivors
    assert 0.3 < len(kept) / len(y2) < 0.7  # about half degraded
    assert attack.role == UNRELIABLE


def test_blur_smooths_images():
    x = torch.randn(4, 1, 16, 16)
    blurred = Unreliable(fraction=0.1).degrade(x, GEN)
    assert blurred.shape == x.shape and blurred.std() < 0.5 * x.std()
    flat = torch.full((1, 1, 8, 8), 0.3)
    torch.testing.assert_close(Unreliable(fraction=0.1).degrade(flat, GEN), flat)


def test_mixed_assigns_disjoint_seeded_sets_with_true_roles():
    cfg = make_cfg("num_clients=20", "attack=mixed", "attack.fraction=0.1")
    attack = Run(cfg).attack
    acting = [attack.for_client(c, 20, 0) for c in range(20)]
    kinds = [a.name if a else BENIGN for a in acting]
    assert {k: kinds.count(k) for k in set(kinds)} == {
        BENIGN: 10, "sign_flip": 2, "additive_noise": 2, "label_flip": 2, "multi_label_flip": 2, UNRELIABLE: 2
    }
    roles = [a.role if a else BENIGN for a in acting]
    assert roles.count(MALICIOUS) == 8 and roles.count(UNRELIABLE) == 2
    with pytest.raises(ValueError, match="components' 30 attackers to fit in num_clients=20"):
        Run(make_cfg("num_clients=20", "attack=mixed", "attack.fraction=0.3")).attack.for_client(0, 20, 0)
