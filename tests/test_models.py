"""The paper models (ResNet-18-GN, the inversion ConvNet, VGG-11): shapes, parameter counts, a training
step, bad settings in one line, and BatchNorm's running statistics averaged through a real run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import make_config
from fedsim.engine.simulation import simulate
from fedsim.models import VGG, ConvNet, ResNet18
from fedsim.params import ParamError

# Reference counts at 3 x 32 x 32, 10 classes: CIFAR ResNet-18 (GroupNorm has BatchNorm's affine
# parameters) is the well-known 11,173,962; VGG-11 without BatchNorm is the usual 9,231,114 minus
# BatchNorm's 5,504; the ConvNet's 733,642 is its 8 convolutions, 8 norms and the 36w -> 10 layer at w = 32.
COUNTS = {ResNet18: 11_173_962, VGG: 9_225_610, ConvNet: 733_642}


@pytest.mark.parametrize("model", [ResNet18, ConvNet, VGG], ids=lambda m: m.__name__)
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)], ids=["rgb32", "gray28"])
def test_output_shape_parameter_count_and_one_training_step(model, shape) -> None:
    torch.manual_seed(0)
    net = model(shape, 10)
    first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    expected = COUNTS[model] - (3 - shape[0]) * first_conv.out_channels * first_conv.kernel_size[0] * first_conv.kernel_size[1]
    assert sum(p.numel() for p in net.parameters()) == expected
    x, y = torch.randn(4, *shape), torch.tensor([0, 1, 2, 3])
    assert net(x).shape == (4, 10)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    loss = torch.nn.functional.cross_entropy(net(x), y)
    loss.backward()
    torch.optim.SGD(net.parameters(), lr=0.1).step()
    assert torch.isfinite(loss) and all(not torch.equal(before[n], p) for n, p in net.named_parameters() if p.grad is not None)


def test_resnet18_imagenet_stem_and_batchnorm_variant() -> None:
    net = ResNet18((3, 64, 64), 100, stem="imagenet", norm="batch")
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 100)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in ResNet18((3, 32, 32), 10).modules())  # GroupNorm by default


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ResNet18((3, 32, 32), 10, stem="tiny"), "model.stem='tiny': must be one of cifar, imagenet"),
        (lambda: ConvNet((1, 8, 8), 10), "model='convnet': must be images of at least 9x9"),
        (lambda: VGG((3, 32, 32), 10, layers=["M"]), "model.layers="),
        (lambda: VGG((64,), 10), "model='vgg': must be a model for this dataset's inputs"),
    ],
)
def test_bad_model_settings_are_one_line(build, message: str) -> None:
    with pytest.raises(ParamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_batchnorm_running_statistics_reach_the_global_model(tmp_path: Path) -> None:
    """Training updates BatchNorm's running statistics in place; the client's delta carries them and the
    server averages them like the weights (before, they stayed at their initial 0 / 1 forever)."""
    cfg = make_config("dataset=mnist5k", "model=convnet", "model.width=4", "rounds=1", "num_clients=50",
                      "clients_per_round=2", "checkpoint_every=1")
    simulate(cfg, tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoints" / "round_000001.pt", weights_only=True)["global_state"]
    mean, var = state["model.bn0.running_mean"], state["model.bn0.running_var"]
    assert torch.isfinite(mean).all() and bool((mean != 0).all()) and bool((var != 1).all())
