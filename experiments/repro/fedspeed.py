"""FedSpeed and the baselines of its paper at the paper's participation (Sun et al., ICLR 2023, Table 2).

Setting (the paper's federation, scaled to CPU): 100 clients, 10 sampled per round, Dirichlet(0.1) and
(0.6) label skew, 5 local epochs of batch 50, local lr 0.1, SGD with weight decay 1e-3 and clipping at
10 for every method (the reference's settings), 100 rounds, seeds 0-2, on the embedded MNIST-5k
(50 images per client) with the default MLP (the paper: CIFAR-10, ResNet-18-GN, 1000 rounds). The
local lr does not decay here (lr_decay=1 for FedDyn and FedSpeed too), so every method runs the same
schedule. Methods: FedAvg, FedProx (mu 0.01), SCAFFOLD, FedDyn (lamb 0.1), FedAdam (server lr 0.01),
FedSAM (rho 0.1), FedSpeed (rho 0.1, lamb 0.1), and two ablations of FedSpeed (DESIGN's pitfalls):
without the server's +mean(h), and with the local correction's sign flipped.

Gate, fixed before the first run at this setting: on every seed and at both alphas, FedSpeed reaches
80% test accuracy in at most 1/1.5 of FedAvg's rounds (a method that never reaches it counts as 101);
and at both alphas each ablation's final accuracy (mean of the last 5 rounds, mean over seeds) is
below FedSpeed's. (Rounds to 92% are printed too, not gated: that column was added after the first
run, which showed every method reaching 80% within about 10 rounds.)

Run: .venv/bin/python experiments/repro/fedspeed.py   (about 8 minutes on 2 CPU cores: 2 runs at a time)
"""

from __future__ import annotations

import statistics

from common import OUT, finish, plot, print_table, run_many

TARGET, ROUNDS, SEEDS, LAST, SPEEDUP = 0.80, 100, (0, 1, 2), 5, 1.5
HIGH = 0.92  # reported, not gated: added after the first run showed every method reaching 80% within ~10 rounds
ALPHAS = (0.1, 0.6)
SETTING = ["dataset=mnist5k", "partition=dirichlet", "num_clients=100", "clients_per_round=10", "local_epochs=5",
           "batch_size=50", "lr=0.1", f"rounds={ROUNDS}", "optimizer.weight_decay=1e-3", "optimizer.grad_clip=10"]
NO_DECAY = ["strategy.lr_decay=1.0"]
METHODS = {  # label -> (run folder, overrides)
    "FedAvg": ("fedavg", ["strategy=fedavg"]),
    "FedProx": ("fedprox", ["strategy=fedprox"]),
    "SCAFFOLD": ("scaffold", ["strategy=scaffold"]),
    "FedDyn": ("feddyn", ["strategy=feddyn", *NO_DECAY]),
    "FedAdam": ("fedadam", ["strategy=fedadam"]),
    "FedSAM": ("fedsam", ["strategy=fedsam"]),
    "FedSpeed": ("fedspeed", ["strategy=fedspeed", *NO_DECAY]),
    "FedSpeed without +mean(h)": ("fedspeed_no_server_h", ["strategy=fedspeed", *NO_DECAY, "strategy.server_correction=false"]),
    "FedSpeed, correction sign flipped": ("fedspeed_flipped", ["strategy=fedspeed", *NO_DECAY, "strategy.correction_sign=-1"]),
}
ABLATIONS = ("FedSpeed without +mean(h)", "FedSpeed, correction sign flipped")


def rounds_to(accs: list[float], target: float) -> int:
    """First round reaching ``target`` (ROUNDS + 1 if never)."""
    return next((i + 1 for i, a in enumerate(accs) if a >= target), ROUNDS + 1)


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} +- {statistics.stdev(values):.3f}"


def key(method: str, alpha: float, seed: int) -> str:
    return f"{METHODS[method][0]}/alpha{alpha}_seed{seed}"


def main() -> None:
    jobs = {key(m, a, s): [*SETTING, *o, f"partition.alpha={a}", f"seed={s}"] for m, (_, o) in METHODS.items() for a in ALPHAS for s in SEEDS}
    runs = run_many(jobs, under="fedspeed")
    curves = {(m, a): [[r["test_acc"] for r in runs[key(m, a, s)]] for s in SEEDS] for m in METHODS for a in ALPHAS}
    checks = []
    for alpha in ALPHAS:
        reach = {m: [rounds_to(c, TARGET) for c in curves[m, alpha]] for m in METHODS}
        final = {m: [statistics.mean(c[-LAST:]) for c in curves[m, alpha]] for m in METHODS}
        print(f"\n## Dirichlet({alpha}): MNIST-5k MLP, 100 clients, 10 per round, 5 local epochs, {ROUNDS} rounds, seeds {SEEDS}")
        high = {m: [rounds_to(c, HIGH) for c in curves[m, alpha]] for m in METHODS}
        print_table(["method", f"rounds to {TARGET:.0%} per seed", f"rounds to {TARGET:.0%}", f"last-{LAST}-round acc",
                     f"rounds to {HIGH:.0%} per seed (reported)"],
                    [[m, str(reach[m]), mean_std(reach[m]), mean_std(final[m]), str(high[m])] for m in METHODS])
        speedups = [avg / speed for avg, speed in zip(reach["FedAvg"], reach["FedSpeed"])]
        worse = {m: statistics.mean(final[m]) < statistics.mean(final["FedSpeed"]) for m in ABLATIONS}
        checks.append((all(x >= SPEEDUP for x in speedups) and all(worse.values()),
                       f"Dir({alpha}): FedAvg/FedSpeed rounds to {TARGET:.0%} per seed "
                       f"{', '.join(f'{x:.2f}' for x in speedups)} (>= {SPEEDUP} required); ablations below FedSpeed: "
                       + ", ".join(f"{m} {'yes' if ok else 'NO'}" for m, ok in worse.items())))
    plot({f"{m} Dir({a})": [statistics.mean(v) for v in zip(*curves[m, a])] for m in METHODS for a in ALPHAS},
         "FedSpeed and baselines, MNIST-5k, 100 clients, 10/round (mean of 3 seeds)", OUT / "fedspeed.png")
    finish(all(ok for ok, _ in checks), "; ".join(text for _, text in checks))


if __name__ == "__main__":
    main()
