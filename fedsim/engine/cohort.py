"""Vectorised cohorts (``backend.vectorize=true``): the clients of a chunk train as one ``torch.func.vmap`` loop.

Every client's parameters (and optimizer state) are stacked along a new first dimension and each step
runs the model once for all of them on their stacked mini-batches (the same shuffles as the per-client
path, drawn from the same generators). A mini-batch shorter than the step's longest is padded and its
padding weighted zero, so each client's loss is still the mean over its own examples; a client with
fewer steps is masked (its parameters and optimizer state stay as they are), never given extra updates.
Under plain SGD the linear layers' weights step fused with their gradient, one ``baddbmm`` per layer
(:mod:`fedsim.engine.fused_linear`). What follows training (the strategy's ``finish``, update poisoning,
the codec, the reply) is the per-client path's.

Eligible: a :class:`~fedsim.strategy.OneLoopStrategy` that keeps its local update (FedAvg and its kin FedProx, FedAvgM,
FedAdam, FedSAM; FedDyn and FedSpeed; MoNNA), whose loops in the chunk differ only in what can be
stacked: SGD (momentum, dampening, Nesterov, weight decay, ``grad_clip``) with one lr, per-client
momentum buffers, the plain or the sharpness-aware gradient (:class:`SamGradient`, FedSAM's and
FedSpeed's), fixed per-client gradient offsets (:class:`GradOffset`, FedDyn's correction), loss terms
of one shared payload (FedProx's), a model without buffers, payloads equal in the tensors not trained.
Anything else (DP-SGD, a codec's estimator, Adam) runs the per-client path, with one log line saying why.
The chunk's tasks share the first client's model: the vectorised update is functional and never changes it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from flwr.app import Message
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsim.engine.client_app import ClientSide, Prepared, client_side_for, config_key, partition_id, prepare, reply, run_local_round
from fedsim.engine.context import Config, RunContext
from fedsim.engine.fused_linear import Factors, fused_linears, fused_step, fusable_weights
from fedsim.engine.inline_grid import Cohort
from fedsim.strategy import LocalTask
from fedsim.training import Batch, GradOffset, LocalTraining, Optimizer, Params, SamGradient, TrainOutcome, autograd_gradient, step_target

log = logging.getLogger("fedsim")
_SAID: set[str] = set()  # fallback reasons already logged in this process


def run_cohort(side: ClientSide, items: Sequence[tuple[Message, int]]) -> list[Message]:
    """Replies to ``(message, client id)`` pairs: trained as one vectorised loop when eligible, else one by one."""
    first = prepare(side, *items[0])
    prepared = [first, *(prepare(side, message, cid, like=first) for message, cid in items[1:])]
    strategies = [p.parts.strategy for p in prepared]
    trainings = [s.training_for(p.task) for s, p in zip(strategies, prepared)] if strategies[0].vectorizable else None
    problem = "the strategy's local update is not one training loop" if trainings is None else ineligible(prepared, trainings)
    if problem is not None:
        if problem not in _SAID:
            _SAID.add(problem)
            log.warning("backend.vectorize: %s; its clients run one by one", problem)
        return [run_local_round(side, message, cid) for message, cid in items]
    tasks = [p.task for p in prepared]
    size = slice_size(tasks[0], fused=bool(fusable_weights(tasks[0].model, list(tasks[0].trainable()), trainings[0])))
    batches = [list(s.batches_for(t)) for s, t in zip(strategies, tasks)]
    replies = []
    for i in range(0, len(tasks), size):  # each slice replied to as soon as it is trained: its stacks are still in cache
        part = slice(i, i + size)
        outcomes = train_stacked(tasks[part], trainings[part], batches[part])
        replies += [reply(side, p, s.finish(p.task, outcome)) for s, p, outcome in zip(strategies[part], prepared[part], outcomes)]
    side.context.new_model.release(first.task.model)  # the chunk's one model: the replies hold their own bytes
    return replies


def cohort_runner(cfg: Config, ctx: RunContext | None = None) -> Cohort | None:
    """With ``backend.vectorize``: a round's train messages run as vectorised cohorts (None: one by one).
    (Here, not beside the server's loop: a Ray actor imports it, and nothing of the server side.)"""
    if not cfg["backend"].get("vectorize"):
        return None
    key = config_key(cfg)
    return lambda items: run_cohort(client_side_for(cfg, ctx, key), [(m, partition_id(c)) for m, c in items])


def ineligible(prepared: list[Prepared], trainings: list[LocalTraining]) -> str | None:
    """Why this chunk cannot train as one vectorised loop (None: it can)."""
    first, task = trainings[0], prepared[0].task
    if any(t.gradient is not autograd_gradient and not isinstance(t.gradient, SamGradient) for t in trainings):
        return "a gradient estimator other than autograd or SAM (DP-SGD, a codec's) is in use"
    if any(t.gradient != first.gradient or t.optimizer != first.optimizer or t.lr != first.lr for t in trainings):
        return "the clients' optimizers or gradient estimators differ"
    if any(len(t.grad_hooks) != len(first.grad_hooks) or not all(isinstance(h, GradOffset) for h in t.grad_hooks) for t in trainings):
        return "gradient hooks other than fixed offsets are set"
    if first.optimizer.name != "sgd":
        return f"optimizer.name={first.optimizer.name} (only sgd is vectorised)"
    names = set(task.trainable())
    if any(k.removeprefix("momentum.") not in names or not k.startswith("momentum.") for t in trainings for k in t.state):
        return "an optimizer state other than SGD momentum buffers"
    if any(True for _ in task.model.buffers()):
        return f"{type(task.model).__name__} has buffers (BatchNorm statistics)"
    kept = [k for k in task.global_state if k not in names or first.loss_terms]  # what the shared model and loss terms use
    if any(p.task.global_state is not task.global_state and any(not torch.equal(p.task.global_state[k], task.global_state[k]) for k in kept)
           for p in prepared[1:]):
        return "the clients received payloads that differ beyond their trained tensors"
    return None


def last_level_cache_bytes(default: int = 32 * 2**20) -> int:
    """The size of this CPU's largest cache (Linux's sysfs; ``default`` where it cannot be read)."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        if text[:-1].isdigit() and text[-1] in units:
            sizes.append(int(text[:-1]) * units[text[-1]])
    return max(sizes, default=default)


CPU_CACHE_BYTES = last_level_cache_bytes()


def slice_size(task: LocalTask, fused: bool) -> int:
    """How many clients one vmap trains at once: on a CPU as many as keep the stacked parameters near the
    last-level cache, where one stack of 100 clients would run at memory speed: the whole cache when the SGD
    steps are fused (:mod:`fedsim.engine.fused_linear`: no gradient stacks), half of it otherwise (a gradient
    stack beside the parameters'). On a GPU all of them."""
    if task.x.device.type != "cpu":
        return 2**31
    per_client = sum(p.numel() * p.element_size() for p in task.trainable().values())
    return max(1, (CPU_CACHE_BYTES if fused else CPU_CACHE_BYTES // 2) // max(1, per_client))


StepFn = Callable[[Params, torch.Tensor, torch.Tensor, torch.Tensor], tuple[Params, torch.Tensor]]


def train_stacked(tasks: list[LocalTask], trainings: list[LocalTraining], batches: list[list[Batch]]) -> list[TrainOutcome]:
    """Each task's training outcome over its ``batches``, computed as one vmap over the stacked clients."""
    first, model = trainings[0], tasks[0].model.train()
    names = list(tasks[0].trainable())
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in names}
    steps = [len(b) for b in batches]
    loss_terms = first.loss_terms  # of one shared payload (``ineligible``): one set serves the cohort

    def forward(params: Params, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**fixed, **params}, (x,))

    def loss(params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        logits = forward(params, x)  # cross-entropy as log-softmax and a gather: vmap runs nll_loss as a Python decomposition
        picked = nn.functional.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
        return -(picked * weight).sum() + sum(term(params) for term in loss_terms)

    step_fn: StepFn = vmap(grad_and_value(loss))
    shared_fn: StepFn = vmap(grad_and_value(loss), in_dims=(None, 0, 0, 0))  # one payload for all: unbatched parameters
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    params, owned = starting_stacks(tasks, {n: dtypes[n] for n in names})
    state = stacked_state(trainings, params)
    offsets = [{n: torch.stack([t.grad_hooks[j].offset[n] for t in trainings]) for n in names} for j in range(len(first.grad_hooks))]
    device = next(iter(params.values())).device
    optimizer = Optimizer(first.optimizer)
    losses = torch.zeros(len(tasks), device=device)
    weights = fusable_weights(model, names, first)
    with fused_linears(model, weights, loss, forward) as fusion:
        for t in range(max(steps)):
            active = torch.tensor([t < n for n in steps], device=device)
            step_batches = [b[t] if t < len(b) else None for b in batches]
            width = max(len(batch[1]) for batch in step_batches if batch is not None)  # this step's longest batch
            x, y, weight = stack_step(step_batches, width, tasks[0])
            first_fn, at = (step_fn, params) if owned else (shared_fn, {n: p[0] for n, p in params.items()})  # broadcast: the payload
            factors: dict[str, Factors] = {}
            fused = fusion.checked_gradient(first_fn, at, x, y, weight, shared=not owned) if fusion is not None else None
            if fused is not None:
                grads, factors, step_loss = fused
            else:
                fusion = None
                grads, step_loss = stacked_gradient(step_fn, first_fn, first.gradient, at, x, y, weight)
            for offset in offsets:  # the clients' GradOffset hooks, in order
                grads = {n: g + offset[n] for n, g in grads.items()}
            if first.optimizer.grad_clip is not None:
                grads = clip_each(grads, first.optimizer.grad_clip)
            with torch.no_grad():
                every = bool(active.all())  # every client steps: nothing to mask, and the step writes into our own tensors
                rest = {n: params[n] for n in grads}
                stepped, new_state = optimizer.step(rest, grads, state, first.lr, write_into=step_target(rest, grads, owned) if every else None)
                for n, pair in factors.items():
                    stepped[n] = fused_step(params[n], pair, first.lr, first.optimizer.weight_decay, in_place=owned and every)
                owned = True  # a functional or masked step's results are new tensors
                if every:
                    params, state = stepped, new_state
                else:
                    params = {n: masked(active, stepped[n], params[n]) for n in names}
                    state = {k: masked(active, v, state[k] if k in state else torch.zeros_like(v)) for k, v in new_state.items()}
            losses += torch.where(active, step_loss.detach(), torch.zeros((), device=device))
    if not owned:  # nothing stepped: the outcomes would be views of the payload
        params = {n: p.clone() for n, p in params.items()}
    return [TrainOutcome({n: params[n][i] for n in names}, {k: v[i] for k, v in state.items()},
                         float(losses[i]) / steps[i] if steps[i] else float("nan"), steps[i], owned=True) for i in range(len(tasks))]


def starting_stacks(tasks: list[LocalTask], dtypes: dict[str, torch.dtype]) -> tuple[Params, bool]:
    """The clients' starting parameters, stacked, and whether the stacks are tensors of their own: one payload
    shared by every task is broadcast (a view, not copied), so that only the first step's results are new."""
    first = tasks[0].global_state
    if all(task.global_state is first for task in tasks):
        return {n: first[n].detach().to(d).expand(len(tasks), *first[n].shape) for n, d in dtypes.items()}, False
    return {n: torch.stack([task.global_state[n].detach().to(d) for task in tasks]) for n, d in dtypes.items()}, True


def stacked_state(trainings: list[LocalTraining], params: Params) -> Params:
    """The clients' initial momentum buffers, stacked (a client without one starts from zero, as the optimizer does)."""
    keys = sorted({k for t in trainings for k in t.state})
    return {k: torch.stack([t.state[k] if k in t.state else torch.zeros_like(params[k.removeprefix("momentum.")][0]) for t in trainings])
            for k in keys}


def stacked_gradient(step_fn: StepFn, first_fn: StepFn, gradient: object, params: Params, x: torch.Tensor, y: torch.Tensor,
                     weight: torch.Tensor) -> tuple[Params, torch.Tensor]:
    """Every client's gradient and loss at its parameters: plain, or sharpness-aware (:class:`SamGradient`'s rule
    with each client's own ascent norm). ``first_fn`` takes ``params`` (stacked, or one set that every client
    starts from: the model then runs its forward as one matrix product over all the clients' examples rather
    than a batched product over copies of the same weights: 4-10% faster a step here); ``step_fn`` takes stacked
    parameters (SAM's perturbed ones)."""
    grads, loss = first_fn(params, x, y, weight)
    if not isinstance(gradient, SamGradient):
        return grads, loss
    scale = gradient.rho / (client_norms(grads) + 1e-7)
    perturbed, _ = step_fn({n: p + grads[n] * per_client(scale, grads[n]) for n, p in params.items()}, x, y, weight)
    return gradient.merged(grads, perturbed), loss


def client_norms(grads: Params) -> torch.Tensor:
    """Each client's global gradient norm (first dimension: the client)."""
    return torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in grads.values()))


def per_client(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-client vector shaped to broadcast against ``like`` (clients first)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def stack_step(batches: list[tuple[torch.Tensor, torch.Tensor] | None], width: int, like: LocalTask) -> tuple[torch.Tensor, ...]:
    """One step's mini-batches as (clients, width, ...) tensors, zero-padded, with 1/len weights on real examples."""
    shape, device = like.x.shape[1:], like.x.device
    if all(batch is not None and len(batch[1]) == width for batch in batches):  # no padding: stacked as they are
        x, y = torch.stack([b[0] for b in batches]), torch.stack([b[1] for b in batches])  # type: ignore[index]
        return x, y, torch.full((len(batches), width), 1.0 / width, device=device)
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
    scale = torch.clamp(max_norm / (client_norms(grads) + 1e-6), max=1.0)
    return {n: g * per_client(scale, g) for n, g in grads.items()}


def masked(active: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """``new`` for the active clients (first dimension), ``old`` for the others."""
    return torch.where(per_client(active, new), new, old)
