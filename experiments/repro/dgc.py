"""Deep Gradient Compression at 99.9% sparsity vs uncompressed and plain top-k (FedSGD on digits).

Run: .venv/bin/python experiments/repro/dgc.py   (about 2-3 minutes on 2 CPU cores)
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, finish, plot, run  # noqa: E402

SEEDS = (0, 1, 2)
BASE = [
    "backend=inline", "dataset=digits", "model.hidden=[200]", "progress=false",
    "num_clients=4", "clients_per_round=4", "local_epochs=1", "batch_size=100000",  # one full-batch step per round
    "rounds=300", "lr=0.1",
]
SPARSE = ["compression=dgc", "compression.sparsity=0.999", "compression.min_dims=1"]
METHODS = {
    "none (FedSGD)": ["compression=none"],
    "dense momentum": ["compression=dgc", "compression.sparsity=0", "compression.momentum_masking=false"],
    "top-k": SPARSE + ["compression.momentum_correction=false", "compression.momentum_masking=false"],
    "DGC": SPARSE + ["compression.warmup_rounds=8", "compression.clip_norm=1"],
}


def main() -> None:
    results = {}
    for method, overrides in METHODS.items():
        runs = [run(f"dgc/{method.split()[0]}-{seed}", BASE + overrides + [f"seed={seed}"]) for seed in SEEDS]
        results[method] = {
            "acc": [r[-1]["test_acc"] for r in runs],
            "mb_up": statistics.mean(sum(rec["bytes_up"] for rec in r) for r in runs) / 1e6,
            "curve": [statistics.mean(r[i]["test_acc"] for r in runs) for i in range(len(runs[0]))],
        }
    dense_mb = results["none (FedSGD)"]["mb_up"]
    print(f"{'method':<16} {'final acc (mean of ' + str(len(SEEDS)) + ' seeds)':>30} {'uplink MB':>10} {'ratio':>8}")
    for method, r in results.items():
        accs = " ".join(f"{a:.3f}" for a in r["acc"])
        print(f"{method:<16} {statistics.mean(r['acc']):>8.4f} ({accs}) {r['mb_up']:>10.4f} {dense_mb / r['mb_up']:>8.1f}")
    plot(
        {f"{method} ({r['mb_up']:.3f} MB up)": r["curve"] for method, r in results.items()},
        "DGC at 99.9% sparsity, digits MLP, 4 clients", OUT / "dgc.png",
    )
    dgc, topk, dense = (statistics.mean(results[m]["acc"]) for m in ("DGC", "top-k", "dense momentum"))
    ratio = dense_mb / results["DGC"]["mb_up"]
    passed = dense - dgc <= 0.02 and ratio >= 100 and dgc - topk >= 0.01
    finish(
        passed,
        f"DGC at 99.9% sparsity {dgc:.4f} vs uncompressed momentum SGD {dense:.4f} (gap {100 * (dense - dgc):.2f} points, "
        f"<= 2 required), {ratio:.0f}x fewer uplink bytes (>= 100 required), plain top-k {topk:.4f} "
        f"({100 * (dgc - topk):.2f} points below DGC, >= 1 required)",
    )


if __name__ == "__main__":
    main()
