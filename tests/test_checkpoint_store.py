"""Checkpoint files: atomic, bounded, and a corrupt newest one falls back to the previous."""

from __future__ import annotations

import pytest
import torch

from fedsim.checkpoint import Checkpoint, CheckpointError, CheckpointStore, numbers_config


CFG = {"rounds": 5, "lr": 0.05, "seed": 0, "backend": {"name": "inline", "client_threads": 1}, "resume": True}


def checkpoint(rnd: int, cfg: dict = CFG) -> Checkpoint:
    return Checkpoint(
        round=rnd,
        config=numbers_config(cfg),
        global_state={"w": torch.full((2, 2), float(rnd))},
        client_states={0: {"residual": {"w": torch.ones(2, 2) * rnd}}},
        components={"strategy": {"h_sum": torch.zeros(3)}},
        records=[{"round": r} for r in range(1, rnd + 1)],
    )


def test_roundtrip_and_only_newest_kept(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    for rnd in (1, 2, 3):
        store.save(checkpoint(rnd))
    assert [p.name for p in store.paths()] == ["round_000003.pt", "round_000002.pt"]
    assert not list(tmp_path.glob("*.tmp"))
    loaded = store.load_latest(CFG)
    assert loaded.round == 3
    assert torch.equal(loaded.global_state["w"], torch.full((2, 2), 3.0))
    assert torch.equal(loaded.client_states[0]["residual"]["w"], torch.ones(2, 2) * 3)
    assert loaded.records[-1] == {"round": 3}


def test_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    newest = store.save(checkpoint(2))
    newest.write_bytes(newest.read_bytes()[:100])
    assert store.load_latest(CFG).round == 1
    assert "round_000002.pt is unusable" in caplog.text


def test_all_corrupt_is_a_clear_error(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1)).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no usable checkpoint.*round_000001.pt"):
        store.load_latest(CFG)


def test_other_config_refused_by_name_and_empty_folder_is_none(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load_latest(CFG) is None
    store.save(checkpoint(1, {**CFG, "lr": 0.2, "backend": {"name": "ray", "client_threads": 2}}))
    with pytest.raises(CheckpointError, match=r"different config \(backend.client_threads: 2 -> 1; lr: 0.2 -> 0.05\)"):
        store.load_latest(CFG)  # the backend's name may change on resume, its thread count (the numbers) may not


def test_a_longer_horizon_resumes_a_finished_run_unless_dp_epsilon_spends_it(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(5))
    assert store.load_latest({**CFG, "rounds": 8}).round == 5
    dp_cfg = {**CFG, "dp": {"epsilon": 6.0}}
    CheckpointStore(tmp_path / "dp").save(checkpoint(5, dp_cfg))
    with pytest.raises(CheckpointError, match=r"rounds: 5 -> 8"):
        CheckpointStore(tmp_path / "dp").load_latest({**dp_cfg, "rounds": 8})


@pytest.mark.parametrize("corruption", ["negative round", "round past the horizon", "nan global", "inf client state"])
def test_an_absurd_or_non_finite_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog, corruption):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    bad = checkpoint(2)
    if corruption == "negative round":
        bad.round = -3
    elif corruption == "round past the horizon":
        bad.round = 99
    elif corruption == "nan global":
        bad.global_state["w"][0, 0] = float("nan")
    else:
        bad.client_states[0]["residual"]["w"][1, 1] = float("inf")
    path = store.save(bad)
    path.rename(tmp_path / "round_000002.pt")  # where the newest genuine one would be
    assert store.load_latest(CFG).round == 1
    assert "round_000002.pt is unusable" in caplog.text
