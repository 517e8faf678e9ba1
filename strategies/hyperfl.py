"""HyperFL: a shared hypernetwork generates each client's feature extractor; embeddings and classifiers stay private."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping

import torch
from torch import nn
from torch.func import functional_call

from fedsim.params import ParamError, check_range
from fedsim.seeding import derive_seed, torch_generator
from fedsim.state import ClientState, Tensors
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalResult, LocalTask, ReplayStage, ScoredModel
from fedsim.training import OptimizerConfig, Params, clip_by_norm

log = logging.getLogger("fedsim")

PRIVATE_KEY = "hyperfl.private"  # client state: the private embedding and classifier head
LABELS_KEY = "hyperfl.labels"  # client state: the client's label counts (personalised scoring only)
HYPER_PREFIX = "hypernet."  # names of the shared (uploaded, averaged) tensors
EMBEDDING = "embedding"


class HyperNetwork(nn.Module):
    """embedding -> Linear(embedding_dim, hidden_dim) -> ReLU -> one Linear(hidden_dim, numel) per generated tensor."""

    def __init__(self, shapes: Mapping[str, torch.Size], embedding_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.trunk = nn.Sequential(nn.Linear(embedding_dim, hidden_dim), nn.ReLU())
        self.heads = nn.ModuleList(nn.Linear(hidden_dim, math.prod(shape)) for shape in self.shapes.values())

    def forward(self, embedding: torch.Tensor) -> Tensors:
        hidden = self.trunk(embedding)
        return {name: head(hidden).view(shape) for (name, shape), head in zip(self.shapes.items(), self.heads)}


class HyperModel(nn.Module):
    """One client's model: the target network whose feature extractor is ``hypernet(embedding)``.

    The target's own parameters outside ``generated`` (the classifier head) are used as they
    are; the generated ones are replaced through :func:`torch.func.functional_call`, so the
    gradient of the loss reaches the hypernetwork and the embedding.
    """

    def __init__(self, target: nn.Module, hypernet: HyperNetwork, embedding_dim: int) -> None:
        super().__init__()
        self.target = target
        self.hypernet = hypernet
        self.embedding = nn.Parameter(torch.zeros(embedding_dim, device=next(target.parameters()).device))
        for name, p in target.named_parameters():
            if name in hypernet.shapes:
                p.requires_grad_(False)  # placeholders: the generated tensors stand in for them

    def generate(self) -> Tensors:
        """The feature extractor's tensors for this client's embedding."""
        return self.hypernet(self.embedding)

    def forward(self, x: torch.Tensor, weights: Tensors | None = None) -> torch.Tensor:
        return functional_call(self.target, self.generate() if weights is None else weights, (x,))


class HyperFL(FedAvg):
    """HyperFL (Guo, Zeng, Chen, Zhang, Ren, Zhou and Qu, "A New Federated Learning Framework
    Against Gradient Inversion Attacks", AAAI 2025; reference code Pengxin-Guo/HyperFL).

    The configured model is split into a private classifier head (``head``: a Linear module;
    null: the model's last Linear layer) and a feature extractor (every other parameter), which
    a shared hypernetwork generates from the client's private embedding (dim ``embedding_dim``):
    embedding -> Linear -> ReLU (``hidden_dim``) -> one linear head per generated tensor.

    Per round a client (1) trains its head alone for ``head_epochs`` (SGD ``head_lr``,
    momentum ``head_momentum``) on the generated feature extractor, then (2) trains the
    hypernetwork and its embedding for ``local_epochs`` with the head frozen (SGD ``lr``,
    momentum ``momentum``, each group's gradient norm clipped to ``max_grad_norm``); both
    stages use ``weight_decay``. It uploads only the hypernetwork's change; the server adds
    the data-size-weighted mean (FedAvg on the hypernetwork) and broadcasts it to all. The
    embedding and head live in the client's state (initialised from (seed, client id)), so
    they persist across rounds and in checkpoints and never leave the client.

    Evaluation is personalised: every honest client that has trained so far is scored with
    its own model (global hypernetwork + its private embedding and head) on the central test
    set re-weighted to its own label distribution; ``test_acc``/``test_loss`` are their means.
    """

    def __init__(
        self,
        seed: int,
        embedding_dim: int = 64,
        hidden_dim: int = 128,
        head: str | None = None,
        head_lr: float = 0.1,
        head_epochs: int = 1,
        head_momentum: float = 0.5,
        momentum: float = 0.5,
        weight_decay: float = 5e-4,
        max_grad_norm: float = 50.0,
    ) -> None:
        check_range("strategy.embedding_dim", embedding_dim, low=1, integer=True)
        check_range("strategy.hidden_dim", hidden_dim, low=1, integer=True)
        check_range("strategy.head_lr", head_lr, low=0, low_open=True)
        check_range("strategy.head_epochs", head_epochs, low=0, integer=True)
        check_range("strategy.head_momentum", head_momentum, 0, 1, high_open=True)
        check_range("strategy.momentum", momentum, 0, 1, high_open=True)
        check_range("strategy.weight_decay", weight_decay, low=0)
        check_range("strategy.max_grad_norm", max_grad_norm, low=0, low_open=True)
        self.seed, self.embedding_dim, self.hidden_dim, self.head = int(seed), embedding_dim, hidden_dim, head
        self.head_lr, self.head_epochs, self.head_momentum = head_lr, head_epochs, head_momentum
        self.momentum, self.weight_decay, self.max_grad_norm = momentum, weight_decay, max_grad_norm

    # The model split.

    def head_module(self, model: nn.Module) -> tuple[str, nn.Linear]:
        """(name, module) of the private classifier head."""
        linear = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
        if not linear:
            raise ParamError(f"strategy=hyperfl: {type(model).__name__} has no Linear layer to keep as the private head")
        name = list(linear)[-1] if self.head is None else self.head
        if name not in linear:
            raise ParamError(f"strategy.head={name!r}: not a Linear module of the model; its Linear modules: {', '.join(linear)}")
        return name, linear[name]

    def head_names(self, model: nn.Module) -> list[str]:
        """Names of the head's parameters in the target model."""
        name, module = self.head_module(model)
        return [f"{name}.{p}" for p, _ in module.named_parameters()]

    def build(self, model: nn.Module) -> HyperModel:
        """Wrap ``model`` (the target) with a hypernetwork generating all of it but the head.

        The hypernetwork's initial weights derive from the seed (the global state's start).
        """
        private = set(self.head_names(model))
        shapes = {n: p.shape for n, p in model.named_parameters() if n not in private}
        if not shapes:
            raise ParamError("strategy=hyperfl: the model has no parameters outside the head to generate")
        device = next(model.parameters()).device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(self.seed, "hyperfl-hypernetwork"))
            hypernet = HyperNetwork(shapes, self.embedding_dim, self.hidden_dim).to(device)
        return HyperModel(model, hypernet, self.embedding_dim)

    @staticmethod
    def shared(hyper: HyperModel) -> Tensors:
        """The hypernetwork's tensors under their upload names."""
        return {HYPER_PREFIX + k: v.detach().clone() for k, v in hyper.hypernet.state_dict().items()}

    @staticmethod
    def load_shared(hyper: HyperModel, global_state: Tensors) -> None:
        hyper.hypernet.load_state_dict({k[len(HYPER_PREFIX) :]: v for k, v in global_state.items()})

    def load_private(self, hyper: HyperModel, private: Tensors) -> None:
        params = dict(hyper.target.named_parameters())
        with torch.no_grad():
            hyper.embedding.copy_(private[EMBEDDING])
            for name in self.head_names(hyper.target):
                params[name].copy_(private[name])

    def initial_private(self, hyper: HyperModel, generator: torch.Generator) -> Tensors:
        """Fresh private parts drawn from ``generator``: embedding ~ N(0, 1) (nn.Embedding's init) and the
        head ~ U(+-1/sqrt(fan_in)) (nn.Linear's range)."""
        _, module = self.head_module(hyper.target)
        device = hyper.embedding.device

        def draw(shape: torch.Size, bound: float | None = None) -> torch.Tensor:
            if bound is None:
                return torch.randn(shape, generator=generator).to(device)
            return ((torch.rand(shape, generator=generator) * 2 - 1) * bound).to(device)

        bound = 1 / math.sqrt(module.in_features)
        head_name, _ = self.head_module(hyper.target)
        return {
            EMBEDDING: draw(hyper.embedding.shape),
            **{f"{head_name}.{n}": draw(p.shape, bound) for n, p in module.named_parameters()},
        }

    # Engine hooks.

    def init_global(self, model: nn.Module) -> Tensors:
        """The shared state is the hypernetwork only."""
        return self.shared(self.build(model))

    def attack_model(self, global_state: Tensors, new_model: Callable[[], nn.Module]) -> nn.Module:
        """What the server can differentiate: the hypernetwork it holds, feeding the target network, with an
        embedding and head of its own guessing (drawn like a client's initial ones from a seed no client uses)."""
        hyper = self.build(new_model())
        self.load_shared(hyper, global_state)
        self.load_private(hyper, self.initial_private(hyper, torch_generator(self.seed, "hyperfl-attacker-guess")))
        return hyper

    def replay_stages(self, attack_model: nn.Module, optimizer: OptimizerConfig, lr: float, local_epochs: int) -> list[ReplayStage]:
        """The client's two stages in the attack model's names: the head alone, then the hypernetwork and
        the embedding with the head frozen, each group's gradient clipped (as :meth:`local_update`)."""
        head = tuple(f"target.{n}" for n in self.head_names(attack_model.target))
        hypernet = tuple(n for n, _ in attack_model.named_parameters() if n.startswith(HYPER_PREFIX))
        return [
            ReplayStage(head, optimizer.replace(momentum=self.head_momentum, weight_decay=self.weight_decay), self.head_lr, self.head_epochs),
            ReplayStage((*hypernet, EMBEDDING), optimizer.replace(momentum=self.momentum, weight_decay=self.weight_decay), lr, local_epochs,
                        clip_groups=(hypernet, (EMBEDDING,)), clip_norm=self.max_grad_norm),
        ]

    # Client side.

    def local_update(self, task: LocalTask) -> LocalResult:
        hyper = self.build(task.model)
        self.load_shared(hyper, task.global_state)
        private = task.client_state.get(PRIVATE_KEY)
        if private is None:
            private = self.initial_private(hyper, torch_generator(self.seed, "hyperfl", task.client_id))
        head_names = self.head_names(hyper.target)
        target = hyper.target

        # (1) the head alone, on the feature extractor the current hypernetwork generates
        with torch.no_grad():
            self.load_private(hyper, private)
            weights = hyper.generate()

        def head_loss(head: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(functional_call(target, {**weights, **head}, (x,)), y)

        head_stage = task.training(
            head_loss, lr=self.head_lr, optimizer=task.optimizer.replace(momentum=self.head_momentum, weight_decay=self.weight_decay)
        ).run({n: private[n] for n in head_names}, task.batches(self.head_epochs))
        head = head_stage.params

        # (2) the hypernetwork and the embedding, head frozen; each group's gradient clipped
        def body_loss(params: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            hypernet = {k[len(HYPER_PREFIX) :]: v for k, v in params.items() if k != EMBEDDING}
            generated = functional_call(hyper.hypernet, hypernet, (params[EMBEDDING],))
            return nn.functional.cross_entropy(functional_call(target, {**generated, **head}, (x,)), y)

        def clip_groups(_: Params, grads: Params) -> Params:
            hypernet = clip_by_norm({k: g for k, g in grads.items() if k != EMBEDDING}, self.max_grad_norm)
            return {**hypernet, **clip_by_norm({EMBEDDING: grads[EMBEDDING]}, self.max_grad_norm)}

        start = {**{k: v for k, v in task.global_state.items()}, EMBEDDING: private[EMBEDDING]}
        body_stage = task.training(
            body_loss,
            optimizer=task.optimizer.replace(momentum=self.momentum, weight_decay=self.weight_decay),
            grad_hooks=(clip_groups,),
        ).run(start, task.batches())

        task.client_state.put(PRIVATE_KEY, {EMBEDDING: body_stage.params[EMBEDDING], **head})
        task.client_state.put(LABELS_KEY, {"counts": torch.bincount(task.y, minlength=head[head_names[0]].shape[0]).float()})
        metrics = {"train_loss": body_stage.mean_loss, "head_loss": head_stage.mean_loss}
        return LocalResult(task.delta(body_stage.params), len(task.y), metrics)

    # Server side: aggregation is FedAvg's, on the hypernetwork (inherited).

    def scored_models(
        self, global_state: Tensors, new_model: Callable[[], nn.Module], client_states: Mapping[int, ClientState]
    ) -> dict[int | None, ScoredModel]:
        """Each client's personal model (global hypernetwork + its private embedding and head), scored on the
        test set re-weighted to its label distribution; clients that never trained have none yet."""
        models: dict[int | None, ScoredModel] = {}
        for cid, state in client_states.items():
            private = state.get(PRIVATE_KEY)
            if private is None:
                continue
            hyper = self.build(new_model())
            self.load_shared(hyper, global_state)
            self.load_private(hyper, private)
            models[cid] = ScoredModel(hyper, state.get(LABELS_KEY)["counts"])
        if not models:
            log.warning("hyperfl: no client has trained yet; no personalised score")
        return models
