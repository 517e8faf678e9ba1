"""The client-state store: spills to disk within a memory budget without changing a number; checkpoints write only what changed."""

from __future__ import annotations

import torch

from conftest import make_config, metrics_only, read_rounds
from fedsim.checkpoint import Checkpoint, CheckpointStore, read_checkpoint
from fedsim.engine import state_store
from fedsim.engine.simulation import simulate
from fedsim.engine.state_store import ClientStateStore
from fedsim.state import from_record, to_record


def entries(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {
        "state.a": to_record({"w": torch.randn(50, 4, generator=g), "n": torch.arange(3), "flag": torch.tensor([True, False])}),
        "state.b": to_record({"half": torch.randn(7, generator=g).to(torch.float16), "scalar": torch.tensor(2.5), "empty": torch.zeros(0)}),
    }


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        ta, tb = from_record(a[key]), from_record(b[key])
        assert ta.keys() == tb.keys()
        for name in ta:
            assert ta[name].dtype == tb[name].dtype and torch.equal(ta[name], tb[name]), (key, name)


def test_the_store_spills_the_least_recently_used_and_reads_them_back_exactly(tmp_path):
    one = sum(t.numel() * t.element_size() for r in entries(0).values() for t in r.to_torch_state_dict().values())
    store = ClientStateStore(tmp_path / "spill", budget_bytes=2 * one)
    for cid in range(5):
        store[cid] = entries(cid)
    assert store.memory_bytes <= 2 * one and store.spilled == 3 and len(store) == 5 and list(store) == [0, 1, 2, 3, 4]
    _ = store[3]  # a read makes 3 the most recently used of the held ones: writing 5 spills 4
    store[5] = entries(5)
    assert 3 in store._memory and 4 not in store._memory
    for cid in range(6):
        assert_same(store[cid], entries(cid))
    store[0] = entries(10)  # a rewrite of a spilled state replaces it and bumps its version
    assert_same(store[0], entries(10)) and store.versions[0] == 2 and store.versions[1] == 1
    del store[1]
    assert 1 not in store and len(store) == 5 and not (tmp_path / "spill" / "1").exists()
    store.close()
    assert not (tmp_path / "spill").exists()


def test_a_run_that_spills_every_state_is_bit_identical_to_one_in_memory(tmp_path, monkeypatch):
    writes = []
    real_write = state_store.ClientStateStore._write
    monkeypatch.setattr(state_store.ClientStateStore, "_write", lambda self, cid, e: (writes.append(cid), real_write(self, cid, e)))
    common = ("compression=dgc", "num_clients=8", "clients_per_round=3", "rounds=4", "checkpoint_every=2")
    simulate(make_config(*common), tmp_path / "memory", progress=False)
    assert not writes
    simulate(make_config(*common, "client_state_memory_mb=0.01"), tmp_path / "spilled", progress=False)
    assert len(set(writes)) >= 3  # states were spilled and read back when their client was sampled again
    assert metrics_only(read_rounds(tmp_path / "memory")) == metrics_only(read_rounds(tmp_path / "spilled"))
    a, b = (read_checkpoint(d / "checkpoints" / "round_000004.pt") for d in (tmp_path / "memory", tmp_path / "spilled"))
    assert set(a.client_states) == set(b.client_states) and len(a.client_states) >= 6
    for cid in a.client_states:
        for key, tensors in a.client_states[cid].items():
            assert all(torch.equal(t, b.client_states[cid][key][n]) for n, t in tensors.items())
    assert not (tmp_path / "spilled" / "client_states").exists()  # the spill folder is removed at the end


def test_a_checkpoint_writes_only_the_states_changed_since_the_last(tmp_path):
    store = CheckpointStore(tmp_path, keep=2)
    states = {cid: {"r": {"w": torch.full((2,), float(cid))}} for cid in range(3)}

    def save(rnd: int, versions: dict) -> None:
        store.save(Checkpoint(rnd, {}, {"g": torch.zeros(1)}, states, {}, []), versions=versions)

    save(1, {0: 1, 1: 1, 2: 1})
    first = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "clients").iterdir()}
    states[1] = {"r": {"w": torch.full((2,), 9.0)}}
    save(2, {0: 1, 1: 2, 2: 1})
    files = sorted(p.name for p in (tmp_path / "clients").iterdir())
    assert files == ["0_v1.pt", "1_v1.pt", "1_v2.pt", "2_v1.pt"]  # one new file; round 1 still names 1_v1
    assert all((tmp_path / "clients" / n).stat().st_mtime_ns == t for n, t in first.items())  # nothing rewritten
    assert read_checkpoint(tmp_path / "round_000001.pt").client_states[1]["r"]["w"].tolist() == [1.0, 1.0]
    assert read_checkpoint(tmp_path / "round_000002.pt").client_states[1]["r"]["w"].tolist() == [9.0, 9.0]
    states[0] = {"r": {"w": torch.full((2,), 7.0)}}
    save(3, {0: 2, 1: 2, 2: 1})  # round 1 is dropped, and with it 1_v1 (round 2 still names 0_v1)
    assert sorted(p.name for p in (tmp_path / "clients").iterdir()) == ["0_v1.pt", "0_v2.pt", "1_v2.pt", "2_v1.pt"]
