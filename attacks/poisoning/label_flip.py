"""Label flipping: malicious clients train on relabelled data (targeted, multi-label or all labels)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fedsim.params import check_choice, check_range, check_that
from fedsim.attack import SelectedClientsAttack
from fedsim.evaluation import predictions


class FlipLabels(SelectedClientsAttack):
    """Shared machinery: relabel through a class mapping; score the global model by source-class
    recall and attack success rate (share of source-class test samples predicted as the mapped label)."""

    def __init__(self, fraction: float | None, count: int | None, mapping: dict[int, int], num_classes: int) -> None:
        super().__init__(fraction, count)
        check_range("attack.num_classes", num_classes, low=2, integer=True)
        for source, target in mapping.items():
            check_range("attack.source", source, 0, num_classes - 1, integer=True)
            check_range("attack.target", target, 0, num_classes - 1, integer=True)
            check_that("attack.target", target, source != target, f"a label other than the source {source}")
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
        check_choice("attack.mode", mode, ("targeted", "all"))
        if mode == "targeted":
            mapping = {source: target}
        else:
            mapping = {c: num_classes - 1 - c for c in range(num_classes) if c != num_classes - 1 - c}
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
        check_that("attack.sources", list(sources), len(sources) > 0, "a non-empty list of source labels")
        super().__init__(fraction, count, {int(s): target for s in sources}, num_classes)
