"""MUD-HoG: detection on constructed updates, moving short history, checkpoint round trip, a run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fedsim.defenses.mudhog import MudHog, largest_gap_split
from fedsim.engine.simulation import simulate
from fedsim.strategy import ClientUpdate
from poisoning_helpers import make_cfg

HONEST, FLIPPERS, NOISY = 12, (0, 1), (2, 3)


def round_updates(server_round: int) -> list[ClientUpdate]:
    """Honest clients share a drifting direction plus small noise; 0, 1 flip it; 2, 3 add big noise."""
    gen = torch.Generator().manual_seed(server_round)
    direction = torch.linspace(-1, 1, 50) + 0.2 * server_round
    out = []
    for c in range(HONEST):
        u = direction + 0.05 * torch.randn(50, generator=gen)
        if c in FLIPPERS:
            u = -u
        if c in NOISY:
            u = u + 3.0 * torch.randn(50, generator=gen)
        out.append(ClientUpdate(c, {"w": u[:40].reshape(4, 10), "b": u[40:]}, 10))
    return out


@pytest.mark.parametrize("history", ["short", "long"])
def test_mudhog_flags_sign_flippers_and_noise_on_constructed_updates(history):
    defense = MudHog(tau0=3, dbscan_eps=2.0, dbscan_min_samples=4, sign_flip_history=history)
    for r in range(1, 8):
        verdict = defense.screen(r, round_updates(r))
        if r <= 3:
            assert all(verdict.keep)  # plain rounds
    assert [verdict.labels[c] for c in FLIPPERS] == ["sign_flip", "sign_flip"]
    assert [verdict.labels[c] for c in NOISY] == ["additive_noise", "additive_noise"]
    assert not any(verdict.keep[c] for c in FLIPPERS + NOISY)
    honest = [c for c in range(HONEST) if c not in FLIPPERS + NOISY]
    assert all(verdict.labels[c] in ("benign", "unreliable") for c in honest)
    kept = [u for u, k in zip(round_updates(7), verdict.keep) if k]
    torch.testing.assert_close(defense.combiner()(kept)["b"], torch.stack([u.update["b"] for u in kept]).mean(0))


def test_mudhog_short_history_moves_every_round():
    defense = MudHog(short_window=3)
    seen = []
    for r in range(1, 7):
        defense.screen(r, round_updates(r))
        seen.append(defense.short_hog(5))
    for a, b in zip(seen, seen[1:]):
        assert not np.allclose(a, b)  # the reference code's window froze from round 4 on
    last3 = [torch.cat([u.update["w"].flatten(), u.update["b"]]).double().numpy() for u in
             (round_updates(r)[5] for r in (4, 5, 6))]
    np.testing.assert_allclose(seen[-1], np.mean(last3, axis=0))
    np.testing.assert_allclose(defense.long[5], sum(
        torch.cat([round_updates(r)[5].update["w"].flatten(), round_updates(r)[5].update["b"]]).double().numpy()
        for r in range(1, 7)))


def test_mudhog_history_survives_a_checkpoint(tmp_path):
    whole, first = MudHog(dbscan_eps=2.0, dbscan_min_samples=4), MudHog(dbscan_eps=2.0, dbscan_min_samples=4)
    for r in range(1, 5):
        whole.screen(r, round_updates(r))
        first.screen(r, round_updates(r))
    resumed = MudHog(dbscan_eps=2.0, dbscan_min_samples=4)
    saved = tmp_path / "mudhog.pt"
    torch.save(first.state_dict(), saved)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    for r in range(5, 8):
        a, b = whole.screen(r, round_updates(r)), resumed.screen(r, round_updates(r))
        assert a.keep == b.keep and a.labels == b.labels


def test_largest_gap_split_and_bad_parameters():
    assert largest_gap_split([0.1, 0.2, 0.9, 1.0]) == pytest.approx(0.55)
    assert largest_gap_split([0.3]) == 0.0
    with pytest.raises(ValueError, match="defense.dbscan_eps=0"):
        MudHog(dbscan_eps=0)
    with pytest.raises(ValueError, match="defense.short_window=0"):
        MudHog(short_window=0)


def test_mudhog_end_to_end_excludes_confirmed_sign_flippers(tmp_path):
    cfg = make_cfg("rounds=6", "lr=0.2", "num_clients=10", "clients_per_round=10", "attack=sign_flip",
                   "attack.fraction=0.2", "attack.scale=3", "defense=mudhog")
    simulate(cfg, tmp_path, progress=False)
    records = [json.loads(line) for line in (tmp_path / "rounds.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["detection"]["by_kind"]["sign_flip"] == {"clients": 2, "flagged": 2, "flagged_share": 1.0}
    assert last["detection"]["precision"] == 1.0
    flippers = {c for c, m in last["clients"].items() if m["kind"] == "sign_flip"}
    assert flippers <= {str(c) for c in last["excluded"]}
    assert last["test_acc"] > 0.7


def test_official_short_window_freezes_after_the_first_updates_as_the_reference_code() -> None:
    paper, official = MudHog(short_window=3), MudHog(short_window=3, short_window_mode="official")
    for step in range(1, 7):
        update = [ClientUpdate(0, {"w": torch.full((2,), float(step))}, 1)]
        paper.record(update)
        official.record(update)
    np.testing.assert_allclose(paper.short_hog(0), [5.0, 5.0])  # mean of steps 4, 5, 6: a moving window
    np.testing.assert_allclose(official.short_hog(0), [2.0, 2.0])  # mean of steps 1, 2, 3, frozen
    np.testing.assert_allclose(official.long[0], paper.long[0])  # the long HoG is the same sum either way
