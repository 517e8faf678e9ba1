"""The objects one run is made of, built once per process from the resolved config."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn

from fedsim.attack import Attack
from fedsim.codec import Codec
from fedsim.data import ImageData, TextData
from fedsim.defense import Defense
from fedsim.privacy import PrivacyAttack
from fedsim.seeding import derive_seed
from fedsim.strategy import Strategy

Config = dict[str, Any]


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name} but CUDA is not available on this machine; use device=cpu")
    return torch.device(name)


def _build(node: Config, expected: type, group: str) -> Any:
    obj = instantiate(node, _convert_="all")
    if not isinstance(obj, expected):
        raise TypeError(f"{group}._target_={node.get('_target_')} is not a {expected.__module__}.{expected.__name__}")
    return obj


@dataclass
class Environment:
    """Dataset, partition, model factory and the run's components."""

    cfg: Config
    data: ImageData | TextData
    partitions: list[np.ndarray]
    strategy: Strategy
    attack: Attack
    codec: Codec
    defense: Defense
    privacy: PrivacyAttack
    device: torch.device
    _model_template: nn.Module | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: Config) -> "Environment":
        data = instantiate(cfg["dataset"])
        partition = instantiate(cfg["partition"])
        partitions = partition(labels=data.y_train, num_clients=cfg["num_clients"], seed=cfg["seed"])
        return cls(
            cfg=cfg,
            data=data,
            partitions=partitions,
            strategy=_build(cfg["strategy"], Strategy, "strategy"),
            attack=_build(cfg["attack"], Attack, "attack"),
            codec=_build(cfg["compression"], Codec, "compression"),
            defense=_build(cfg["defense"], Defense, "defense"),
            privacy=_build(cfg["privacy_attack"], PrivacyAttack, "privacy_attack"),
            device=resolve_device(cfg["device"]),
        )

    @property
    def seed(self) -> int:
        return int(self.cfg["seed"])

    def new_model(self) -> nn.Module:
        """A fresh model, initialised identically in every process from the seed.

        Built once per process (Hydra instantiation and seeded initialisation cost a few ms)
        and then copied: every call returns an independent module in the initial state.
        """
        if self._model_template is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(derive_seed(self.seed, "model-init"))
                model = instantiate(self.cfg["model"], input_shape=self.data.input_shape, num_classes=self.data.num_classes)
            self._model_template = model.to(self.device)
        return copy.deepcopy(self._model_template)

    def client_data(self, client_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The client's training split, as tensors on the run's device."""
        idx = self.partitions[client_id]
        x = torch.from_numpy(self.data.x_train[idx]).to(self.device)
        y = torch.from_numpy(self.data.y_train[idx]).to(self.device)
        return x, y

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The central test split, as tensors on the run's device."""
        return torch.from_numpy(self.data.x_test).to(self.device), torch.from_numpy(self.data.y_test).to(self.device)


_CACHE: dict[str, Environment] = {}


def environment_for(cfg: Config) -> Environment:
    """The process-wide Environment for ``cfg`` (built on first use, e.g. once per Ray actor)."""
    key = json.dumps(cfg, sort_keys=True, default=str)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = Environment.from_config(cfg)
    return _CACHE[key]
