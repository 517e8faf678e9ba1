"""FedSpeed vs FedAvg (and FedProx) under strong label skew: rounds to a target accuracy and final accuracy.

Setting (small-scale version of Sun et al., ICLR 2023): sklearn digits, MLP, 20 clients with
Dirichlet(0.1) labels, 10 sampled per round, 5 local epochs of batch 50 (many local steps),
local lr 0.1, 30 rounds, seeds 0-2. Run: .venv/bin/python experiments/repro/fedspeed.py
"""

from __future__ import annotations

import statistics

from common import OUT, plot, run, finish

TARGET, ROUNDS, SEEDS, LAST = 0.90, 30, (0, 1, 2), 5
STRATEGIES = ("fedavg", "fedprox", "fedspeed")
SETTING = ("dataset=digits", "partition=dirichlet", "partition.alpha=0.1", "num_clients=20", "clients_per_round=10",
           "local_epochs=5", "batch_size=50", "lr=0.1", f"rounds={ROUNDS}")


def rounds_to(accs: list[float], target: float) -> int:
    """First round reaching ``target`` (ROUNDS + 1 if never)."""
    return next((i + 1 for i, a in enumerate(accs) if a >= target), ROUNDS + 1)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def main() -> None:
    curves = {s: [[r["test_acc"] for r in run(f"fedspeed/{s}_seed{seed}", [f"strategy={s}", f"seed={seed}", *SETTING])] for seed in SEEDS] for s in STRATEGIES}
    reach = {s: [rounds_to(c, TARGET) for c in curves[s]] for s in STRATEGIES}
    final = {s: [statistics.mean(c[-LAST:]) for c in curves[s]] for s in STRATEGIES}
    print(f"\nDigits MLP, 20 clients Dir(0.1), 10/round, 5 local epochs, {ROUNDS} rounds, seeds {SEEDS}")
    print(f"| strategy | rounds to {TARGET:.0%} (per seed) | rounds to {TARGET:.0%} | last-{LAST}-round acc |")
    print("|---|---|---|---|")
    for s in STRATEGIES:
        print(f"| {s} | {reach[s]} | {mean_std(reach[s])} | {mean_std(final[s])} |")
    plot({f"{s} seed {seed}": c for s in STRATEGIES for seed, c in zip(SEEDS, curves[s])},
         "FedSpeed vs FedAvg/FedProx, digits Dir(0.1)", OUT / "fedspeed.png")
    faster = statistics.mean(reach["fedavg"]) - statistics.mean(reach["fedspeed"])
    gain = [a - b for a, b in zip(final["fedspeed"], final["fedavg"])]
    finish(
        faster > 0 and all(g > 0 for g in gain),
        f"FedSpeed reaches {TARGET:.0%} {faster:.1f} rounds sooner than FedAvg on average "
        f"({statistics.mean(reach['fedspeed']):.1f} vs {statistics.mean(reach['fedavg']):.1f}) and its last-{LAST}-round "
        f"accuracy is higher on every seed (by {min(gain):+.3f} to {max(gain):+.3f})",
    )


if __name__ == "__main__":
    main()
