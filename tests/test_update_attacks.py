"""Update attacks (sign flip, additive noise) and the shared seeded choice of attackers."""

from __future__ import annotations

import pytest
import torch

from fedsim.attack import BENIGN, MALICIOUS, SelectedClientsAttack
from fedsim.attacks.poisoning.additive_noise import AdditiveNoise
from fedsim.attacks.poisoning.sign_flip import SignFlip
from poisoning_helpers import client_round, make_cfg

N = 10


def attackers(attack: SelectedClientsAttack, seed: int = 0, n: int = N) -> list[int]:
    return [c for c in range(n) if attack.for_client(c, n, seed) is not None]


def test_fraction_and_count_pick_seeded_attackers():
    assert len(attackers(SignFlip(fraction=0.3))) == 3
    assert len(attackers(SignFlip(count=4))) == 4
    assert attackers(SignFlip(fraction=0.3)) == attackers(AdditiveNoise(fraction=0.3))  # same seed, same clients
    assert attackers(SignFlip(fraction=0.3), seed=0) != attackers(SignFlip(fraction=0.3), seed=1)
    assert attackers(SignFlip(fraction=0.0)) == []
    assert set(attackers(SignFlip(count=3))) <= set(attackers(SignFlip(count=5)))  # nested as k grows


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"fraction": 1.5}, "attack.fraction=1.5"),
        ({"count": -1}, "attack.count=-1"),
        ({"fraction": 0.1, "scale": 0}, "attack.scale=0"),
    ],
)
def test_sign_flip_rejects_bad_parameters(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SignFlip(**kwargs)


def test_count_overrides_the_fraction_a_config_file_sets():
    assert SignFlip(fraction=0.2, count=3).num_selected(N) == 3


def test_bad_noise_sigma_and_oversized_count_rejected():
    with pytest.raises(ValueError, match="attack.sigma=-1"):
        AdditiveNoise(fraction=0.1, sigma=-1)
    with pytest.raises(ValueError, match="attack.count=11"):
        SignFlip(count=11).for_client(0, N, 0)


def test_sign_flip_negates_the_update_of_malicious_clients_only():
    honest = make_cfg("num_clients=6")
    flipped = make_cfg("num_clients=6", "attack=sign_flip", "attack.fraction=0.5", "attack.scale=2")
    bad = attackers(SignFlip(fraction=0.5), n=6)
    for cid in range(6):
        clean, truth_clean = client_round(honest, cid)
        sent, truth = client_round(flipped, cid)
        assert truth_clean == {"role": BENIGN, "kind": BENIGN}
        expected = {k: -2 * v for k, v in clean.items()} if cid in bad else clean
        for k in clean:
            torch.testing.assert_close(sent[k], expected[k])
        assert truth == ({"role": MALICIOUS, "kind": "sign_flip"} if cid in bad else {"role": BENIGN, "kind": BENIGN})


def test_additive_noise_has_the_configured_scale_on_malicious_clients_only():
    honest = make_cfg("num_clients=6")
    noisy = make_cfg("num_clients=6", "attack=additive_noise", "attack.fraction=0.5", "attack.sigma=0.05")
    bad = attackers(AdditiveNoise(fraction=0.5), n=6)
    for cid in range(6):
        clean, _ = client_round(honest, cid)
        sent, truth = client_round(noisy, cid)
        diff = torch.cat([(sent[k] - clean[k]).flatten() for k in clean])
        if cid in bad:
            assert truth["kind"] == "additive_noise"
            assert abs(diff.mean().item()) < 0.005
            assert diff.std().item() == pytest.approx(0.05, rel=0.05)
        else:
            assert diff.abs().max().item() == 0.0
    again, _ = client_round(noisy, bad[0])
    sent, _ = client_round(noisy, bad[0])
    assert all(torch.equal(again[k], sent[k]) for k in sent)  # noise drawn from the seed
