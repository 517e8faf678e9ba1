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

SGD = OptimizerConfig(momentum=0.9, nesterov=True, weight_decay=1e-3, grad_clip=0.5)


def tasks_of(env: Run, sizes: list[int]) -> list[LocalTask]:
    """Clients holding ``sizes`` examples (unequal: their step counts differ), on one payload."""
    state = env.strategy.init_global(env.new_model())
    x, y = env.test_data()
    tasks, start = [], 0
    for cid, n in enumerate(sizes):
        model = env.new_model()
        model.load_state_dict(state)
        tasks.append(LocalTask(1, cid, model, state, x[start : start + n], y[start : start + n], 0.05, 2, 8,
                               torch_generator(0, "train", 1, cid), ClientState(RecordDict()), optimizer=SGD))
        start += n
    return tasks


@pytest.mark.parametrize("strategy", ["fedavg", "fedprox"])
def test_vectorised_clients_get_the_sequential_updates_within_1e5(strategy):
    env = Run(make_config("dataset=digits", f"strategy={strategy}", "model.hidden=[16]"))
    sizes = [3, 8, 17, 30]  # 1, 1, 3 and 4 batches of 8 per epoch: padded batches and masked steps
    sequential = [env.strategy.training_for(t).run(t.trainable(), t.batches()) for t in tasks_of(env, sizes)]
    tasks = tasks_of(env, sizes)
    stacked = train_stacked(tasks, [env.strategy.training_for(t) for t in tasks])
    for s, v in zip(sequential, stacked):
        assert s.steps == v.steps and s.mean_loss == pytest.approx(v.mean_loss, rel=1e-5)
        for name in s.params:
            assert torch.allclose(s.params[name], v.params[name], atol=1e-5), name
        for key in s.state:  # the momentum buffers too: a finished client's stayed as they were
            assert torch.allclose(s.state[key], v.state[key], atol=1e-5), key
    moved = [max((v.params[n] - tasks[0].global_state[n]).abs().max().item() for n in v.params) for v in stacked]
    assert all(m > 0 for m in moved)


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
