"""Scoring a defense's labels against the clients' true roles."""

from __future__ import annotations


def detection_scores(truly_malicious: list[bool], flagged: list[bool]) -> dict[str, float | int | None]:
    """Confusion counts, precision and recall of ``flagged`` against the truth (None where undefined)."""
    tp = sum(t and f for t, f in zip(truly_malicious, flagged))
    fp = sum(f and not t for t, f in zip(truly_malicious, flagged))
    fn = sum(t and not f for t, f in zip(truly_malicious, flagged))
    return {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }
