"""The functional training loop's shortcuts give what the plain forms give: a tied-weight model's loss and
gradient, the optimizer's in-place steps, and a delta computed in the trained parameters' memory."""

from __future__ import annotations

import pytest
import torch
from flwr.app import RecordDict
from torch import nn

from fedsim.state import ClientState
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalTask
from fedsim.training import LocalTraining, Optimizer, OptimizerConfig, autograd_gradient, has_tied_tensors, model_loss, spendable


class Tied(nn.Module):
    """Two layers sharing one weight (as tied embeddings do)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight = nn.Parameter(self.a.weight[:3].detach().clone())
        self.c = nn.Linear(6, 6, bias=False)
        self.c.weight = self.a.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.c(torch.relu(self.a(x)))))


def test_tied_weights_are_retied_and_their_gradient_is_the_modules() -> None:
    torch.manual_seed(0)
    model, x, y = Tied(), torch.randn(8, 6), torch.randint(0, 3, (8,))
    assert has_tied_tensors(model) and not has_tied_tensors(nn.Sequential(nn.Linear(6, 3)))
    params = {n: p.detach() + 0.1 for n, p in model.named_parameters()}  # "c.weight" is "a.weight": not listed
    loss, grads = autograd_gradient(model_loss(model), params, (x, y))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(params[n])
    reference = nn.functional.cross_entropy(model(x), y)
    reference.backward()
    assert loss == pytest.approx(float(reference.detach()), rel=1e-6)
    for n, p in model.named_parameters():
        assert torch.allclose(grads[n], p.grad, atol=1e-6), n


@pytest.mark.parametrize("config", [
    OptimizerConfig(),
    OptimizerConfig(momentum=0.9, dampening=0.1, weight_decay=1e-3),
    OptimizerConfig(momentum=0.9, nesterov=True, weight_decay=1e-3),
    OptimizerConfig(name="adam", weight_decay=1e-3),
])
@pytest.mark.parametrize("into_grads", [False, True])
def test_the_in_place_step_gives_the_functional_steps_values(config: OptimizerConfig, into_grads: bool) -> None:
    torch.manual_seed(1)
    params = {"w": torch.randn(4, 5), "b": torch.randn(5)}
    original = {k: v.clone() for k, v in params.items()}
    optimizer, functional, in_place = Optimizer(config), (dict(params), {}), ({k: v.clone() for k, v in params.items()}, {})
    for _ in range(3):
        grads = {k: torch.randn_like(v) for k, v in params.items()}
        functional = optimizer.step(*functional[:1], {k: g.clone() for k, g in grads.items()}, functional[1], 0.05)
        spent = {k: g.clone() for k, g in grads.items()}
        in_place = optimizer.step(in_place[0], spent, in_place[1], 0.05, write_into=spent if into_grads else in_place[0])
        assert all(in_place[0][k] is (spent if into_grads else in_place[0])[k] for k in params)
    for k in params:
        assert torch.equal(functional[0][k], in_place[0][k]), k
    assert functional[1].keys() == in_place[1].keys()
    for k in functional[1]:
        assert torch.equal(functional[1][k], in_place[1][k]), k
    assert all(torch.equal(params[k], original[k]) for k in params)  # the functional steps left their inputs alone
    assert not torch.equal(in_place[0]["w"], original["w"])


def test_only_gradients_of_their_own_memory_and_shape_are_spendable() -> None:
    params = {"a": torch.zeros(3), "b": torch.zeros(3)}
    one = torch.ones(3)
    assert spendable({"a": torch.ones(3), "b": torch.ones(3)}, params)
    assert not spendable({"a": one, "b": one}, params)  # one tensor for two inputs (autograd's add)
    assert not spendable({"a": torch.ones(()).expand(3), "b": torch.ones(3)}, params)  # a broadcast view (sum's)
    flat = torch.ones(6)
    assert not spendable({"a": flat[:3], "b": flat[3:]}, params)  # views of one buffer
    assert not spendable({"a": torch.ones(3, dtype=torch.float64), "b": torch.ones(3)}, params)
    assert not spendable({"a": torch.ones(3)}, params)


def test_a_loss_whose_gradients_share_memory_steps_as_the_functional_loop() -> None:
    params = {"a": torch.tensor([0.5, -1.0, 2.0]), "b": torch.tensor([1.0, 0.0, -0.5])}
    before = {n: p.clone() for n, p in params.items()}

    def shared(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return p["a"].sum() + p["b"].sum() + (x * 0).sum()  # autograd hands both the one broadcast ones tensor

    _, grads = autograd_gradient(shared, params, (torch.ones(1), torch.ones(1)))
    assert not spendable(grads, params)
    batches = [(torch.ones(1), torch.ones(1))] * 3
    fast = LocalTraining(shared, OptimizerConfig(), 0.1).run(params, batches)
    slow = LocalTraining(shared, OptimizerConfig(), 0.1, grad_hooks=(lambda p, g: g,)).run(params, batches)
    assert all(torch.equal(params[n], before[n]) for n in params)
    assert all(torch.allclose(fast.params[n], before[n] - 0.3) and torch.equal(fast.params[n], slow.params[n]) for n in params)


def test_the_loop_leaves_its_inputs_alone_and_a_keeping_hook_sees_every_step() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 3))
    params = {n: p.detach() for n, p in model.named_parameters()}
    before = {n: p.clone() for n, p in params.items()}
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(3)]
    config = OptimizerConfig(momentum=0.9)
    fast = LocalTraining(model_loss(model), config, 0.1).run(params, batches)  # in place, on its own copies
    assert LocalTraining(model_loss(model), config, 0.1).holds_no_step()
    assert all(torch.equal(params[n], before[n]) for n in params)

    seen: list[torch.Tensor] = []

    def keeping(step_params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        seen.append(step_params["0.weight"])  # a reference, not a copy
        return grads

    loop = LocalTraining(model_loss(model), config, 0.1, grad_hooks=(keeping,))
    assert not loop.holds_no_step()
    kept = loop.run(params, batches)
    assert torch.equal(seen[0], before["0.weight"]) and not torch.equal(seen[1], seen[0])  # each step its own tensors
    assert all(torch.equal(kept.params[n], fast.params[n]) for n in params)  # and the same outcome either way


def test_finish_computes_the_delta_in_the_outcomes_memory_once_and_the_spent_params_refuse_a_read() -> None:
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(6, 3))
    payload = {n: p.detach().clone() for n, p in model.named_parameters()}
    batches = [(torch.randn(4, 6), torch.randint(0, 3, (4,))) for _ in range(2)]
    trained = LocalTraining(model_loss(model), OptimizerConfig(), 0.1).run(payload, batches)
    assert trained.owned
    final = {n: t.clone() for n, t in trained.params.items()}
    expected = {n: trained.params[n] - payload[n] for n in payload}
    memory = {n: t.data_ptr() for n, t in trained.params.items()}
    task = LocalTask(1, 0, model, payload, torch.zeros(8, 6), torch.zeros(8, dtype=torch.long), 0.1, 1, 4, torch.Generator(),
                     ClientState(RecordDict()))
    update = FedAvg().finish(task, trained).update
    assert all(torch.equal(update[n], expected[n]) and update[n].data_ptr() == memory[n] for n in payload)
    with pytest.raises(RuntimeError, match="handed over by spend_params"):
        trained.params["0.weight"]
    assert trained.spend_params()[1] is False  # handed over once
    functional = LocalTraining(model_loss(model), OptimizerConfig(), 0.1, grad_hooks=(lambda p, g: g,)).run(payload, batches)
    assert not functional.owned and FedAvg().finish(task, functional).update.keys() == payload.keys()
    assert all(torch.equal(functional.params[n], final[n]) for n in payload)  # not spent: still readable
