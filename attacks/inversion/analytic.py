"""Analytic inversion through a Linear layer: a weight-gradient row divided by its bias gradient is that layer's input.

For a Linear layer y = W a + b, dL/dW[i] = dL/db[i] * a for one example, so every unit i that one example
alone activates gives its input a = dW[i] / db[i] exactly (Phong et al., "Privacy-Preserving Deep Learning
via Additively Homomorphic Encryption", 2017; the first-layer leak of FedSGD). Over several local steps the
row is a weighted mean of that input's values across steps.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from fedsim.attacks.inversion.base import GradientInversion, InversionTarget, NotApplicable, total_variation
from fedsim.params import check_range
from fedsim.state import Tensors
from fedsim.strategies.hyperfl import HYPER_PREFIX, HyperModel


class AnalyticLinear(GradientInversion):
    """The analytic attack on the first Linear layer whose gradient the upload reveals, without an oracle.

    Candidate inputs are the ratios dW[i] / db[i] of every unit with a non-zero bias gradient. The rows
    of one image repeat (every unit that image alone activates gives it), rows mixing several images do
    not: the attacker takes the candidate most other rows agree with (cosine >= ``agreement``), drops
    its agreeing rows and repeats, once per image; no true image is used. If that layer reads the
    image itself (an MLP's first layer) the candidates are the images; if it reads features (a CNN's
    first fully connected layer), the images are found by matching the features of the layers before it
    (Adam ``feature_steps`` at ``feature_lr`` from random images, + ``tv_weight`` TV, pixel box).

    HyperFL's upload holds no layer gradient directly, but the bias of the hypernetwork head generating a
    tensor receives exactly that tensor's gradient, and its weight receives that gradient times the
    client's hidden code h: the attacker reads the gradients from the head biases, fits h by least
    squares (head weight change = bias change x h, + a weight-decay term along the head weights),
    removes the same weight-decay term from the bias changes, and generates the client's layers from
    h to match features through them.
    """

    def __init__(
        self, agreement: float = 0.99999, feature_steps: int = 300, feature_lr: float = 0.1, tv_weight: float = 1e-3,
        **observer: Any,
    ) -> None:
        super().__init__(**observer)
        check_range("privacy_attack.agreement", agreement, low=0, high=1)
        check_range("privacy_attack.feature_steps", feature_steps, low=1, integer=True)
        check_range("privacy_attack.feature_lr", feature_lr, low=0, low_open=True)
        check_range("privacy_attack.tv_weight", tv_weight, low=0)
        self.agreement, self.feature_steps, self.feature_lr, self.tv_weight = agreement, feature_steps, feature_lr, tv_weight

    def reconstruct(self, target: InversionTarget, labels: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        y = labels if labels is not None else target.infer_labels()
        net, grads, weights = read_upload(target.model, target.update)
        name, reads_image = first_revealed_linear(net, grads)
        rows = candidate_inputs(grads[f"{name}.weight"], grads[f"{name}.bias"])
        chosen = self.pick(rows, target.num_images)
        if reads_image:
            images = chosen.view(-1, *target.image_shape).clone()
            target.clamp_to_pixel_box(images)
        else:
            images = self.match_features(target, net, weights, name, chosen)
        return images, y

    def pick(self, rows: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` candidates, each the one most remaining rows agree with; its agreeing rows are then dropped."""
        unit = nn.functional.normalize(rows, dim=1)
        agree = (unit @ unit.T) >= self.agreement
        remaining = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
        picked = []
        for _ in range(count):
            if not remaining.any():
                remaining[:] = True  # fewer distinct inputs than images: repeat the best ones
            support = (agree & remaining[None, :]).sum(1).masked_fill(~remaining, -1)
            best = int(support.argmax())
            picked.append(rows[best])
            remaining &= ~agree[best]
        return torch.stack(picked)

    def match_features(self, target: InversionTarget, net: nn.Module, weights: Tensors, name: str, features: torch.Tensor) -> torch.Tensor:
        """Images whose input to layer ``name`` (the network holding ``weights``) matches ``features``."""
        layer = dict(net.named_modules())[name]
        captured: list[torch.Tensor] = []
        hook = layer.register_forward_pre_hook(lambda _, inputs: captured.append(inputs[0].flatten(1)))
        x = target.random_images().requires_grad_()
        optimizer = torch.optim.Adam([x], lr=self.feature_lr)
        scale = features.pow(2).sum(1) + 1e-12
        try:
            for _ in range(self.feature_steps):
                captured.clear()
                functional_call(net, weights, (x,))
                loss = ((captured[0] - features).pow(2).sum(1) / scale).sum() + self.tv_weight * total_variation(target.to_pixels(x))
                optimizer.zero_grad()
                loss.backward(inputs=[x])
                optimizer.step()
                with torch.no_grad():
                    target.clamp_to_pixel_box(x)
        finally:
            hook.remove()
        return x.detach()


def read_upload(model: nn.Module, update: Tensors) -> tuple[nn.Module, Tensors, Tensors]:
    """(network, its parameters' gradients up to a common scale per parameter, its parameters as the attacker
    estimates them) from the attack model and the upload: a plain model directly; a HyperFL model via the
    hypernetwork heads (see :class:`AnalyticLinear`)."""
    if not isinstance(model, HyperModel):
        return model, {k: -v for k, v in update.items()}, {k: p.detach() for k, p in model.named_parameters()}
    heads = model.hypernet.heads
    names = list(model.hypernet.shapes)
    change = {part: [update[f"{HYPER_PREFIX}heads.{j}.{part}"] for j in range(len(names))] for part in ("weight", "bias")}
    start = {part: [getattr(head, part).detach() for head in heads] for part in ("weight", "bias")}
    hidden, decay = hidden_code(torch.cat(change["weight"]), torch.cat(change["bias"]), torch.cat(start["weight"]))
    # the head biases' change is the generated tensors' (accumulated) gradient plus the same weight-decay term
    grads = {name: -(b - decay * b0).view(model.hypernet.shapes[name]) for name, b, b0 in zip(names, change["bias"], start["bias"])}
    with torch.no_grad():
        generated = {name: head(hidden).view(model.hypernet.shapes[name]) for name, head in zip(names, heads)}
    return model.target, grads, {**{k: p.detach() for k, p in model.target.named_parameters()}, **generated}


def hidden_code(weight_change: torch.Tensor, bias_change: torch.Tensor, weight: torch.Tensor, iterations: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Least-squares (h, c) of weight_change ~ bias_change h^T + c weight (alternating; each step exact): the
    hidden code and the weight-decay factor the heads' change carries (-lr x weight decay x momentum-summed steps)."""
    c = torch.zeros((), dtype=weight.dtype, device=weight.device)
    for _ in range(iterations):
        hidden = (weight_change - c * weight).T @ bias_change / (bias_change @ bias_change + 1e-30)
        c = ((weight_change - torch.outer(bias_change, hidden)) * weight).sum() / (weight.pow(2).sum() + 1e-30)
    return hidden.clamp(min=0), c  # the code is a ReLU output


def first_revealed_linear(net: nn.Module, grads: Tensors) -> tuple[str, bool]:
    """The first Linear layer (with a bias) whose gradients the upload reveals, and whether it reads the input itself."""
    seen_parameters = False
    for name, module in net.named_modules():
        own = [f"{name}.{p}" for p, _ in module.named_parameters(recurse=False)]
        if isinstance(module, nn.Linear) and module.bias is not None and all(k in grads for k in own):
            return name, not seen_parameters
        seen_parameters = seen_parameters or bool(own)
    raise NotApplicable("the upload reveals no Linear layer with a bias: the analytic attack does not apply")


def candidate_inputs(weight_grad: torch.Tensor, bias_grad: torch.Tensor) -> torch.Tensor:
    """dW[i] / db[i] for every unit whose bias gradient is not negligible."""
    live = bias_grad.abs() > 1e-8 * bias_grad.abs().max()
    return weight_grad[live] / bias_grad[live, None]
