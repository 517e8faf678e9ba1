"""The run's own task metrics, read from its round records, for summary.json and the final line.

A metric appears only when the run recorded it: attack success and source recall (poisoning attacks,
also per component of a mixed attack), detection precision / recall over all rounds and the share of
each attacker kind flagged (defenses), the privacy observer's PSNR / SSIM / label accuracy, the largest
DP epsilon any client reached, and the uplink compression ratio.
"""

from __future__ import annotations

from typing import Any

Rounds = list[dict[str, Any]]
ATTACK_KEYS = ("attack_success_rate", "source_recall")
PRIVACY_KEYS = ("psnr", "ssim", "label_acc")


def recorded(rounds: Rounds, key: str) -> list[Any]:
    """The non-null values of ``key`` (a dotted path into the round record, e.g. ``privacy.psnr``), in round order."""
    values = []
    for record in rounds:
        value: Any = record
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is not None:
            values.append(value)
    return values


def mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def precision_recall(tp: int, fp: int, fn: int) -> dict[str, float | None]:
    """Precision and recall from confusion counts (None where undefined)."""
    return {"precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None}


def cumulative_detection(rounds: Rounds) -> dict[str, float | None] | None:
    """Precision and recall of the malicious verdicts over all rounds (summed tp / fp / fn); None without detection."""
    scored = [r["detection"] for r in rounds if isinstance(r.get("detection"), dict)]
    if not scored:
        return None
    return precision_recall(*(sum(d.get(k, 0) for d in scored) for k in ("tp", "fp", "fn")))


def flagged_by_kind(rounds: Rounds) -> dict[str, float]:
    """Each true client kind's share of rounds in which it was flagged (over all rounds it took part in)."""
    clients: dict[str, int] = {}
    flagged: dict[str, float] = {}
    for record in rounds:
        for kind, row in ((record.get("detection") or {}).get("by_kind") or {}).items():
            clients[kind] = clients.get(kind, 0) + int(row.get("clients", 0))
            flagged[kind] = flagged.get(kind, 0.0) + float(row.get("flagged", 0))
    return {kind: flagged[kind] / n for kind, n in clients.items() if n}


def task_metrics(rounds: Rounds) -> dict[str, Any]:
    """The summary fields this run's components produced (see the module docstring)."""
    out: dict[str, Any] = {}
    last = rounds[-1] if rounds else {}
    for key, value in last.items():
        if key.endswith(ATTACK_KEYS) and isinstance(value, (int, float)):
            out[key] = value
    detection = cumulative_detection(rounds)
    if detection is not None and (detection["precision"] is not None or detection["recall"] is not None):  # someone to score
        out["detection"] = {**detection, "flagged_share_by_kind": flagged_by_kind(rounds)}
    privacy = {k: mean(recorded(rounds, f"privacy.{k}")) for k in PRIVACY_KEYS}
    if any(v is not None for v in privacy.values()):
        out["privacy"] = {k: v for k, v in privacy.items() if v is not None}
    epsilons = [c["dp_epsilon"] for r in rounds for c in (r.get("clients") or {}).values() if c.get("dp_epsilon") is not None]
    if epsilons:
        out["dp_epsilon"] = max(epsilons)
    sent = [(c["bytes_up"], c["compression_ratio"]) for r in rounds for c in (r.get("clients") or {}).values()
            if c.get("bytes_up") and c.get("compression_ratio")]
    if sent:
        out["compression_ratio"] = sum(b * ratio for b, ratio in sent) / sum(b for b, _ in sent)
    return out


def headline(summary: dict[str, Any]) -> str:
    """The task metrics as a short phrase for the run's final line ('' when there are none)."""
    parts = [f"{key} {summary[key]:.3f}" for key in summary if key.endswith(ATTACK_KEYS)]
    detection = summary.get("detection")
    if detection:
        shown = {k: "n/a" if detection[k] is None else f"{detection[k]:.2f}" for k in ("precision", "recall")}
        parts.append(f"detection P {shown['precision']} R {shown['recall']}")
    privacy = summary.get("privacy") or {}
    if "psnr" in privacy:
        parts.append(f"PSNR {privacy['psnr']:.1f} dB")
    if "dp_epsilon" in summary:
        parts.append(f"epsilon {summary['dp_epsilon']:.2f}")
    ratio = summary.get("compression_ratio")
    if ratio is not None and abs(ratio - 1.0) > 1e-9:
        parts.append(f"uplink compressed {ratio:.0f}x")
    return "; ".join(parts)
