"""MoNNA vs plain averaging (D-SGD) with faulty nodes: the honest nodes' mean test accuracy.

Setting (small-scale version of Farhadkhani et al., ICML 2023): sklearn digits, MLP, n=13 nodes,
f=3 of them faulty (seeded choice), one momentum step per round (batch 25, lr 0.75 decayed
as 1/(1+t/50), beta 0.99), 150 rounds. D-SGD is the same step with plain averaging (f=0).
Faulty nodes broadcast the sign-flipped model or the model plus N(0, 10^2) noise per coordinate.
Sign flipping collapses D-SGD. Noise only degrades it (0.95 -> 0.81, identical for sigma=1 and 10: once the
noise dominates, the ReLU network's accuracy is scale-invariant), so for noise the check is MoNNA > D-SGD.
Run: .venv/bin/python experiments/repro/monna.py
"""

from __future__ import annotations

from common import OUT, plot, run, finish

N, F, ROUNDS, LAST, SEED = 13, 3, 150, 10, 0
MARGIN = 0.05  # MoNNA under attack within this of its no-fault accuracy
SETTING = ("dataset=digits", "strategy=monna", f"num_clients={N}", f"clients_per_round={N}", "batch_size=25",
           "lr=0.75", f"rounds={ROUNDS}", f"seed={SEED}")
ATTACKS = {
    "none": ("attack=none",),
    "sign flip": ("attack=sign_flip", "attack.fraction=null", f"attack.count={F}"),
    "noise sigma=10": ("attack=additive_noise", "attack.fraction=null", f"attack.count={F}", "attack.sigma=10.0"),
}
MIXERS = {"D-SGD": "strategy.f=0", "MoNNA": f"strategy.f={F}"}


def main() -> None:
    curves = {(m, a): [r["test_acc"] for r in run(f"monna/{m}_{a}", [*SETTING, flag, *args])] for a, args in ATTACKS.items() for m, flag in MIXERS.items()}
    final = {key: sum(c[-LAST:]) / LAST for key, c in curves.items()}
    print(f"\nDigits MLP, n={N} nodes, {F} faulty under attack, {ROUNDS} rounds, seed {SEED}: honest nodes' mean test accuracy "
          f"(mean of the last {LAST} rounds)")
    print("| faulty nodes | " + " | ".join(MIXERS) + " |")
    print("|---|" + "---|" * len(MIXERS))
    for a in ATTACKS:
        print(f"| {a} | " + " | ".join(f"{final[(m, a)]:.3f}" for m in MIXERS) + " |")
    plot({f"{m}, {a}": c for (m, a), c in curves.items()}, f"MoNNA vs D-SGD, {F}/{N} faulty nodes", OUT / "monna.png")
    clean = final[("MoNNA", "none")]
    attacked = [a for a in ATTACKS if a != "none"]
    worst_drop = max(clean - final[("MoNNA", a)] for a in attacked)
    flipped = final[("D-SGD", "sign flip")]
    noise_gap = min(final[("MoNNA", a)] - final[("D-SGD", a)] for a in attacked)
    finish(
        worst_drop <= MARGIN and flipped < clean - 0.3 and noise_gap > 0.05,
        f"with {F}/{N} faulty nodes MoNNA's honest accuracy stays within {worst_drop:.3f} (<= {MARGIN}) of its no-fault "
        f"{clean:.3f}; D-SGD collapses to {flipped:.3f} under sign flip, and MoNNA beats D-SGD by >= {noise_gap:.3f} "
        "under every attack",
    )


if __name__ == "__main__":
    main()
