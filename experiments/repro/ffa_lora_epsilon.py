"""FFA-LoRA vs LoRA at fixed privacy, the claim of Sun et al. (ICLR 2024): at epsilon 6, 3 and 1
(delta 1e-5) FFA-LoRA is at least as good as LoRA and less sensitive to the LoRA scaling alpha.

Setting: the pretrained MiniLM-L6 encoder (its first 2 of 6 layers, for the CPU budget), LoRA r=8 on
query/value plus a linear head; chatterbot-corpus topic classification with every line the corpus
has for its 6 topics of >= 100 lines (1,096 training lines: the corpus is what limits the data per
client, ~365 each); 3 clients Dirichlet(0.5), all sampled; 1 local epoch of batch 16 (Poisson), 5 rounds;
DP-SGD with clip 1, each client solving its sigma for the target epsilon over the 5 rounds. Grid:
lr {0.3, 1.0} x alpha {8, 16, 32} at each epsilon, seeds 0-2 (108 runs, two at a time). Accuracy is the
mean test accuracy of the last 2 rounds, then the mean over seeds. The noise is drawn reproducibly
(dp.reproducible_noise=true) so the figures can be rerun; its distribution is the same.

Gate, fixed before the first run: at every epsilon, FFA-LoRA's worst accuracy over the lr x alpha grid
>= LoRA's worst. Reported beside it: the best cell of each, and each method's spread over alpha.

Run: .venv/bin/python experiments/repro/ffa_lora_epsilon.py   (about 20 minutes on 2 CPU cores)
"""

from __future__ import annotations

import statistics

from common import finish, mean_last, print_table, run_many

SEEDS, EPSILONS, LRS, ALPHAS = (0, 1, 2), (6, 3, 1), (0.3, 1.0), (8, 16, 32)
METHODS = ("lora", "ffa_lora")
SETTING = ["dataset=chatbot_topics", "dataset.max_per_class=100000", "model=minilm_lora", "model.num_layers=2",
           "num_clients=3", "clients_per_round=3", "partition=dirichlet", "partition.alpha=0.5", "batch_size=16",
           "local_epochs=1", "rounds=5", "dp.clip=1.0", "dp.delta=1e-5", "dp.reproducible_noise=true"]


def key(method: str, eps: float, lr: float, alpha: int, seed: int) -> str:
    return f"{method}/eps{eps}_lr{lr}_alpha{alpha}_seed{seed}"


def main() -> None:
    grid = [(m, e, lr, a, s) for m in METHODS for e in EPSILONS for lr in LRS for a in ALPHAS for s in SEEDS]
    jobs = {key(*g): [*SETTING, f"strategy={g[0]}", f"dp.epsilon={g[1]}", f"lr={g[2]}", f"model.alpha={g[3]}", f"seed={g[4]}"]
            for g in grid}
    runs = run_many(jobs, under="ffa_lora_epsilon")
    acc = {k: mean_last(r, "test_acc", 2) for k, r in runs.items()}
    spent = max(c["dp_epsilon"] for r in runs.values() for c in r[-1]["clients"].values())

    def cell(m: str, e: float, lr: float, a: int) -> float:
        return statistics.mean(acc[key(m, e, lr, a, s)] for s in SEEDS)

    checks = []
    for e in EPSILONS:
        print(f"\n## epsilon {e} (delta 1e-5): accuracy, mean of 3 seeds")
        print_table(["method", *(f"lr {lr} alpha {a}" for lr in LRS for a in ALPHAS), "worst", "best", "spread over alpha (mean over lr)"],
                    [[m, *(cell(m, e, lr, a) for lr in LRS for a in ALPHAS), min(cell(m, e, lr, a) for lr in LRS for a in ALPHAS),
                      max(cell(m, e, lr, a) for lr in LRS for a in ALPHAS),
                      statistics.mean(max(cell(m, e, lr, a) for a in ALPHAS) - min(cell(m, e, lr, a) for a in ALPHAS) for lr in LRS)]
                     for m in METHODS])
        worst = {m: min(cell(m, e, lr, a) for lr in LRS for a in ALPHAS) for m in METHODS}
        best = {m: max(cell(m, e, lr, a) for lr in LRS for a in ALPHAS) for m in METHODS}
        checks.append((worst["ffa_lora"] >= worst["lora"],
                       f"eps {e}: worst FFA-LoRA {worst['ffa_lora']:.3f} vs LoRA {worst['lora']:.3f} (best {best['ffa_lora']:.3f} vs {best['lora']:.3f})"))
    print(f"\nlargest epsilon any client spent: {spent:.3f} (targets {EPSILONS})")
    finish(all(ok for ok, _ in checks), "; ".join(text for _, text in checks) + " (gate: worst FFA-LoRA >= worst LoRA at every epsilon)")


if __name__ == "__main__":
    main()
