"""Scoring a defense's labels against the clients' true roles and attack types."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fedsim.attack import BENIGN, MALICIOUS, UNRELIABLE
from fedsim.run_summary import precision_recall


def believed_role(label: str) -> str:
    """The role a defense label claims: benign, unreliable, or malicious (any other label
    names a suspected attack type, e.g. "sign_flip")."""
    return label if label in (BENIGN, UNRELIABLE) else MALICIOUS


def binary_scores(truth: list[bool], flagged: list[bool]) -> dict[str, float | int | None]:
    """Confusion counts, precision and recall of ``flagged`` against ``truth`` (None where undefined)."""
    tp = sum(t and f for t, f in zip(truth, flagged))
    fp = sum(f and not t for t, f in zip(truth, flagged))
    fn = sum(t and not f for t, f in zip(truth, flagged))
    return {"tp": tp, "fp": fp, "fn": fn, **precision_recall(tp, fp, fn)}


def detection_scores(true_roles: list[str], true_kinds: list[str], labels: list[str]) -> dict[str, Any]:
    """A round's detection record.

    Top level: malicious-vs-rest counts, precision and recall. ``unreliable``: the same
    for the unreliable role. ``by_kind``: per true attack type, how many clients and the
    share the defense labelled other than benign. ``confusion``: true type -> defense
    label -> count, from which per-type precision follows for defenses with finer labels.
    """
    roles = [believed_role(label) for label in labels]
    by_kind: dict[str, dict[str, float | int]] = {}
    for kind in sorted(set(true_kinds)):
        idx = [i for i, k in enumerate(true_kinds) if k == kind]
        flagged = sum(roles[i] != BENIGN for i in idx)
        by_kind[kind] = {"clients": len(idx), "flagged": flagged, "flagged_share": flagged / len(idx)}
    confusion = {
        kind: dict(Counter(label for k, label in zip(true_kinds, labels) if k == kind)) for kind in sorted(set(true_kinds))
    }
    return {
        **binary_scores([r == MALICIOUS for r in true_roles], [r == MALICIOUS for r in roles]),
        "unreliable": binary_scores([r == UNRELIABLE for r in true_roles], [r == UNRELIABLE for r in roles]),
        "by_kind": by_kind,
        "confusion": confusion,
    }
