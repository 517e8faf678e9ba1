"""Aggregation weights the server can trust: a cap on any one client's share.

The claimed example count is already refused above the client's true partition
(:func:`fedsim.engine.replies.count_problem`); ``max_weight_share`` additionally bounds how
much of the aggregate any single client can carry, however large its true partition.
"""

from __future__ import annotations

import dataclasses

from fedsim.strategy import ClientUpdate


def capped_counts(counts: list[float], max_share: float) -> list[float]:
    """The counts with the largest lowered to a common level t, chosen so that no count is
    more than ``max_share`` of the total (water-filling; the others are unchanged). When
    ``max_share`` is below 1/len(counts) no cap can hold and every count becomes the smallest."""
    total = sum(counts)
    if max(counts) <= max_share * total:
        return list(counts)
    if max_share * len(counts) <= 1:
        return [min(counts)] * len(counts)

    def share_at(level: float) -> float:  # the share of a client capped at ``level``; grows with it
        return level / sum(min(c, level) for c in counts)

    low, high = min(counts), max(counts)  # share_at(low) = 1/len <= max_share < share_at(high)
    for _ in range(100):
        middle = (low + high) / 2
        low, high = (middle, high) if share_at(middle) <= max_share else (low, middle)
    return [min(c, low) for c in counts]


def cap_weight_shares(updates: list[ClientUpdate], max_share: float | None) -> list[ClientUpdate]:
    """``updates`` with their example counts capped as :func:`capped_counts` says (copies; None: as they are)."""
    if max_share is None or not updates:
        return updates
    counts = capped_counts([float(u.num_examples) for u in updates], float(max_share))
    return [dataclasses.replace(u, num_examples=n) for u, n in zip(updates, counts)]
