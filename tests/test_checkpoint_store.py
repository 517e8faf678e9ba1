"""Checkpoint files: atomic, bounded, and a corrupt newest one falls back to the previous."""

from __future__ import annotations

import pytest
import torch

from fedsim.checkpoint import Checkpoint, CheckpointError, CheckpointStore


def checkpoint(rnd: int, fingerprint: str = "cfg") -> Checkpoint:
    return Checkpoint(
        round=rnd,
        fingerprint=fingerprint,
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
    loaded = store.load_latest("cfg")
    assert loaded.round == 3
    assert torch.equal(loaded.global_state["w"], torch.full((2, 2), 3.0))
    assert torch.equal(loaded.client_states[0]["residual"]["w"], torch.ones(2, 2) * 3)
    assert loaded.records[-1] == {"round": 3}


def test_truncated_newest_falls_back_to_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1))
    newest = store.save(checkpoint(2))
    newest.write_bytes(newest.read_bytes()[:100])
    assert store.load_latest("cfg").round == 1
    assert "round_000002.pt is unreadable" in caplog.text


def test_all_corrupt_is_a_clear_error(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save(checkpoint(1)).write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="no readable checkpoint.*round_000001.pt"):
        store.load_latest("cfg")


def test_other_config_refused_and_empty_folder_is_none(tmp_path):
    store = CheckpointStore(tmp_path)
    assert store.load_latest("cfg") is None
    store.save(checkpoint(1, fingerprint="other"))
    with pytest.raises(CheckpointError, match="different config"):
        store.load_latest("cfg")
