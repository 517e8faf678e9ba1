"""Model evaluation on a labelled split."""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y)."""
    model.eval()
    correct, loss = 0, 0.0
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        loss += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return {"test_acc": correct / len(y), "test_loss": loss / len(y)}


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    """The predicted class of every sample in ``x``."""
    model.eval()
    return torch.cat([model(x[start : start + batch_size]).argmax(1) for start in range(0, len(x), batch_size)])


@torch.no_grad()
def evaluate_for_labels(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, label_counts: torch.Tensor, batch_size: int = 1024
) -> dict[str, float]:
    """Accuracy and mean cross-entropy of ``model`` on (x, y) re-weighted to the label distribution ``label_counts``.

    Each class's test accuracy and loss count with that class's share of ``label_counts``
    (e.g. a client's training labels): the score of the model on test data distributed
    like the client's own, the usual personalised metric. Classes absent from (x, y) are
    dropped and the shares renormalised.
    """
    model.eval()
    correct, losses = [], []
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        target = y[start : start + batch_size]
        correct.append((logits.argmax(1) == target).float())
        losses.append(nn.functional.cross_entropy(logits, target, reduction="none"))
    correct_all, loss_all = torch.cat(correct), torch.cat(losses)
    classes = len(label_counts)
    present = torch.bincount(y, minlength=classes)[:classes].float()
    weights = label_counts.float().to(present.device) * (present > 0)
    if weights.sum() <= 0:
        raise ValueError("label_counts puts no weight on a class present in the test data")
    weights = weights / weights.sum()

    def per_class(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(classes, device=y.device).index_add_(0, y, values) / present.clamp(min=1)

    return {
        "test_acc": float((weights * per_class(correct_all)).sum()),
        "test_loss": float((weights * per_class(loss_all)).sum()),
    }
