"""The run context: what every process of a run knows, built once from the resolved config.

A :class:`RunContext` is frozen: the dataset (read-only arrays), the partition, the model
factory, the device, the seed and the run-wide facts. It is passed explicitly to whoever
needs it. Components (strategy, attack, codec, defense, privacy observer) are *not* part of
it: each side of the protocol builds its own with :func:`build_components`, so the server
and the clients never share a component object, on any backend (see docs/architecture.md).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

import numpy as np
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from torch import nn

from fedsim.attack import Attack
from fedsim.codec import Codec
from fedsim.component import RunFacts
from fedsim.data import ImageData, TextData
from fedsim.defense import Defense
from fedsim.params import ParamError
from fedsim.privacy import PrivacyAttack
from fedsim.seeding import derive_seed
from fedsim.strategy import Strategy

Config = dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name}: CUDA is not available on this machine; use device=cpu")
    return torch.device(name)


class ModelFactory:
    """Fresh models in the run's initial state: built once per process (Hydra instantiation and
    seeded initialisation cost a few ms), then copied; every call returns an independent module.

    :meth:`holding` also lends models from a small pool (a deep copy costs more than a small model's
    training step): a lent model is reset in place to the initial state plus the given tensors, and
    :meth:`release` takes it back only if it still has the template's structure (submodules, attribute
    names, hooks, tensor names, shapes and dtypes), so nothing a strategy did to it carries over."""

    POOL_SIZE = 8

    def __init__(self, node: Config, input_shape: tuple[int, ...], num_classes: int, seed: int, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derive_seed(seed, "model-init"))
            model = instantiate(node, input_shape=input_shape, num_classes=num_classes)
        self._template = model.to(device)
        layout = Layout.of(self._template)
        self._initial, self._shape = layout.tensors, layout.shape
        self._pool: list[tuple[nn.Module, Layout]] = []
        self._lock = threading.Lock()

    def __call__(self) -> nn.Module:
        return copy.deepcopy(self._template)

    def holding(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A model in the initial state with ``state`` loaded over it (non-strict, as ``load_state_dict(strict=False)``):
        a pooled one reset in place when one is free, else a fresh copy. Hand it back with :meth:`release`."""
        with self._lock:
            pooled = self._pool.pop() if self._pool else None
        if pooled is None:
            model = self()
            model.load_state_dict(state, strict=False)
            return model
        model, layout = pooled
        if any(k in layout.tensors and tuple(v.shape) != tuple(layout.tensors[k].shape) for k, v in state.items()):
            model.load_state_dict(state, strict=False)  # raises load_state_dict's own error
        with torch.no_grad():
            for name, tensor in layout.tensors.items():
                tensor.copy_(state.get(name, self._initial[name]))
        for name, p in layout.params.items():
            p.requires_grad_(self._initial[name].requires_grad)
            p.grad = None
        for module, template in zip(layout.modules, self._template.modules()):
            if module.training != template.training:  # (set through Module.__setattr__: only where it differs)
                module.training = template.training
        return model

    def release(self, model: nn.Module) -> None:
        """Take back a model :meth:`holding` lent, for the next call (dropped if its structure changed)."""
        layout = Layout.of(model)
        if layout.shape == self._shape:
            with self._lock:
                if len(self._pool) < self.POOL_SIZE and not any(held is model for held, _ in self._pool):
                    self._pool.append((model, layout))

    @contextmanager
    def lending(self) -> Iterator[Callable[[], nn.Module]]:
        """A factory of models in the initial state, lent from the pool (:meth:`holding`) and all taken back when
        the block ends: for models used only inside it (the harness's scoring), at a reset's cost, not a copy's."""
        lent: list[nn.Module] = []

        def lend() -> nn.Module:
            lent.append(self.holding({}))
            return lent[-1]

        try:
            yield lend
        finally:
            for model in lent:
                self.release(model)


HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks", "_state_dict_hooks",
         "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


@dataclass(frozen=True)
class Layout:
    """A model's structure, read in one walk over its modules: ``shape``, what must be unchanged for it to be
    reused (per submodule its name, class, attribute names, hook counts and its own parameters and buffers:
    name, shape, dtype; None entries left out), and the modules and tensors themselves, as ``modules()``,
    ``named_parameters()`` and ``named_buffers()`` list them (a tensor under two names once, by its first)."""

    shape: tuple
    modules: tuple[nn.Module, ...]
    params: dict[str, torch.Tensor]
    tensors: dict[str, torch.Tensor]  # parameters, then buffers

    @classmethod
    def of(cls, model: nn.Module) -> "Layout":
        shape, modules, params, buffers = [], [], {}, {}
        seen_params: set[int] = set()
        seen_buffers: set[int] = set()
        for name, m in model.named_modules():
            own = [*m._parameters.items(), *m._buffers.items()]
            shape.append((name, type(m), tuple(vars(m)), tuple(len(getattr(m, h, ())) for h in HOOKS),
                          tuple((k, v.shape, v.dtype) for k, v in own if v is not None)))
            modules.append(m)
            for into, entries, seen in ((params, m._parameters, seen_params), (buffers, m._buffers, seen_buffers)):
                for k, v in entries.items():
                    if v is not None and id(v) not in seen:
                        seen.add(id(v))
                        into[f"{name}.{k}" if name else k] = v
        return cls(tuple(shape), tuple(modules), params, {**params, **buffers})


@dataclass(frozen=True)
class RunContext:
    """The frozen facts of one run: resolved config, data, partition, model factory, device, seed."""

    cfg: Config
    data: ImageData | TextData
    partitions: tuple[np.ndarray, ...]
    device: torch.device
    new_model: ModelFactory = field(repr=False)

    @classmethod
    def from_config(cls, cfg: Config) -> "RunContext":
        data = instantiate(cfg["dataset"])
        for array in (data.x_train, data.y_train, data.x_test, data.y_test):
            array.setflags(write=False)
        partitioner = instantiate(cfg["partition"])
        natural = {"groups": getattr(data, "groups", None)} if "groups" in inspect.signature(partitioner).parameters else {}  # partition=natural
        partitions = partitioner(labels=data.y_train, num_clients=cfg["num_clients"], seed=cfg["seed"], **natural)
        device = resolve_device(cfg["device"])
        for part in partitions:
            part.setflags(write=False)
        factory = ModelFactory(cfg["model"], data.input_shape, data.num_classes, int(cfg["seed"]), device)
        return cls(cfg=copy.deepcopy(cfg), data=data, partitions=tuple(partitions), device=device, new_model=factory)

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    @property
    def num_clients(self) -> int:
        return int(self.cfg["num_clients"])

    @property
    def rounds(self) -> int:
        return int(self.cfg["rounds"])

    def facts(self) -> RunFacts:
        """The run-wide facts components check themselves against (:meth:`Component.check_run`)."""
        cfg = self.cfg
        return RunFacts(self.num_clients, int(cfg["clients_per_round"]), int(cfg.get("min_clients") or 1),
                        tuple(len(p) for p in self.partitions), tuple(self.data.input_shape), int(self.data.num_classes))

    def partition_size(self, client_id: int) -> int:
        """How many training examples client ``client_id`` truly holds (the simulator's own count)."""
        return len(self.partitions[client_id])

    def client_data(self, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training split, as tensors on the run's device."""
        return self.train_examples(self.partitions[client_id])

    def train_examples(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """These training examples (and labels), as tensors on the run's device (an index array's gather is a
        fresh array of its own: no second copy)."""
        return torch.from_numpy(self.data.x_train[indices]).to(self.device), torch.from_numpy(self.data.y_train[indices]).to(self.device)

    def local_schedule(self) -> dict[str, int | None]:
        """The local training schedule every client (and the server's root training) follows:
        ``local_epochs``, ``batch_size``, ``local_steps``, as :class:`~fedsim.strategy.LocalTask` takes them."""
        steps = self.cfg.get("local_steps")
        return {"local_epochs": int(self.cfg["local_epochs"]), "batch_size": int(self.cfg["batch_size"]),
                "local_steps": None if steps is None else int(steps)}

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The central test split, as tensors on the run's device: made at the first call and shared by every
        later one (every round's evaluation reads them; nothing may write into them)."""
        return self._test_tensors

    @cached_property
    def _test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._tensor(self.data.x_test), self._tensor(self.data.y_test)

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(array)).to(self.device)


def locate(path: str) -> Any:
    """The object a dotted ``_target_`` path names: the longest importable module prefix, then attributes."""
    parts = path.split(".")
    for split in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and not module_name.startswith(exc.name):
                raise  # the module exists but imports something missing
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ModuleNotFoundError(f"no module named {parts[0]!r}")


def check_arguments(node: Config, group: str) -> Any:
    """Every key of a component's config node must be an argument of its ``_target_`` (unless it takes ``**kwargs``);
    returns the located target."""
    try:
        target = locate(node["_target_"])
    except Exception as exc:  # a typo in the path, or the user's module failing to import
        cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        raise ParamError(f"{group}._target_={node['_target_']}: cannot be imported ({cause}); a dotted path such as "
                         "fedsim.strategies.fedavg.FedAvg, importable from the working directory") from None
    accepted = keyword_arguments(target)
    if accepted is not None:
        for key, value in node.items():
            if not key.startswith("_") and key not in accepted:
                raise ParamError(f"{group}.{key}={value}: not an argument of {node['_target_']}; its arguments: {', '.join(accepted) or 'none'}")
    return target


@lru_cache(maxsize=256)
def keyword_arguments(target: Callable[..., Any]) -> tuple[str, ...] | None:
    """The names ``target`` accepts as keyword arguments (None: any, it takes ``**kwargs``); read once per target."""
    parameters = inspect.signature(target).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return None
    return tuple(name for name, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def construct(node: Config, target: Any = None) -> Any:
    """``hydra.utils.instantiate(node, _convert_="all")``. A flat node, the shape of every component node fedsim
    ships (``_target_`` and keyword arguments of plain values, no nested ``_target_``, no other ``_`` key, no
    ``${`` left to resolve), is called directly with a deep copy of its arguments, which is what Hydra passes it,
    and a failure is raised as Hydra raises it; Hydra's own OmegaConf round trip costs about half a millisecond
    a node, a few milliseconds of every run. Any other node goes to Hydra. ``target``: the node's located
    ``_target_``, when the caller has it (:func:`check_arguments` returns it)."""
    if type(node) is not dict or not all(k == "_target_" or (not k.startswith("_") and plain(v)) for k, v in node.items()):
        return instantiate(node, _convert_="all")
    target = locate(node["_target_"]) if target is None else target
    arguments = copy.deepcopy({k: v for k, v in node.items() if k != "_target_"})
    try:
        return target(**arguments)
    except Exception as exc:
        raise InstantiationException(f"Error in call to target '{node['_target_']}':\n{exc!r}") from exc


def plain(value: Any) -> bool:
    """Whether a config value is a plain one that Hydra would pass as it is (numbers, strings with nothing to
    resolve, None, and lists and dicts of them with no ``_target_``)."""
    if isinstance(value, dict):
        return "_target_" not in value and all(isinstance(k, str) and plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(plain(v) for v in value)
    if isinstance(value, str):
        return "${" not in value
    return value is None or type(value) in (bool, int, float)


def _build(node: Config, expected: type, group: str) -> Any:
    obj = construct(node, check_arguments(node, group))
    if not isinstance(obj, expected):
        raise TypeError(f"{group}._target_={node.get('_target_')}: not a {expected.__module__}.{expected.__name__}")
    return obj


@dataclass
class Components:
    """One side's own instances of the run's components (never shared between server and clients)."""

    strategy: Strategy
    attack: Attack
    codec: Codec
    defense: Defense
    privacy: PrivacyAttack

    def by_kind(self) -> dict[str, Any]:
        """The components by kind, as checkpoints name them."""
        return {"strategy": self.strategy, "attack": self.attack, "codec": self.codec, "defense": self.defense, "privacy": self.privacy}


def build_components(cfg: Config) -> Components:
    """Fresh component instances from the config's ``_target_`` nodes, checked to fit together."""
    parts = Components(
        strategy=_build(cfg["strategy"], Strategy, "strategy"),
        attack=_build(cfg["attack"], Attack, "attack"),
        codec=_build(cfg["compression"], Codec, "compression"),
        defense=_build(cfg["defense"], Defense, "defense"),
        privacy=_build(cfg["privacy_attack"], PrivacyAttack, "privacy_attack"),
    )
    if parts.defense.combiner() is not None and not parts.strategy.robust_combine_ok:
        strategy, defense = (cfg[k].get("_target_", "?").rsplit(".", 1)[-1] for k in ("strategy", "defense"))
        raise ParamError(
            f"defense._target_={cfg['defense'].get('_target_')}: {defense} replaces the aggregation rule, and {strategy} "
            "is a robust rule of its own; use a screening defense (mudhog, krum, multi_krum) or defense=none"
        )
    return parts


def check_fit(parts: Components, ctx: RunContext) -> None:
    """Each component checks that it can work in this run (:meth:`Component.check_run`), before any work."""
    facts = ctx.facts()
    for component in parts.by_kind().values():
        component.check_run(facts)


class Run:
    """A run's context plus one side's components, for scripts and tests that drive parts directly
    (``run.new_model()``, ``run.strategy``...); the engine itself passes the two explicitly."""

    def __init__(self, cfg: Config) -> None:
        self.ctx = RunContext.from_config(cfg)
        self.parts = build_components(cfg)

    def __getattr__(self, name: str) -> Any:
        for holder in ("ctx", "parts"):
            if hasattr(self.__dict__[holder], name):
                return getattr(self.__dict__[holder], name)
        raise AttributeError(name)
