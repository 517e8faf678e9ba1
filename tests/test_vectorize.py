"""Vectorised cohorts (backend.vectorize): the same per-client training as the sequential path, as one vmap."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from conftest import make_config, metrics_only, read_rounds
from fedsim.checkpoint import read_checkpoint
from fedsim.engine.cohort import train_stacked
from fedsim.engine.context import Run
from fedsim.engine.fused_linear import fusable_weights, fused_step
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
    monkeypatch.setattr("fedsim.engine.cohort.CPU_CACHE_BYTES", 5 * per_client)  # fused steps: slices of 5, 5 and 2 clients
    states = {}
    for name, extra in {"sequential": [], "sliced": ["backend.vectorize=true"]}.items():
        simulate(make_config(*common, *extra), tmp_path / name, progress=False)
        states[name] = read_checkpoint(tmp_path / name / "checkpoints" / "round_000002.pt").global_state
    assert max((states["sliced"][k] - states["sequential"][k]).abs().max().item() for k in states["sequential"]) < 1e-5


class Tied(nn.Module):
    """Two layers sharing one weight matrix: the weight's gradient sums both uses, so it is not fused."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 10)
        self.c = nn.Linear(64, 64)
        self.c.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.c(torch.relu(self.a(x.flatten(1))))))


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(64, 64), nn.Linear(64, 10)


class Reused(TwoLayers):
    """One layer called twice in a forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(torch.relu(self.a(x.flatten(1))))))


class WeightOutsideItsLayer(TwoLayers):
    """A layer's weight also used functionally, outside the layer's own forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x.flatten(1)))
        return self.b(h + 0.1 * nn.functional.linear(h, self.a.weight))


PLAIN_SGD = OptimizerConfig(weight_decay=1e-3)  # no momentum, clipping or hooks: the fused linear step applies


def plain_tasks(env: Run, model_of, sizes: list[int]) -> list[LocalTask]:
    """Clients of one shared payload holding ``sizes`` digits examples, trained by plain SGD with weight decay."""
    torch.manual_seed(0)
    template = model_of()
    payload = {k: v.detach().clone() for k, v in template.state_dict().items()}
    x, y = env.test_data()
    tasks, start = [], 0
    for cid, n in enumerate(sizes):
        model = model_of()
        model.load_state_dict(payload)
        tasks.append(LocalTask(1, cid, model, payload, x[start : start + n], y[start : start + n], 0.05, 2, 8,
                               torch_generator(0, "train", 1, cid), ClientState(RecordDict()), optimizer=PLAIN_SGD))
        start += n
    return tasks


def stacked_and_sequential(env: Run, model_of, sizes: list[int]) -> tuple[list, list]:
    sequential = [env.strategy.training_for(t).run(t.trainable(), env.strategy.batches_for(t)) for t in plain_tasks(env, model_of, sizes)]
    tasks = plain_tasks(env, model_of, sizes)
    shared = [LocalTask(**{**t.__dict__, "model": tasks[0].model}) for t in tasks]
    stacked = train_stacked(shared, [env.strategy.training_for(t) for t in shared], [list(env.strategy.batches_for(t)) for t in shared])
    assert not any(m._forward_hooks for m in tasks[0].model.modules())  # the shared model's hooks came off
    return sequential, stacked


def assert_same_updates(sequential: list, stacked: list) -> None:
    for s, v in zip(sequential, stacked):
        assert s.steps == v.steps and s.mean_loss == pytest.approx(v.mean_loss, rel=1e-5)
        for name in s.params:
            assert torch.allclose(s.params[name], v.params[name], atol=1e-5), name


def test_plain_sgd_steps_linear_weights_fused_and_gets_the_sequential_updates(monkeypatch):
    env = Run(make_config("dataset=digits", "model.hidden=[16,16]"))
    fused_calls = []
    monkeypatch.setattr("fedsim.engine.cohort.fused_step", lambda *a, **k: fused_calls.append(a[0].shape) or fused_step(*a, **k))
    sequential, stacked = stacked_and_sequential(env, env.new_model, [3, 8, 17, 30])  # masked steps, padded batches
    assert_same_updates(sequential, stacked)
    assert len(fused_calls) == 3 * 8  # three linear layers, eight steps (4 batches of 8 over 2 epochs for the largest client)
    training = env.strategy.training_for(plain_tasks(env, env.new_model, [3])[0])
    assert set(fusable_weights(env.new_model(), list(env.new_model().state_dict()), training)) == {
        "net.1.weight", "net.3.weight", "net.5.weight"}


def test_a_tied_weight_is_not_fused_and_the_updates_are_sequential():
    env = Run(make_config("dataset=digits"))
    training = env.strategy.training_for(plain_tasks(env, Tied, [3])[0])
    assert set(fusable_weights(Tied(), [n for n, _ in Tied().named_parameters()], training)) == {"b.weight"}
    assert_same_updates(*stacked_and_sequential(env, Tied, [5, 12, 20]))


@pytest.mark.parametrize("model_of, line", [(Reused, "runs layer a twice in one forward"),
                                            (WeightOutsideItsLayer, "uses a linear weight outside its layer")])
def test_a_layer_that_cannot_fuse_is_found_on_first_use_and_trained_unfused(caplog, model_of, line):
    env = Run(make_config("dataset=digits"))
    with caplog.at_level(logging.WARNING, logger="fedsim"):
        assert_same_updates(*stacked_and_sequential(env, model_of, [5, 12, 20]))
        assert_same_updates(*stacked_and_sequential(env, model_of, [7, 9]))  # checked once per process: one line
    lines = [r.getMessage() for r in caplog.records if "fused linear step" in r.getMessage()]
    assert len(lines) == 1 and line in lines[0] and model_of.__name__ in lines[0]
