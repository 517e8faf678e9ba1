"""Deep Gradient Compression, technique by technique, on minibatch FedSGD with 8 workers.

Variants (Lin et al., ICLR 2018, Table/Figure ablation order), all with the same warm-up (20 rounds of
exponentially rising sparsity) and the same per-tensor local clipping (clip_norm 1, scaled by 8^-1/2):
  dense momentum SGD   no compression (momentum in the client's accumulator, density 1);
  Gradient Dropping    top-0.1% + residual accumulation, momentum on the server (FedAvgM);
  + momentum correction  the client accumulates velocities, not gradients;
  + momentum masking   = DGC (momentum zeroed where values were sent).
Biases (1-D tensors) go dense, as the reference does. MNIST-5k, MLP [200], 8 clients of 500 images,
one mini-batch of 32 per client per round (local_steps=1), lr 0.1, 400 rounds, 3 seeds.

Gate, fixed before the first run: DGC's final accuracy (mean of the last 10 rounds, then over seeds)
within 1 point of dense momentum SGD's, at >= 100x fewer uplink bytes; DGC >= Gradient Dropping - 0.5
points. Each technique's mean +- std is reported, and so is an ordering that differs from the paper's.

Run: .venv/bin/python experiments/repro/dgc.py   (about 5 minutes on 2 CPU cores)
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, finish, mean_last, plot, print_table, run  # noqa: E402

SEEDS = (0, 1, 2)
BASE = ["num_clients=8", "clients_per_round=8", "batch_size=32", "local_steps=1", "rounds=400", "lr=0.1",
        "compression=dgc", "compression.clip_norm=1", "compression.warmup_rounds=20"]
SPARSE = ["compression.sparsity=0.999"]
METHODS = {
    "dense momentum SGD": ["compression.sparsity=0", "compression.momentum_masking=false"],
    "Gradient Dropping": SPARSE + ["compression.momentum_correction=false", "compression.momentum_masking=false",
                                   "strategy=fedavgm", "strategy.server_momentum=0.9"],
    "+ momentum correction": SPARSE + ["compression.momentum_masking=false"],
    "+ momentum masking (DGC)": SPARSE,
}
DENSE_GAP, BYTES_RATIO, DROPPING_MARGIN = 0.01, 100, 0.005
WARMUP = 20


def main() -> None:
    results = {}
    for method, overrides in METHODS.items():
        runs = [run(f"dgc/{method.split()[-1].strip('()')}-{seed}", BASE + overrides + [f"seed={seed}"]) for seed in SEEDS]
        finals = [mean_last(r, "test_acc", 10) for r in runs]
        results[method] = {
            "acc": statistics.mean(finals), "std": statistics.stdev(finals), "finals": finals,
            "up": statistics.mean(sum(rec["bytes_up"] for rec in r) for r in runs),
            "up_after_warmup": statistics.mean(sum(rec["bytes_up"] for rec in r[WARMUP:]) for r in runs),
            "curve": [statistics.mean(r[i]["test_acc"] for r in runs) for i in range(len(runs[0]))],
        }
    dense = results["dense momentum SGD"]
    print_table(
        ["method", "final acc (last 10 rounds) mean +- std", "per seed", "uplink MB", "fewer bytes than dense",
         "after the warm-up"],
        [[m, f"{r['acc']:.4f} +- {r['std']:.4f}", " ".join(f"{a:.3f}" for a in r["finals"]), f"{r['up'] / 1e6:.3f}",
          f"{dense['up'] / r['up']:.1f}x", f"{dense['up_after_warmup'] / r['up_after_warmup']:.1f}x"] for m, r in results.items()],
    )
    plot({f"{m} ({r['up'] / 1e6:.2f} MB up)": r["curve"] for m, r in results.items()},
         "DGC ablation, MNIST-5k MLP, 8 workers, minibatch FedSGD (mean of 3 seeds)", OUT / "dgc.png")
    dgc, dropping = results["+ momentum masking (DGC)"], results["Gradient Dropping"]
    order = sorted(results, key=lambda m: results[m]["acc"], reverse=True)
    paper_order = ["dense momentum SGD", "+ momentum masking (DGC)", "+ momentum correction", "Gradient Dropping"]
    print(f"accuracy order: {' > '.join(order)}" + ("" if order == paper_order else f" (the paper's: {' > '.join(paper_order)})"))
    ratio = dense["up"] / dgc["up"]
    finish(
        dense["acc"] - dgc["acc"] <= DENSE_GAP and ratio >= BYTES_RATIO and dgc["acc"] >= dropping["acc"] - DROPPING_MARGIN,
        f"DGC {dgc['acc']:.4f} vs dense momentum SGD {dense['acc']:.4f} (gap {100 * (dense['acc'] - dgc['acc']):.2f} points, "
        f"<= {100 * DENSE_GAP:.0f} required) at {ratio:.0f}x fewer uplink bytes (>= {BYTES_RATIO} required); "
        f"Gradient Dropping {dropping['acc']:.4f} (DGC - GD {100 * (dgc['acc'] - dropping['acc']):+.2f} points, "
        f">= {-100 * DROPPING_MARGIN:.1f} required)",
    )


if __name__ == "__main__":
    main()
