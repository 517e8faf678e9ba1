"""curves.png: one panel per metric family the run recorded, titled with the run's overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

from fedsim.run_summary import ATTACK_KEYS, recorded

Rounds = list[dict[str, Any]]


def series(rounds: Rounds, read: Callable[[dict[str, Any]], Any]) -> tuple[list[int], list[float]]:
    """(round numbers, values) of the rounds where ``read`` finds a number."""
    points = [(r["round"], v) for r in rounds if isinstance(v := read(r), (int, float)) and not isinstance(v, bool)]
    return [p[0] for p in points], [float(p[1]) for p in points]


def field(path: str) -> Callable[[dict[str, Any]], Any]:
    return lambda record: (recorded([record], path) or [None])[0]


def max_client(key: str) -> Callable[[dict[str, Any]], Any]:
    def read(record: dict[str, Any]) -> Any:
        values = [c[key] for c in (record.get("clients") or {}).values() if isinstance(c.get(key), (int, float))]
        return max(values) if values else None

    return read


def panels(rounds: Rounds) -> list[tuple[str, str, dict[str, tuple[list[int], list[float]]]]]:
    """(title, y label, named curves) for every family with data: accuracy, loss, attack, detection, privacy, DP."""
    last = rounds[-1] if rounds else {}
    families = [
        ("Test accuracy", "accuracy", {"test": series(rounds, field("test_acc"))}),
        ("Loss", "cross-entropy", {"test": series(rounds, field("test_loss")), "train (clients)": series(rounds, field("train_loss"))}),
        ("Attack", "rate", {k: series(rounds, field(k)) for k in last if k.endswith(ATTACK_KEYS)}),
        ("Detection (malicious)", "score", {k: series(rounds, field(f"detection.{k}")) for k in ("precision", "recall")}),
        ("Privacy attack", "PSNR (dB)", {"PSNR": series(rounds, field("privacy.psnr"))}),
        ("Differential privacy", "epsilon (largest client)", {"epsilon": series(rounds, max_client("dp_epsilon"))}),
    ]
    return [(title, label, {k: v for k, v in curves.items() if v[0]}) for title, label, curves in families
            if any(points[0] for points in curves.values())]


def run_title(out_dir: Path) -> str:
    """The run's Hydra overrides (its .hydra/overrides.yaml), or the folder name when there are none."""
    path = out_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(path.read_text()) if path.exists() else None
    return " ".join(str(o) for o in overrides) if overrides else out_dir.name


def plot_curves(rounds: Rounds, path: Path) -> None:
    """Write the panels of :func:`panels` side by side, integer round ticks, titled with :func:`run_title`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    shown = panels(rounds)
    fig, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 4), squeeze=False)
    for ax, (title, label, curves) in zip(axes[0], shown):
        for name, (x, y) in curves.items():
            ax.plot(x, y, marker="o", markersize=3, label=name)
        ax.set(xlabel="round", ylabel=label, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(curves) > 1:
            ax.legend()
    fig.suptitle(run_title(path.parent), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
