"""Vectorised cohorts (``backend.vectorize=true``): the clients of a chunk train as one ``torch.func.vmap`` loop.

Every client's parameters are stacked along a new first dimension and each step runs the model once
for all of them on their stacked mini-batches (the same shuffles as the per-client path, drawn from the
same generators). A mini-batch shorter than the step's longest is padded and its padding weighted zero, so each
client's loss is still the mean over its own examples; a client with fewer steps is masked (its
parameters and optimizer state stay as they are), never given extra updates. What follows training
(the delta, update poisoning, the codec, the reply) is the per-client path's.

Eligible: a strategy whose ``vectorizable`` is true (FedAvg and subclasses adding client-independent loss
terms: FedProx, FedAvgM, FedAdam), SGD (momentum, dampening, Nesterov, weight decay, ``grad_clip``), the
plain gradient (no codec estimator), a model without buffers, one payload for the whole chunk. Anything
else runs the per-client path, with one log line saying why. The chunk's tasks share the first client's
model: the vectorised update is functional and never changes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from flwr.app import Message
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.engine.client_app import ClientSide, Prepared, prepare, reply, run_local_round
from fedsim.strategy import LocalTask
from fedsim.training import LocalTraining, Optimizer, Params, TrainOutcome, autograd_gradient

log = logging.getLogger("fedsim")
_SAID: set[str] = set()  # fallback reasons already logged in this process


def run_cohort(side: ClientSide, items: Sequence[tuple[Message, int]]) -> list[Message]:
    """Replies to ``(message, client id)`` pairs: trained as one vectorised loop when eligible, else one by one."""
    first = prepare(side, *items[0])
    prepared = [first, *(prepare(side, message, cid, like=first) for message, cid in items[1:])]
    vectorizable = getattr(prepared[0].parts.strategy, "vectorizable", False)
    trainings = [p.parts.strategy.training_for(p.task) for p in prepared] if vectorizable else None
    problem = "the strategy's local update cannot be vectorised" if trainings is None else ineligible(prepared, trainings)
    if problem is not None:
        if problem not in _SAID:
            _SAID.add(problem)
            log.warning("backend.vectorize: %s; its clients run one by one", problem)
        return [run_local_round(side, message, cid) for message, cid in items]
    tasks, size = [p.task for p in prepared], slice_size(prepared[0].task)
    outcomes = [o for i in range(0, len(tasks), size) for o in train_stacked(tasks[i : i + size], trainings[i : i + size])]
    return [reply(side, p, p.parts.strategy.finish(p.task, outcome)) for p, outcome in zip(prepared, outcomes)]


def ineligible(prepared: list[Prepared], trainings: list[LocalTraining]) -> str | None:
    """Why this chunk cannot train as one vectorised loop (None: it can)."""
    first, task = trainings[0], prepared[0].task
    if any(t.gradient is not autograd_gradient for t in trainings):
        return "a non-default gradient estimator (SAM, DP-SGD, a codec's) is in use"
    if any(t.grad_hooks or t.optimizer != first.optimizer or t.lr != first.lr for t in trainings):
        return "the clients' optimizers differ or gradient hooks are set"
    if first.optimizer.name != "sgd":
        return f"optimizer.name={first.optimizer.name} (only sgd is vectorised)"
    if any(True for _ in task.model.buffers()):
        return f"{type(task.model).__name__} has buffers (BatchNorm statistics)"
    if any(p.task.global_state is not task.global_state and any(not torch.equal(p.task.global_state[k], v) for k, v in task.global_state.items())
           for p in prepared[1:]):
        return "the clients received different payloads"
    return None


CPU_SLICE_BYTES = 16 * 2**20  # stacked parameters per vmap slice on a CPU: about half a server's L3 cache


def slice_size(task: LocalTask) -> int:
    """How many clients one vmap trains at once: on a CPU as many as keep the stacked parameters (and so
    their gradients and steps) near the cache, where one stack of 100 clients would run at memory speed;
    on a GPU all of them."""
    trainable = task.trainable().values()
    if task.x.device.type != "cpu":
        return 2**31
    per_client = sum(p.numel() * p.element_size() for p in trainable)
    return max(1, CPU_SLICE_BYTES // max(1, per_client))


def train_stacked(tasks: list[LocalTask], trainings: list[LocalTraining]) -> list[TrainOutcome]:
    """Each task's training outcome, computed as one vmap over the stacked clients."""
    first, model = trainings[0], tasks[0].model.train()
    starts = [task.trainable() for task in tasks]
    names = list(starts[0])
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    batches = [list(task.batches()) for task in tasks]
    steps = [len(b) for b in batches]
    loss_terms = first.loss_terms  # client-independent (``vectorizable``): one set serves the cohort

    def loss(params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = functional_call(model, {**fixed, **params}, (x,))
        mean = (nn.functional.cross_entropy(logits, y, reduction="none") * weight).sum()
        return mean + sum(term(params) for term in loss_terms)

    step_fn = vmap(grad_and_value(loss))
    params = {n: torch.stack([s[n] for s in starts]) for n in names}
    device = next(iter(params.values())).device
    state: Params = {}
    optimizer = Optimizer(first.optimizer)
    losses = torch.zeros(len(tasks), device=device)
    for t in range(max(steps)):
        active = torch.tensor([t < n for n in steps], device=device)
        step_batches = [b[t] if t < len(b) else None for b in batches]
        width = max(len(batch[1]) for batch in step_batches if batch is not None)  # this step's longest batch
        x, y, weight = stack_step(step_batches, width, tasks[0])
        grads, step_loss = step_fn(params, x, y, weight)
        if first.optimizer.grad_clip is not None:
            grads = clip_each(grads, first.optimizer.grad_clip)
        with torch.no_grad():
            stepped, new_state = optimizer.step(params, grads, state, first.lr)
            if bool(active.all()):  # every client steps: nothing to mask
                params, state = stepped, new_state
            else:
                params = {n: masked(active, stepped[n], params[n]) for n in names}
                state = {k: masked(active, v, state[k] if k in state else torch.zeros_like(v)) for k, v in new_state.items()}
        losses += torch.where(active, step_loss.detach(), torch.zeros((), device=device))
    return [TrainOutcome({n: params[n][i] for n in names}, {k: v[i] for k, v in state.items()},
                         float(losses[i]) / steps[i] if steps[i] else float("nan"), steps[i]) for i in range(len(tasks))]


def stack_step(batches: list[tuple[torch.Tensor, torch.Tensor] | None], width: int, like: LocalTask) -> tuple[torch.Tensor, ...]:
    """One step's mini-batches as (clients, width, ...) tensors, zero-padded, with 1/len weights on real examples."""
    shape, device = like.x.shape[1:], like.x.device
    x = torch.zeros(len(batches), width, *shape, dtype=like.x.dtype, device=device)
    y = torch.zeros(len(batches), width, dtype=like.y.dtype, device=device)
    weight = torch.zeros(len(batches), width, device=device)
    for i, batch in enumerate(batches):
        if batch is not None:
            n = len(batch[1])
            x[i, :n], y[i, :n], weight[i, :n] = batch[0], batch[1], 1.0 / n
    return x, y, weight


def clip_each(grads: Params, max_norm: float) -> Params:
    """Each client's gradient scaled to global norm at most ``max_norm`` (:func:`fedsim.training.clip_by_norm`'s rule)."""
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))
    scale = torch.clamp(max_norm / (norms + 1e-6), max=1.0)
    return {n: g * scale.view(-1, *([1] * (g.dim() - 1))) for n, g in grads.items()}


def masked(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` for the active clients (first dimension), ``old`` for the others."""
    return torch.where(active.view(-1, *([1] * (new.dim() - 1))), new, old)
