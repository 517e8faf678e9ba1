"""Label flipping 1 -> 7 at 0/30/40/50% attackers: FedAvg vs coordinate-wise median (DESIGN.md 6).

Digits, 10 IID clients, MLP, 30 rounds. Gate: at 40% attackers FedAvg's source-class recall
drops >= 15 points (vs no attack) and its attack success rate is >= 10%, while median's ASR <= 5%.
Run: .venv/bin/python experiments/repro/label_flip.py
"""

from __future__ import annotations

from common import OUT, figure, finish, mean_last, print_table, run, save_figure

FRACTIONS = (0.0, 0.3, 0.4, 0.5)
DEFENSES = ("none", "median")
BASE = ["dataset=digits", "rounds=30", "num_clients=10", "clients_per_round=10", "lr=0.05", "seed=0",
        "attack=label_flip", "attack.source=1", "attack.target=7"]


def main() -> None:
    results = {}
    for defense in DEFENSES:
        for fraction in FRACTIONS:
            records = run(f"label_flip/{defense}_{fraction}", [*BASE, f"attack.fraction={fraction}", f"defense={defense}"])
            results[defense, fraction] = {
                "acc": mean_last(records, "test_acc"),
                "recall": mean_last(records, "source_recall"),
                "asr": mean_last(records, "attack_success_rate"),
                "curve": [r["attack_success_rate"] for r in records],
            }
    print("Label flip 1 -> 7, digits, 10 IID clients, 30 rounds (mean of the last 3 rounds)")
    print_table(
        ["defense", "attackers", "test acc", "source recall", "ASR"],
        [[d, f"{int(f * 100)}%", r["acc"], r["recall"], r["asr"]] for (d, f), r in results.items()],
    )
    plot(results)
    drop = results["none", 0.0]["recall"] - results["none", 0.4]["recall"]
    asr, median_asr = results["none", 0.4]["asr"], results["median", 0.4]["asr"]
    finish(
        drop >= 0.15 and asr >= 0.10 and median_asr <= 0.05,
        f"at 40% attackers FedAvg source recall drops {drop * 100:.1f} points (>= 15), ASR {asr:.3f} (>= 0.10); "
        f"median ASR {median_asr:.3f} (<= 0.05)",
    )


def plot(results: dict) -> None:
    fig, (ax,) = figure()
    for (defense, fraction), r in results.items():
        if fraction > 0:
            ax.plot(range(1, len(r["curve"]) + 1), r["curve"], label=f"{defense} {int(fraction * 100)}%",
                    linestyle="-" if defense == "none" else "--")
    ax.set(xlabel="round", ylabel="attack success rate (1 -> 7)", title="Label flipping: FedAvg vs median")
    save_figure(fig, OUT / "label_flip" / "asr.png")


if __name__ == "__main__":
    main()
