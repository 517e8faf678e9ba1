"""Models chosen with ``model=``: each takes ``input_shape`` (C, H, W) and ``num_classes``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200,)) -> None:
        super().__init__()
        width = int(torch.tensor(input_shape).prod())
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """LeNet-style CNN: two 5x5 conv + max-pool blocks, then two linear layers (McMahan et al., 2017)."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, channels: Sequence[int] = (16, 32), hidden: int = 128
    ) -> None:
        super().__init__()
        c_in, h, w = input_shape
        blocks: list[nn.Module] = []
        for c_out in channels:
            blocks += [nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"model.channels={list(channels)} pools a {input_shape} image below 1x1; use fewer blocks")
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
