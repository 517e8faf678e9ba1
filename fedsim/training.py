"""The one local training loop every strategy trains through (docs/architecture.md, "Training").

Written in functional form: the trained parameters are a dict of tensors, the model is
called with :func:`torch.func.functional_call`, and the optimizer is a pure function of
(parameters, gradients, state), so the same loop can later run a whole cohort under
``torch.func.vmap``. A strategy contributes what makes it different:

- ``loss_fn(params, x, y)``: the loss of a mini-batch (default: the model's cross-entropy);
- ``loss_terms``: extra terms of the parameters alone (FedProx's proximal term);
- ``gradient``: how a step's gradient is estimated (autograd; SAM's ascent; DP-SGD's
  per-example clip + noise; a zeroth-order SPSA projection);
- ``grad_hooks``: per-step changes of the gradient before clipping (FedSpeed's correction,
  HyperFL's per-group clipping).

Per step: loss and gradient from ``gradient``; each hook in order; global-norm clipping at
``optimizer.grad_clip``; the optimizer step (weight decay is added there, after clipping,
as ``torch.optim`` does).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn

import torch
from torch import nn
from torch.func import functional_call

from fedsim.params import check_choice, check_range, check_that

Params = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[Params, torch.Tensor, torch.Tensor], torch.Tensor]
GradientFn = Callable[[LossFn, Params, Batch], tuple[float, Params]]
GradHook = Callable[[Params, Params], Params]
LossTerm = Callable[[Params], torch.Tensor]

OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerConfig:
    """The ``optimizer`` config group: SGD (momentum, dampening, Nesterov) or Adam, with decoupled-from-
    clipping weight decay and an optional global gradient-norm clip. Semantics follow ``torch.optim``:
    L2 weight decay is added to the gradient inside the step; momentum buffers start at zero."""

    name: str = "sgd"
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = None

    def __post_init__(self) -> None:
        check_choice("optimizer.name", self.name, OPTIMIZERS)
        check_range("optimizer.momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        check_range("optimizer.dampening", self.dampening, low=0.0, high=1.0)
        check_range("optimizer.weight_decay", self.weight_decay, low=0.0)
        check_range("optimizer.eps", self.eps, low=0.0, low_open=True)
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for i, beta in enumerate(self.betas):
            check_range(f"optimizer.betas[{i}]", beta, low=0.0, high=1.0, high_open=True)
        if self.grad_clip is not None:
            check_range("optimizer.grad_clip", self.grad_clip, low=0.0, low_open=True)
        if self.nesterov:
            check_that("optimizer.nesterov", self.nesterov, self.momentum > 0 and self.dampening == 0, "false unless momentum > 0 and dampening = 0")

    def replace(self, **changes: object) -> "OptimizerConfig":
        """This config with some fields changed (a strategy's own defaults over the run's)."""
        return OptimizerConfig(**{**self.__dict__, **changes})


class Optimizer:
    """A functional optimizer: ``step(params, grads, state, lr) -> (params, state)``, no in-place change."""

    def __init__(self, config: OptimizerConfig) -> None:
        self.config = config

    def step(self, params: Params, grads: Params, state: Params, lr: float, *, write_into: Params | None = None) -> tuple[Params, Params]:
        """``write_into``: the tensors to write the new parameters into instead of new ones, ``params`` (a step in
        place) or ``grads`` (spent by the step, when the parameters are not the caller's to change, e.g. a payload);
        the caller then owns ``grads`` and ``state``'s tensors too, which the step overwrites. A fresh 16 MB tensor
        per step costs a vectorised cohort more than the arithmetic. The values are the same either way."""
        c = self.config
        in_place = write_into is not None
        mul, add, addcmul = OPS_IN_PLACE if in_place else OPS
        new_params, new_state = {}, dict(state)
        if c.name == "adam":
            count = state.get("adam.step", torch.zeros(())) + 1
            new_state["adam.step"] = count
        for name, p in params.items():
            g = grads[name]
            out = {"out": write_into[name]} if write_into is not None else {}
            if c.weight_decay:
                g = add(g, p, alpha=c.weight_decay)
            if c.name == "sgd":
                if c.momentum:
                    buf = add(mul(state.get(f"momentum.{name}", torch.zeros_like(p)), c.momentum), g, alpha=1 - c.dampening)
                    new_state[f"momentum.{name}"] = buf
                    g = g.add(buf, alpha=c.momentum) if c.nesterov else buf
                new_params[name] = torch.add(p, g, alpha=-lr, **out)
            else:
                b1, b2 = c.betas
                m = add(mul(state.get(f"adam.m.{name}", torch.zeros_like(p)), b1), g, alpha=1 - b1)
                v = addcmul(mul(state.get(f"adam.v.{name}", torch.zeros_like(p)), b2), g, g, value=1 - b2)
                new_state[f"adam.m.{name}"], new_state[f"adam.v.{name}"] = m, v
                t = float(count)
                denom = (v / (1 - b2**t)).sqrt().add(c.eps)
                new_params[name] = torch.addcdiv(p, m, denom, value=-lr / (1 - b1**t), **out)
        return new_params, new_state


def spendable(grads: Params, params: Params) -> bool:
    """Whether a step may write the new parameters into ``grads``: each gradient dense, of its parameter's shape and
    dtype, in memory of its own (autograd may hand one tensor, or a broadcast view, to several inputs)."""
    storages = {g.untyped_storage().data_ptr() for g in grads.values()}
    return len(storages) == len(grads) == len(params) and all(
        g.is_contiguous() and g.shape == params[n].shape and g.dtype == params[n].dtype for n, g in grads.items())


def step_target(params: Params, grads: Params, own: bool) -> Params | None:
    """Where a step allowed to work in place writes the new parameters: into ``params`` when they are the caller's
    own, else into the step's gradients when :func:`spendable`, else nowhere (a functional step)."""
    return params if own else grads if spendable(grads, params) else None


OPS = (torch.Tensor.mul, torch.Tensor.add, torch.Tensor.addcmul)
OPS_IN_PLACE = (torch.Tensor.mul_, torch.Tensor.add_, torch.Tensor.addcmul_)


def training_mode(model: nn.Module) -> None:
    """``model.train()``, skipped where it would change nothing: every module already in training mode and none
    overriding ``train`` (the call sets each flag through ``Module.__setattr__``, several times the cost of the check)."""
    if not all(m.training and type(m).train is nn.Module.train for m in model.modules()):
        model.train()


def model_loss(model: nn.Module) -> LossFn:
    """Cross-entropy of ``model`` (in training mode) called with the given parameters (its other tensors as they
    are, gathered at the first call: a vectorised cohort builds loops whose loss it never calls)."""
    training_mode(model)
    fixed: Params = {}
    tied = [True]

    def loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not fixed:
            fixed.update((n, t.detach()) for n, t in [*model.named_parameters(), *model.named_buffers()])
            tied[0] = has_tied_tensors(model)
        return nn.functional.cross_entropy(functional_call(model, {**fixed, **params}, (x,), tie_weights=tied[0]), y)

    return loss


def has_tied_tensors(model: nn.Module) -> bool:
    """Whether one tensor appears under two names (tied weights), which ``functional_call`` must then re-tie
    (by default it maps the model's ties at every call; without ties there is nothing to map)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return len({id(t) for _, t in named}) != len(named)


def autograd_gradient(loss_fn: LossFn, params: Params, batch: Batch) -> tuple[float, Params]:
    """The plain gradient of the mini-batch loss (the default estimator)."""
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    loss = loss_fn(leaves, *batch)
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return float(loss.detach()), {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(leaves.items(), grads)}


def global_norm(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """L2 norm of all tensors together."""
    return torch.sqrt(sum(t.pow(2).sum() for t in tensors))


def clip_by_norm(grads: Params, max_norm: float) -> Params:
    """Scale ``grads`` so their global norm is at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_``'s rule)."""
    scale = min(1.0, max_norm / (float(global_norm(grads.values())) + 1e-6))
    return grads if scale == 1.0 else {n: g * scale for n, g in grads.items()}


@dataclass
class TrainOutcome:
    """What a training run produced: the final parameters, the optimizer state, the mean loss, the step count.
    ``owned``: the parameters are tensors of this outcome alone (the loop's own), which :meth:`spend_params`
    may hand over to be overwritten."""

    params: Params
    state: Params
    mean_loss: float
    steps: int
    owned: bool = False

    def spend_params(self) -> tuple[Params, bool]:
        """The parameters, and whether the caller may overwrite them (computing the delta in their memory saves a
        fresh tensor per client). Owned ones are handed over once: ``params`` then raises on any read, rather
        than show what the caller wrote into them."""
        params, owned = self.params, self.owned
        if owned:
            self.params, self.owned = SpentParams(), False
        return params, owned


class SpentParams(Mapping[str, torch.Tensor]):
    """A :class:`TrainOutcome`'s parameters after :meth:`~TrainOutcome.spend_params` handed them over."""

    def _spent(self) -> NoReturn:
        raise RuntimeError("TrainOutcome.params were handed over by spend_params() (OneLoopStrategy.finish computes the "
                           "delta in their memory): read them before calling it")

    def __getitem__(self, key: str) -> torch.Tensor:
        self._spent()

    def __iter__(self) -> Iterator[str]:
        self._spent()

    def __len__(self) -> int:
        self._spent()


@dataclass
class LocalTraining:
    """One local training run: the strategy's contributions to the loop (see the module docstring)."""

    loss_fn: LossFn
    optimizer: OptimizerConfig
    lr: float
    gradient: GradientFn = autograd_gradient
    loss_terms: Sequence[LossTerm] = ()
    grad_hooks: Sequence[GradHook] = ()
    state: Params = field(default_factory=dict)

    def run(self, params: Params, batches: Iterable[Batch]) -> TrainOutcome:
        """Train ``params`` over ``batches``; nothing outside the returned outcome changes."""
        optimizer = Optimizer(self.optimizer)
        loss_fn = self.total_loss()
        in_place = self.holds_no_step()  # the loop may then step tensors of its own in place
        params = {n: p.detach() for n, p in params.items()}
        state, total, steps = {k: v.clone() for k, v in self.state.items()} if in_place else dict(self.state), 0.0, 0
        for batch in batches:
            loss, grads = self.gradient(loss_fn, params, batch)
            for hook in self.grad_hooks:
                grads = hook(params, grads)
            if self.optimizer.grad_clip is not None:
                grads = clip_by_norm(grads, self.optimizer.grad_clip)
            with torch.no_grad():  # the first step's parameters are the caller's: written into its gradients
                into = step_target(params, grads, own=steps > 0) if in_place else None
                params, state = optimizer.step(params, grads, state, self.lr, write_into=into)
            total += loss
            steps += 1
        return TrainOutcome(params, state, total / steps if steps else math.nan, steps, owned=in_place and steps > 0)

    def holds_no_step(self) -> bool:
        """Whether nothing but the loop keeps a step's parameters or gradients past the step: the gradient is
        autograd's or SAM's and every hook a fixed offset, values of this module that keep no tensor they are
        given. The loop then writes its first step into that step's gradients (:func:`spendable`), copies the
        state once and steps both in place from there (the same values; a fresh tensor per step costs about a
        tenth of a small model's step), else it steps functionally, so
        that an estimator or hook that keeps references (a codec recording its trace) sees every step."""
        return (self.gradient is autograd_gradient or isinstance(self.gradient, SamGradient)) and all(
            isinstance(h, GradOffset) for h in self.grad_hooks)

    def total_loss(self) -> LossFn:
        if not self.loss_terms:
            return self.loss_fn

        def loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.loss_fn(params, x, y) + sum(term(params) for term in self.loss_terms)

        return loss


def shuffled_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, epochs: int, generator: torch.Generator
) -> Iterable[Batch]:
    """Shuffled mini-batches over ``epochs`` epochs, the order drawn from ``generator``."""
    n = len(y)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to(x.device)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            yield x.index_select(0, idx), y.index_select(0, idx)  # x[idx]'s values at a quarter of its cost


@dataclass(frozen=True)
class SamGradient:
    """Sharpness-aware gradient (Foret et al., ICLR 2021): g1 at w, ascent e = rho·g1/||g1||,
    g2 at w + e; the loss at w and (1 - alpha)·g1 + alpha·g2 (alpha = 1: plain SAM). A value, not a
    closure, so a vectorised cohort can run the same rule on stacked clients."""

    rho: float
    alpha: float = 1.0

    def __call__(self, loss_fn: LossFn, params: Params, batch: Batch) -> tuple[float, Params]:
        loss, plain = autograd_gradient(loss_fn, params, batch)
        scale = self.rho / (float(global_norm(plain.values())) + 1e-7)
        _, perturbed = autograd_gradient(loss_fn, {n: p + plain[n] * scale for n, p in params.items()}, batch)
        return loss, self.merged(plain, perturbed)

    def merged(self, plain: Params, perturbed: Params) -> Params:
        """(1 - alpha)·g1 + alpha·g2 (g2 itself when alpha = 1), per tensor (stacked clients too)."""
        if self.alpha == 1.0:
            return perturbed
        return {n: (1 - self.alpha) * plain[n] + self.alpha * perturbed[n] for n in plain}


def sam_gradient(rho: float, alpha: float = 1.0) -> GradientFn:
    """The :class:`SamGradient` estimator with these ``rho`` and ``alpha``."""
    return SamGradient(rho, alpha)


@dataclass(frozen=True)
class GradOffset:
    """A gradient hook adding fixed tensors to every step's gradient (FedDyn's and FedSpeed's correction
    lamb·(h_i - w_t)); a value, so a vectorised cohort can stack the clients' offsets."""

    offset: Params

    def __call__(self, params: Params, grads: Params) -> Params:
        return {n: g + self.offset[n] for n, g in grads.items()}
