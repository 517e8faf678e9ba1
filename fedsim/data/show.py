"""``python -m fedsim.data.show [overrides]``: the per-client label distribution of a partition.

Takes the same overrides as ``python -m fedsim`` (dataset, partition, num_clients, seed...), builds the
partition exactly as a run would, and writes ``label_distribution.png`` (a stacked bar per client,
the figure FL papers show for their splits) and ``label_distribution.csv`` (clients x classes counts)
into ``--out`` (default: the current folder). Nothing is trained.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.engine.context import RunContext


def label_counts(labels: np.ndarray, partitions: tuple[np.ndarray, ...], num_classes: int) -> np.ndarray:
    """(clients, classes) example counts."""
    return np.stack([np.bincount(labels[p], minlength=num_classes) for p in partitions])


def plot(counts: np.ndarray, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    clients, classes = counts.shape
    fig, ax = plt.subplots(figsize=(min(3 + 0.25 * clients, 24), 4))
    bottom = np.zeros(clients)
    colours = plt.get_cmap("tab20" if classes > 10 else "tab10")
    for c in range(classes):
        ax.bar(range(clients), counts[:, c], bottom=bottom, color=colours(c % colours.N), label=str(c) if classes <= 20 else None)
        bottom += counts[:, c]
    ax.set(xlabel="client", ylabel="examples", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if classes <= 20:
        ax.legend(title="label", fontsize=7, ncol=2, bbox_to_anchor=(1.01, 1), loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedsim.data.show", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="fedsim overrides, e.g. partition=dirichlet partition.alpha=0.1")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder for label_distribution.png/.csv")
    args = parser.parse_args(argv)
    try:
        with initialize_config_module(config_module="fedsim.conf", version_base=None):
            cfg = OmegaConf.to_container(compose(config_name="config", overrides=args.overrides), resolve=True)
        ctx = RunContext.from_config(cfg)
    except Exception as exc:  # a bad override or dataset: one line, as the main CLI does
        print(f"fedsim.data.show: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    counts = label_counts(ctx.data.y_train, ctx.partitions, int(ctx.data.num_classes))
    args.out.mkdir(parents=True, exist_ok=True)
    header = "client," + ",".join(f"label_{c}" for c in range(counts.shape[1]))
    np.savetxt(args.out / "label_distribution.csv", np.column_stack([np.arange(len(counts)), counts]), fmt="%d",
               delimiter=",", header=header, comments="")
    title = " ".join(args.overrides) or "default partition"
    plot(counts, f"{cfg['dataset']['_target_'].rsplit('.', 1)[-1]}: {title}", args.out / "label_distribution.png")
    print(f"{len(counts)} clients, {int(counts.sum())} examples; sizes min {counts.sum(1).min()} / max {counts.sum(1).max()}; "
          f"distinct labels per client min {int((counts > 0).sum(1).min())} / max {int((counts > 0).sum(1).max())}; "
          f"wrote {args.out / 'label_distribution.png'} and .csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
