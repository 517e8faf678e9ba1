"""HyperFL: the hypernetwork forward, what a client's reply holds, private parts per client, checkpoints,
personalised evaluation and the inversion observers against what HyperFL shares."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from conftest import make_config, metrics_only, read_rounds
from fedsim.training import OptimizerConfig
from fedsim.checkpoint import read_checkpoint
from fedsim.codec import Codec
from conftest import Run
from fedsim.evaluation import evaluate_for_labels
from fedsim.models import MLP
from fedsim.seeding import torch_generator
from fedsim.engine.simulation import simulate
from fedsim.state import STATE_PREFIX, ClientState, Tensors, to_record
from fedsim.strategies.hyperfl import EMBEDDING, LABELS_KEY, PRIVATE_KEY, HyperFL
from fedsim.strategy import LocalTask

HYPERFL = ("strategy=hyperfl", "num_clients=3", "clients_per_round=3", "model.hidden=[16]", "partition=shards",
           "partition.classes_per_client=4")


def small_mlp() -> nn.Module:
    torch.manual_seed(0)
    return MLP((1, 4, 4), 3, hidden=(5,))


def test_hyperfl_hypernetwork_generates_the_feature_extractor_and_gets_its_gradient() -> None:
    strategy = HyperFL(seed=0, embedding_dim=6, hidden_dim=7)
    hyper = strategy.build(small_mlp())
    # the last Linear (net.3) is the private head; the first layer is generated, one linear head per tensor
    assert strategy.head_names(hyper.target) == ["net.3.weight", "net.3.bias"]
    assert hyper.hypernet.shapes == {"net.1.weight": (5, 16), "net.1.bias": (5,)}
    assert [tuple(h.weight.shape) for h in hyper.hypernet.heads] == [(80, 7), (5, 7)]
    assert tuple(hyper.hypernet.trunk[0].weight.shape) == (7, 6)
    with torch.no_grad():
        hyper.embedding.normal_()
    x, y = torch.randn(4, 1, 4, 4), torch.tensor([0, 1, 2, 1])
    weights = hyper.generate()
    assert {k: tuple(v.shape) for k, v in weights.items()} == {"net.1.weight": (5, 16), "net.1.bias": (5,)}

    loss = nn.functional.cross_entropy(hyper(x), y)
    loss.backward()
    # by hand: the plain MLP holding the generated tensors has the same loss, and its gradient w.r.t. a
    # generated tensor is exactly the gradient that tensor's hypernetwork head bias receives (out = W h + b)
    plain = small_mlp()
    plain.load_state_dict({**{k: v.detach() for k, v in weights.items()}, "net.3.weight": hyper.target.net[3].weight.detach(),
                           "net.3.bias": hyper.target.net[3].bias.detach()})
    plain_loss = nn.functional.cross_entropy(plain(x), y)
    plain_loss.backward()
    assert float(loss.detach()) == pytest.approx(float(plain_loss.detach()), rel=1e-6)
    assert torch.allclose(hyper.hypernet.heads[0].bias.grad.view(5, 16), plain.net[1].weight.grad, atol=1e-6)
    assert torch.allclose(hyper.hypernet.heads[1].bias.grad, plain.net[1].bias.grad, atol=1e-6)
    assert torch.allclose(hyper.target.net[3].weight.grad, plain.net[3].weight.grad, atol=1e-6)
    assert hyper.embedding.grad is not None and hyper.embedding.grad.abs().sum() > 0
    assert hyper.hypernet.trunk[0].weight.grad.abs().sum() > 0
    assert hyper.target.net[1].weight.grad is None  # the placeholder is never used


def test_hyperfl_global_state_is_the_hypernetwork_only() -> None:
    strategy = HyperFL(seed=0, embedding_dim=6, hidden_dim=7)
    state = strategy.init_global(small_mlp())
    assert sorted(state) == ["hypernet.heads.0.bias", "hypernet.heads.0.weight", "hypernet.heads.1.bias",
                             "hypernet.heads.1.weight", "hypernet.trunk.0.bias", "hypernet.trunk.0.weight"]
    again = HyperFL(seed=0, embedding_dim=6, hidden_dim=7).init_global(small_mlp())
    assert all(torch.equal(state[k], again[k]) for k in state)  # seeded
    other = HyperFL(seed=1, embedding_dim=6, hidden_dim=7).init_global(small_mlp())
    assert not torch.equal(state["hypernet.trunk.0.weight"], other["hypernet.trunk.0.weight"])


def test_hyperfl_local_update_follows_the_two_stage_schedule() -> None:
    strategy = HyperFL(seed=0, embedding_dim=6, hidden_dim=7, head_epochs=1)
    model = small_mlp()
    state = strategy.init_global(model)
    client_state = ClientState(RecordDict())
    x, y = torch.randn(12, 1, 4, 4), torch.tensor([0, 1, 2] * 4)
    task = LocalTask(1, 2, model, state, x, y, 0.05, 2, 4, torch.Generator().manual_seed(0), client_state)
    result = strategy.local_update(task)
    assert sorted(result.update) == sorted(state) and result.num_examples == 12
    assert all(result.update[k].abs().sum() > 0 for k in state)  # every hypernetwork tensor trained
    private = client_state.get(PRIVATE_KEY)
    assert sorted(private) == [EMBEDDING, "net.3.bias", "net.3.weight"]
    hyper = strategy.build(small_mlp())
    initial = strategy.initial_private(hyper, torch_generator(0, "hyperfl", 2))
    assert not torch.equal(private["net.3.weight"], initial["net.3.weight"])  # stage 1 trained the head
    assert not torch.equal(private[EMBEDDING], initial[EMBEDDING])  # stage 2 trained the embedding
    assert client_state.get(LABELS_KEY)["counts"].tolist() == [4.0, 4.0, 4.0]
    assert math.isfinite(result.metrics["train_loss"]) and math.isfinite(result.metrics["head_loss"])


def test_hyperfl_config_errors_name_the_field() -> None:
    with pytest.raises(ValueError, match=r"strategy.max_grad_norm=0: must be > 0"):
        HyperFL(seed=0, max_grad_norm=0)
    with pytest.raises(ValueError, match=r"strategy.head='nope': not a Linear module of the model; its Linear modules: net.1, net.3"):
        HyperFL(seed=0, head="nope").init_global(small_mlp())


def test_evaluate_for_labels_reweights_per_class_scores_by_hand() -> None:
    class Fixed(nn.Module):  # predicts class 0 always
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.tensor([[2.0, 0.0, 0.0]]).repeat(len(x), 1)

    x, y = torch.zeros(6, 1), torch.tensor([0, 0, 1, 1, 1, 2])
    # a client holding only class 0 sees a perfect model; one with classes 0 and 1 at 1:3 sees 1/4
    assert evaluate_for_labels(Fixed(), x, y, torch.tensor([5.0, 0, 0]))["test_acc"] == 1.0
    scores = evaluate_for_labels(Fixed(), x, y, torch.tensor([1.0, 3.0, 0]))
    loss0 = -math.log(math.exp(2) / (math.exp(2) + 2))
    loss1 = -math.log(1 / (math.exp(2) + 2))
    assert scores["test_acc"] == pytest.approx(0.25)
    assert scores["test_loss"] == pytest.approx(0.25 * loss0 + 0.75 * loss1)


class RecordingCodec(Codec):
    """Dense codec that records the names of the arrays in every reply's update record it decodes."""

    seen: ClassVar[list[list[str]]] = []

    def decode(self, record: ArrayRecord, global_state: Tensors, lr: float, optimizer: OptimizerConfig) -> Tensors:
        RecordingCodec.seen.append(sorted(record.keys()))
        return super().decode(record, global_state, lr, optimizer)


def test_hyperfl_reply_carries_only_hypernetwork_arrays_and_private_parts_differ(tmp_path: Path) -> None:
    RecordingCodec.seen.clear()
    cfg = make_config(*HYPERFL, "rounds=2", "checkpoint_every=2", f"compression._target_={__name__}.RecordingCodec")
    simulate(cfg, tmp_path, progress=False)
    env = Run(cfg)
    hyper_names = sorted(env.strategy.init_global(env.new_model()))
    assert all(name.startswith("hypernet.") for name in hyper_names)
    assert RecordingCodec.seen == [hyper_names] * 6  # 3 clients x 2 rounds, exactly the hypernetwork
    records = read_rounds(tmp_path)
    hyper_bytes = 4 * sum(math.prod(v.shape) for v in env.strategy.init_global(env.new_model()).values())
    assert [r["bytes_up"] for r in records] == [3 * hyper_bytes] * 2
    assert all(r["eval_clients"] == 3 and r["test_acc"] > 0.5 for r in records)

    # the private parts live in the checkpoint's client states, one set per client, all different
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "round_000002.pt")
    private = {cid: states[STATE_PREFIX + PRIVATE_KEY] for cid, states in checkpoint.client_states.items()}
    assert sorted(private) == [0, 1, 2]
    assert set(private[0]) == {EMBEDDING, "net.3.weight", "net.3.bias"}
    for a, b in ((0, 1), (0, 2), (1, 2)):
        for name in private[a]:
            assert not torch.allclose(private[a][name], private[b][name]), (a, b, name)


def test_hyperfl_resume_from_checkpoint_equals_uninterrupted(tmp_path: Path) -> None:
    overrides = (*HYPERFL, "rounds=3", "checkpoint_every=1")
    simulate(make_config(*overrides), tmp_path / "full", progress=False)
    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", resumed)
    (resumed / "checkpoints" / "round_000003.pt").unlink()  # as if killed after round 2
    (resumed / "summary.json").unlink()
    simulate(make_config(*overrides, "resume=true"), resumed, progress=False)
    assert metrics_only(read_rounds(resumed)) == metrics_only(read_rounds(tmp_path / "full"))
    a, b = (read_checkpoint(d / "checkpoints" / "round_000003.pt") for d in (tmp_path / "full", resumed))
    assert all(torch.equal(a.global_state[k], b.global_state[k]) for k in a.global_state)
    for cid, states in a.client_states.items():
        for name, tensor in states[STATE_PREFIX + PRIVATE_KEY].items():
            assert torch.equal(tensor, b.client_states[cid][STATE_PREFIX + PRIVATE_KEY][name])


def test_hyperfl_attack_model_exposes_the_hypernetwork_with_guessed_private_parts() -> None:
    env = Run(make_config(*HYPERFL))
    state = env.strategy.init_global(env.new_model())
    model = env.strategy.attack_model(state, env.new_model)
    params = dict(model.named_parameters())
    assert set(state) <= set(params)
    assert all(torch.equal(params[k], state[k]) for k in state)
    assert model(torch.zeros(2, *env.data.input_shape)).shape == (2, env.data.num_classes)


def test_hyperfl_inversion_observer_attacks_the_hypernetwork_update(run_sim) -> None:
    """IG runs against the hypernetwork update (labels known: nothing in it reveals them) and scores it;
    with labels to infer it says why it cannot."""
    common = (*HYPERFL, "num_clients=300", "clients_per_round=2", "rounds=1", "privacy_attack=inverting_gradients",
              "privacy_attack.iterations=5", "batch_size=8")
    _, known, _ = run_sim(*common, "privacy_attack.labels=known")
    privacy = known[0]["privacy"]
    assert privacy["attack"] == "InvertingGradients" and len(privacy["clients"]) == 2
    assert 0 < privacy["psnr"] < 20 and privacy["label_acc"] == 1.0
    _, inferred, _ = run_sim(*common)
    reasons = [c["skipped"] for c in inferred[0]["privacy"]["clients"].values()]
    assert reasons and all("cannot infer labels; use privacy_attack.labels=known" in r for r in reasons)


def test_hyperfl_attack_metrics_are_measured_on_the_personal_models(tmp_path: Path) -> None:
    """Fails on the code of before the redesign, which loaded HyperFL's hypernetwork-only global state into the
    plain model (strict=False: nothing loaded) and measured the attack on an untrained network."""
    from fedsim.attacks.poisoning.label_flip import LabelFlip
    from fedsim.engine.harness import Truth, score_models

    cfg = make_config(*HYPERFL, "rounds=2", "checkpoint_every=2", "attack=label_flip", "attack.fraction=null", "attack.count=1")
    simulate(cfg, tmp_path, progress=False)
    record = read_rounds(tmp_path)[-1]
    run = Run(cfg)
    assert isinstance(run.attack, LabelFlip)
    checkpoint = read_checkpoint(tmp_path / "checkpoints" / "round_000002.pt")
    states = {cid: ClientState({k: to_record(v) for k, v in s.items()}) for cid, s in checkpoint.client_states.items()}
    expected = score_models(run.ctx, run.strategy, run.attack, Truth.of(run.attack, 3, run.seed), checkpoint.global_state, states)
    assert record["source_recall"] == expected["source_recall"] and record["eval_clients"] == 2
    x, y = run.test_data()
    untrained = run.attack.test_metrics(run.new_model(), x, y)
    assert record["source_recall"] != untrained["source_recall"]


def test_an_attackers_replay_of_hyperfl_training_reproduces_the_real_upload() -> None:
    """Given the client's true data and private parts, the replay the strategy describes to attackers (head
    stage, then the hypernetwork with momentum 0.5, weight decay and per-group clipping) yields the upload;
    plain SGD, which attackers simulated before, does not."""
    from fedsim.attacks.inversion.base import InversionTarget, cosine_distance
    from fedsim.privacy import DataFacts

    strategy = HyperFL(seed=0, embedding_dim=6, hidden_dim=7, max_grad_norm=0.05)  # a clip that binds
    state = strategy.init_global(small_mlp())
    x, y = torch.randn(6, 1, 4, 4), torch.tensor([0, 1, 2] * 2)
    task = LocalTask(1, 2, small_mlp(), state, x, y, 0.05, 3, 6, torch.Generator().manual_seed(0), ClientState(RecordDict()))
    upload = strategy.local_update(task).update
    attacked = strategy.build(small_mlp())
    strategy.load_shared(attacked, state)
    strategy.load_private(attacked, strategy.initial_private(attacked, torch_generator(0, "hyperfl", 2)))  # the truth, for the test
    facts = DataFacts((1, 4, 4), 3, (0.0,), (1.0,))
    optimizer = OptimizerConfig()
    replay = strategy.replay_stages(attacked, optimizer, 0.05, 3)
    assert [len(stage.params) for stage in replay] == [2, 7] and replay[1].clip_norm == 0.05
    target = InversionTarget.from_update(attacked, upload, facts, 0.05, 3, 6, 6, torch.Generator(), replay)
    simulated = target.simulate_update(x, y)
    for k in upload:
        assert torch.allclose(simulated[k], upload[k], rtol=1e-4, atol=1e-7), k
    plain = InversionTarget.from_update(attacked, upload, facts, 0.05, 3, 6, 6, torch.Generator())
    assert cosine_distance(plain.simulate_update(x, y), upload).item() > 100 * cosine_distance(simulated, upload).item() + 1e-4
    # differentiable in the images: an attack can follow it
    x_var = x.clone().requires_grad_()
    cosine_distance(target.simulate_update(x_var, y), upload).backward()
    assert x_var.grad is not None and x_var.grad.abs().sum() > 0
