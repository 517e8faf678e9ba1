"""The image models FL papers report on: ResNet-18 with GroupNorm, the gradient-inversion ConvNet, a VGG.

Each takes ``input_shape`` (C, H, W) and ``num_classes`` like every fedsim model; no torchvision.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from fedsim.params import check_choice, check_range, check_that


def require_image(model: str, input_shape: Sequence[int]) -> None:
    """One line for a dataset whose inputs are not images."""
    check_that("model", model, len(input_shape) == 3,
               f"a model for this dataset's inputs, shaped {tuple(input_shape)}: {model} takes (channels, height, width) images; "
               "use model=mlp, or model=minilm_lora for text")


def norm_layer(norm: str, channels: int, groups: int) -> nn.Module:
    """GroupNorm (no running statistics: safe to average across clients), BatchNorm, or nothing."""
    if norm == "group":
        return nn.GroupNorm(min(groups, channels), channels)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """ResNet's two 3x3 convolutions with a shortcut (a 1x1 projection where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm_layer(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm_layer(norm, c_out, groups)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm_layer(norm, c_out, groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 (He et al., CVPR 2016) with GroupNorm in place of BatchNorm, as FedSpeed's reference
    (woodenchild95/FL-Simulator, 2 groups) and most FL papers use it (Hsieh et al. 2020: BatchNorm's
    running statistics do not average across non-IID clients). ``stem=cifar`` (default): a 3x3 stride-1
    first convolution and no max-pool, for 32x32 inputs; ``stem=imagenet``: torchvision's 7x7 stride-2
    convolution and max-pool (the reference wraps torchvision's model, so its stem is this one)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, stem: str = "cifar", norm: str = "group", groups: int = 2) -> None:
        require_image("resnet18", input_shape)
        check_choice("model.stem", stem, ("cifar", "imagenet"))
        check_choice("model.norm", norm, ("group", "batch"))
        check_range("model.groups", groups, low=1, integer=True)
        super().__init__()
        channels = input_shape[0]
        if stem == "cifar":
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 3, 1, 1, bias=False), norm_layer(norm, 64, groups), nn.ReLU())
        else:
            self.stem = nn.Sequential(nn.Conv2d(channels, 64, 7, 2, 3, bias=False), norm_layer(norm, 64, groups), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
        stages, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            stages += [BasicBlock(c_in, c_out, stride, norm, groups), BasicBlock(c_out, c_out, 1, norm, groups)]
            c_in = c_out
        self.layers = nn.Sequential(*stages)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.layers(self.stem(x)))


class ConvNet(nn.Module):
    """The ConvNet of the gradient-inversion papers (Geiping et al., "Inverting Gradients", NeurIPS 2020,
    ``inversefed.nn.models.ConvNet``; also breaching's): eight 3x3 convolutions of width w, 2w, 2w, 4w,
    4w, 4w | max-pool 3 | 4w, 4w | max-pool 3, each followed by a norm and ReLU, then one linear layer.
    (The reference's module dict names ``conv6`` twice, so only eight of its nine listed convolutions
    exist; this is that network.) The reference's norm is BatchNorm (``norm=batch``, default); ``group``
    avoids running statistics. The linear layer's input is sized from ``input_shape`` (36w at 32x32)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 32, norm: str = "batch") -> None:
        require_image("convnet", input_shape)
        check_range("model.width", width, low=1, integer=True)
        check_choice("model.norm", norm, ("batch", "group", "none"))
        super().__init__()
        c, h, w = input_shape
        check_that("model", "convnet", h >= 9 and w >= 9, f"images of at least 9x9 (two 3x3 max-pools), got {h}x{w}")
        widths = (1, 2, 2, 4, 4, 4, "pool", 4, 4, "pool")
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        c_in, conv, pool = c, 0, 0
        for k in widths:
            if k == "pool":
                layers[f"pool{pool}"] = nn.MaxPool2d(3)
                h, w, pool = h // 3, w // 3, pool + 1
                continue
            layers[f"conv{conv}"] = nn.Conv2d(c_in, k * width, 3, padding=1)
            layers[f"bn{conv}"] = norm_layer(norm, k * width, groups=2)
            layers[f"relu{conv}"] = nn.ReLU()
            c_in, conv = k * width, conv + 1
        layers["flatten"] = nn.Flatten()
        layers["linear"] = nn.Linear(c_in * h * w, num_classes)
        self.model = nn.Sequential(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


VGG_LAYERS = {"vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")}


class VGG(nn.Module):
    """A VGG-style CNN (Simonyan and Zisserman, ICLR 2015; configuration A, VGG-11, by default): 3x3
    convolutions with ReLU in blocks separated by 2x2 max-pools (ceil mode, so 28x28 and 8x8 inputs
    work), optional GroupNorm after each convolution, global average pooling, then a linear classifier
    (the CIFAR variant's single 512 -> classes layer). ``layers`` may list another configuration
    (channel counts and "M" for a pool)."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, layers: Sequence[int | str] = VGG_LAYERS["vgg11"],
                 norm: str = "none") -> None:
        require_image("vgg", input_shape)
        check_that("model.layers", layers, len(layers) > 0 and all(x == "M" or (isinstance(x, int) and x >= 1) for x in layers)
                   and any(x != "M" for x in layers), 'a list of channel counts and "M" (max-pool), e.g. [64, M, 128, M]')
        check_choice("model.norm", norm, ("none", "group"))
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = input_shape[0]
        for x in layers:
            if x == "M":
                blocks.append(nn.MaxPool2d(2, ceil_mode=True))
            else:
                blocks += [nn.Conv2d(c_in, int(x), 3, padding=1), norm_layer(norm, int(x), groups=32), nn.ReLU()]
                c_in = int(x)
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
