"""One-byte SPSA, the paper's protocol (strategy=one_byte_spsa) vs the same protocol with float32
projected gradients vs FedAvg: accuracy, loss and total wire bytes (up + down), 3 seeds.

Setting (scaled to ~2 minutes on 2 cores): digits, MLP [64] (4,810 parameters), 4 clients, all per
round, 300 rounds; each client sends 4 projected gradients a round; lr 0.01 for the zeroth-order
protocol (0.02 diverged in a pilot on seed 0), 0.05 for FedAvg (1 local epoch, batch 32).

Gate, fixed before the first run: (1) one-byte's final accuracy (mean of the last 10 rounds, then
over seeds) within 1 point of float32's; (2) FedAvg's total bytes (up + down) >= 1,000x one-byte's;
(3) one-byte's test loss falls on every seed (last round below round 1).

Run: .venv/bin/python experiments/repro/spsa.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, finish, mean_last, plot, print_table, run  # noqa: E402

SEEDS = (0, 1, 2)
BASE = ["dataset=digits", "model.hidden=[64]", "num_clients=4", "clients_per_round=4", "rounds=300"]
METHODS = {
    "one-byte SPSA": ["strategy=one_byte_spsa", "lr=0.01"],
    "float32 SPSA": ["strategy=one_byte_spsa", "strategy.code=float32", "lr=0.01"],
    "FedAvg": ["lr=0.05"],
}
ACC_GAP, BYTES_RATIO = 0.01, 1000


def main() -> None:
    runs = {m: [run(f"spsa/{m.split()[0]}-{seed}", BASE + o + [f"seed={seed}"]) for seed in SEEDS] for m, o in METHODS.items()}
    rows, acc, total = [], {}, {}
    for method, records in runs.items():
        finals = [mean_last(r, "test_acc", 10) for r in records]
        acc[method] = statistics.mean(finals)
        up = statistics.mean(sum(x["bytes_up"] for x in r) for r in records)
        down = statistics.mean(sum(x["bytes_down"] for x in r) for r in records)
        total[method] = up + down
        losses = " ".join(f"{r[0]['test_loss']:.2f}->{r[-1]['test_loss']:.2f}" for r in records)
        rows.append([method, f"{acc[method]:.3f} +- {statistics.stdev(finals):.3f}", losses, f"{up:,.0f}", f"{down:,.0f}", f"{up + down:,.0f}"])
    print_table(["method", "final acc (last 10 rounds, 3 seeds)", "test loss round 1 -> 300 per seed", "bytes up", "bytes down", "total"], rows)
    one = runs["one-byte SPSA"]
    per_step = one[0][-1]["bytes_up"] / (4 * 4)
    print(f"one-byte: {per_step:.2f} byte per projected gradient up; per round down "
          f"{one[0][-1]['bytes_down']:,} B (the round's 16 bytes relayed to 4 clients + a 1-byte participant mask each); "
          f"FedAvg {runs['FedAvg'][0][-1]['bytes_up'] + runs['FedAvg'][0][-1]['bytes_down']:,} B per round")
    plot({m: [statistics.mean(r[i]["test_loss"] for r in records) for i in range(len(records[0]))] for m, records in runs.items()},
         "One-byte SPSA protocol vs float32 vs FedAvg, digits MLP[64], 4 clients (mean of 3 seeds)", OUT / "spsa.png",
         ylabel="test cross-entropy")
    gap = acc["float32 SPSA"] - acc["one-byte SPSA"]
    ratio = total["FedAvg"] / total["one-byte SPSA"]
    falls = all(r[-1]["test_loss"] < r[0]["test_loss"] for r in one)
    finish(
        abs(gap) <= ACC_GAP and ratio >= BYTES_RATIO and falls,
        f"one-byte final accuracy {acc['one-byte SPSA']:.3f} vs float32 {acc['float32 SPSA']:.3f} (gap {100 * gap:+.1f} points, "
        f"|gap| <= {100 * ACC_GAP:.0f} required; FedAvg {acc['FedAvg']:.3f}); total bytes {ratio:,.0f}x below FedAvg's "
        f"(>= {BYTES_RATIO:,} required); test loss falls on every seed: {falls}",
    )


if __name__ == "__main__":
    main()
