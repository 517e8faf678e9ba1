"""Models chosen with ``model=``: each takes ``input_shape`` (C, H, W) and ``num_classes``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedsim.params import ParamError, check_range, check_that


class MLP(nn.Module):
    """Fully connected ReLU network on flattened images."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (200,)) -> None:
        check_that("model.hidden", hidden, isinstance(hidden, Sequence) and not isinstance(hidden, str)
                   and all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden),
                   "a list of positive layer widths, e.g. [200], [256,128], or [] (logistic regression)")
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
        check_that("model", "cnn", len(input_shape) == 3,
                   f"a model for this dataset's inputs, shaped {tuple(input_shape)}: cnn takes (channels, height, width) images; "
                   "use model=mlp, or model=minilm_lora for text")
        check_that("model.channels", channels, len(channels) >= 1 and all(isinstance(c, int) and c >= 1 for c in channels),
                   "a non-empty list of positive channel counts, e.g. [16,32]")
        check_range("model.hidden", hidden, low=1, integer=True)
        super().__init__()
        c_in, h, w = input_shape
        blocks: list[nn.Module] = []
        for c_out in channels:
            blocks += [nn.Conv2d(c_in, c_out, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)]
            c_in, h, w = c_out, h // 2, w // 2
        if h < 1 or w < 1:
            raise ParamError(f"model.channels={list(channels)}: pools a {tuple(input_shape)} image below 1x1; use fewer blocks")
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(c_in * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


from fedsim.models.vision import VGG, ConvNet, ResNet18  # noqa: E402  (chosen with model=resnet18 | convnet | vgg)

__all__ = ["MLP", "CNN", "ResNet18", "ConvNet", "VGG"]
