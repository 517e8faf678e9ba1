"""Vectorised cohorts (backend.vectorize): the same per-client training as the sequential path, as one vmap."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from flwr.app import RecordDict

from conftest import make_config, metrics_only, read_rounds
from fedsim.checkpoint import read_checkpoint
from fedsim.engine.cohort import train_stacked
from fedsim.engine.context import Run
from fedsim.engine.simulation import simulate
from fedsim.seeding import torch_generator
from fedsim.state import ClientState
from fedsim.strategy import LocalTask
from fedsim.training import OptimizerConfig
from fedsim.strategies.monna import MOMENTUM_KEY

SGD = OptimizerConfig(momentum=0.9, nesterov=True, weight_decay=1e-3, grad_clip=0.5)


def tasks_of(env: Run, sizes: list[int], personal: bool = False) -> list[LocalTask]:
    """Clients holding ``sizes`` examples (unequal: their step counts differ). Each has its own FedDyn
    correction and momentum buffers in its state; ``personal``: and its own payload (MoNNA's node models)."""
    state = env.strategy.init_global(env.new_model())
    x, y = env.test_data()
    tasks, start = [], 0
    for cid, n in enumerate(sizes):
        gen = torch.Generator().manual_seed(cid)
        noise = {k: 0.01 * torch.randn(v.shape, generator=gen) for k, v in state.items()}
        payload = {k: v + noise[k] for k, v in state.items()} if personal else state
        model = env.new_model()
        model.load_state_dict(payload)
        client_state = ClientState(RecordDict())
        client_state.put(MOMENTUM_KEY, {k: -v for k, v in noise.items()})
        tasks.append(LocalTask(1, cid, model, payload, x[start : start + n], y[start : start + n], 0.05, 2, 8,
                               torch_generator(0, "train", 1, cid), client_state, optimizer=SGD, extra=noise))
        start += n
    return tasks


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox", "fedsam", "feddyn", "fedspeed", "monna"])
def test_vectorised_clients_get_the_sequential_updates_within_1e5(strategy):
    overrides = ["clients_per_round=4", "strategy.f=0"] if strategy == "monna" else []
    env = Run(make_config("dataset=digits", f"strategy={strategy}", "model.hidden=[16]", *overrides))
    sizes, personal = [3, 8, 17, 30], strategy == "monna"  # 1, 1, 3 and 4 batches of 8 per epoch: padded batches and masked steps
    sequential = [env.strategy.training_for(t).run(t.trainable(), env.strategy.batches_for(t)) for t in tasks_of(env, sizes, personal)]
    tasks = tasks_of(env, sizes, personal)
    shared = [LocalTask(**{**t.__dict__, "model": tasks[0].model}) for t in tasks]  # the cohort shares one model
    stacked = train_stacked(shared, [env.strategy.training_for(t) for t in shared], [list(env.strategy.batches_for(t)) for t in shared])
    for s, v in zip(sequential, stacked):
        assert s.steps == v.steps and s.mean_loss == pytest.approx(v.mean_loss, rel=1e-5)
        for name in s.params:
            assert torch.allclose(s.params[name], v.params[name], atol=1e-5), name
        assert s.state.keys() == v.state.keys()
        for key in s.state:  # the momentum buffers too: a finished client's stayed as they were
            assert torch.allclose(s.state[key], v.state[key], atol=1e-5), key
    moved = [max((v.params[n] - t.global_state[n]).abs().max().item() for n in v.params) for v, t in zip(stacked, tasks)]
    assert all(m > 0 for m in moved)


@pytest.mark.parametrize("strategy", ["fedspeed", "monna"])
def test_fedspeed_and_monna_runs_are_vectorised_and_match_the_sequential_run(tmp_path, caplog, strategy):
    common = ("dataset=digits", "num_clients=6", "clients_per_round=6", "rounds=3", "checkpoint_every=3", "backend=inline",
              f"strategy={strategy}", *(["strategy.f=1"] if strategy == "monna" else []))
    states = {}
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        for name, extra in {"sequential": [], "vectorised": ["backend.vectorize=true"]}.items():
            simulate(make_config(*common, *extra), tmp_path / name, progress=False)
            states[name] = read_checkpoint(tmp_path / name / "checkpoints" / "round_000003.pt")
    assert not [r for r in caplog.records if "backend.vectorize" in r.getMessage()]  # no fallback
    seq, vec = states["sequential"], states["vectorised"]
    assert max((seq.global_state[k] - vec.global_state[k]).abs().max().item() for k in seq.global_state) < 1e-5
    for path, tensor in tensors_in(seq.components["strategy"]).items():  # FedDyn's corrections h_i, MoNNA's node models
        assert torch.allclose(tensor, tensors_in(vec.components["strategy"])[path], atol=1e-5), path
    for cid in range(6):  # MoNNA's per-client momentum
        for key, tensors in seq.client_states.get(cid, {}).items():
            assert all(torch.allclose(t, vec.client_states[cid][key][n], atol=1e-5) for n, t in tensors.items())


def tensors_in(obj: object, path: str = "") -> dict[str, torch.Tensor]:
    """Every tensor in nested dicts and lists, by its path."""
    if isinstance(obj, torch.Tensor):
        return {path: obj}
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return {k: v for key, value in items for k, v in tensors_in(value, f"{path}/{key}").items()}


def test_a_vectorised_run_matches_the_sequential_run_inline_and_on_ray(tmp_path):
    common = ("dataset=digits", "num_clients=12", "clients_per_round=12", "rounds=4", "partition=dirichlet",
              "strategy=fedprox", "checkpoint_every=4", "optimizer.momentum=0.5")
    runs = {}
    for name, extra in {"sequential": ["backend=inline"], "inline": ["backend=inline", "backend.vectorize=true"],
                        "ray": ["backend=ray", "backend.vectorize=true"]}.items():
        simulate(make_config(*common, *extra), tmp_path / name, progress=False)
        runs[name] = (read_rounds(tmp_path / name), read_checkpoint(tmp_path / name / "checkpoints" / "round_000004.pt").global_state)
    base_rounds, base_state = runs["sequential"]
    for name in ("inline", "ray"):
        rounds, state = runs[name]
        assert abs(rounds[-1]["test_acc"] - base_rounds[-1]["test_acc"]) <= 0.005
        assert max((state[k] - base_state[k]).abs().max().item() for k in state) < 1e-5
    assert metrics_only(runs["inline"][0]) == metrics_only(runs["ray"][0])  # one vectorised computation on both transports


def test_a_strategy_that_cannot_be_vectorised_runs_one_by_one_with_one_line(tmp_path, caplog):
    common = ("dataset=digits", "num_clients=6", "rounds=2", "strategy=scaffold", "backend=inline")
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        simulate(make_config(*common, "backend.vectorize=true"), tmp_path / "vec", progress=False)
    lines = [r.getMessage() for r in caplog.records if "backend.vectorize" in r.getMessage()]
    assert len(lines) == 1 and "one by one" in lines[0]
    simulate(make_config(*common), tmp_path / "seq", progress=False)
    assert metrics_only(read_rounds(tmp_path / "vec")) == metrics_only(read_rounds(tmp_path / "seq"))


def test_vectorize_with_a_client_timeout_is_one_line():
    result = subprocess.run([sys.executable, "-m", "fedsim", "backend=inline", "backend.vectorize=true", "client_timeout_s=5"],
                            capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("fedsim: error: backend.vectorize=True: ")


def test_a_cohort_trained_in_cache_sized_slices_matches_the_sequential_run(tmp_path, monkeypatch):
    common = ("dataset=digits", "num_clients=12", "clients_per_round=12", "rounds=2", "checkpoint_every=2", "backend=inline")
    env = Run(make_config(*common))
    per_client = sum(p.numel() * p.element_size() for p in env.new_model().parameters())
    monkeypatch.setattr("fedsim.engine.cohort.CPU_SLICE_BYTES", 5 * per_client)  # slices of 5, 5 and 2 clients
    states = {}
    for name, extra in {"sequential": [], "sliced": ["backend.vectorize=true"]}.items():
        simulate(make_config(*common, *extra), tmp_path / name, progress=False)
        states[name] = read_checkpoint(tmp_path / name / "checkpoints" / "round_000002.pt").global_state
    assert max((states["sliced"][k] - states["sequential"][k]).abs().max().item() for k in states["sequential"]) < 1e-5
