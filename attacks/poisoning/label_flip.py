"""Label flipping: malicious clients train on relabelled data (targeted, multi-label or all labels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedsim.attack import SelectedClientsAttack
from fedsim.evaluation import predictions


class FlipLabels(SelectedClientsAttack):
    """Shared machinery: relabel through a class mapping; score the global model by source-class
    recall and attack success rate (share of source-class test samples predicted as the mapped label)."""

    def __init__(self, fraction: float | None, count: int | None, mapping: dict[int, int], num_classes: int) -> None:
        super().__init__(fraction, count)
        if num_classes < 2:
            raise ValueError(f"attack.num_classes={num_classes}: must be >= 2")
        for source, target in mapping.items():
            if not (0 <= source < num_classes and 0 <= target < num_classes):
                raise ValueError(f"attack: label {source} -> {target} is outside 0..{num_classes - 1}")
            if source == target:
                raise ValueError(f"attack: source and target label are both {source}")
        self.num_classes = num_classes
        self.lookup = torch.arange(num_classes)
        for source, target in mapping.items():
            self.lookup[source] = target
        self.sources = torch.tensor(sorted(mapping))

    def poison_data(
        self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return x, self.lookup.to(y.device)[y]

    def test_metrics(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        attacked = torch.isin(y, self.sources.to(y.device))
        if not attacked.any():
            return {}
        pred, truth = predictions(model, x[attacked]), y[attacked]
        return {
            "source_recall": float((pred == truth).float().mean()),
            "attack_success_rate": float((pred == self.lookup.to(y.device)[truth]).float().mean()),
        }


class LabelFlip(FlipLabels):
    """Label flipping as MUD-HoG defines it (Nguyen et al., ESORICS 2022): ``source`` -> ``target``
    (1 -> 7 in the paper). ``mode=all`` instead permutes every label y -> num_classes - 1 - y."""

    name = "label_flip"

    def __init__(
        self,
        fraction: float | None = None,
        count: int | None = None,
        source: int = 1,
        target: int = 7,
        mode: str = "targeted",
        num_classes: int = 10,
    ) -> None:
        if mode == "targeted":
            mapping = {source: target}
        elif mode == "all":
            mapping = {c: num_classes - 1 - c for c in range(num_classes) if c != num_classes - 1 - c}
        else:
            raise ValueError(f"attack.mode={mode!r}: must be 'targeted' or 'all'")
        super().__init__(fraction, count, mapping, num_classes)


class MultiLabelFlip(FlipLabels):
    """Multi-label flipping as MUD-HoG defines it (Nguyen et al., ESORICS 2022): every label in
    ``sources`` ({1, 2, 3} in the paper) becomes ``target`` (7)."""

    name = "multi_label_flip"

    def __init__(
        self,
        fraction: float | None = None,
        count: int | None = None,
        sources: Sequence[int] = (1, 2, 3),
        target: int = 7,
        num_classes: int = 10,
    ) -> None:
        if not sources:
            raise ValueError("attack.sources=[]: name at least one source label")
        super().__init__(fraction, count, {int(s): target for s in sources}, num_classes)
