"""One-byte SPSA vs FedAvg: loss curve and total uplink bytes (logistic regression on digits, 4 clients).

Run: .venv/bin/python experiments/repro/spsa.py   (about a minute on 2 CPU cores)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import OUT, finish, plot, run  # noqa: E402

HEADER_BYTES = 24  # round, client, steps, eps, log2(grad_min), log2 step per code
BATCH = 32
BASE = [
    "backend=inline", "dataset=digits", "model.hidden=[]", "progress=false", "seed=0",
    "num_clients=4", "clients_per_round=4", "local_epochs=1", f"batch_size={BATCH}", "rounds=100",
]


def main() -> None:
    spsa = run("spsa/spsa", BASE + ["compression=spsa_one_byte", "lr=0.02"])
    fedavg = run("spsa/fedavg", BASE + ["lr=0.05"])
    print(f"{'round':>5} {'SPSA test loss':>15} {'SPSA acc':>9} {'FedAvg test loss':>17} {'FedAvg acc':>11}")
    for a, b in zip(spsa, fedavg):
        if a["round"] == 1 or a["round"] % 10 == 0:
            print(f"{a['round']:>5} {a['test_loss']:>15.4f} {a['test_acc']:>9.4f} {b['test_loss']:>17.4f} {b['test_acc']:>11.4f}")
    clients = [c for r in spsa for c in r["clients"].values()]
    steps_of = [-(-int(c["num_examples"]) // BATCH) for c in clients]  # one step per mini-batch, one epoch
    steps = sum(steps_of)
    spsa_bytes, fedavg_bytes = sum(r["bytes_up"] for r in spsa), sum(r["bytes_up"] for r in fedavg)
    exact = all(c["bytes_up"] == n + HEADER_BYTES for c, n in zip(clients, steps_of))  # bytes measured by the server
    rejected = sum(len(r["rejected"]) for r in spsa)
    print(f"uplink bytes: SPSA {spsa_bytes:,} ({steps:,} steps, {(spsa_bytes - HEADER_BYTES * len(clients)) / steps:.3f} "
          f"byte/step + {HEADER_BYTES} B header per message), FedAvg {fedavg_bytes:,}: {fedavg_bytes / spsa_bytes:.0f}x fewer")
    model_bytes = fedavg[0]["bytes_up"] // len(fedavg[0]["clients"])
    print(f"per local step: SPSA 1 byte vs {model_bytes:,} bytes for a float32 gradient ({model_bytes}x)")
    plot(
        {f"one-byte SPSA: {spsa_bytes:,} B up": [r["test_loss"] for r in spsa],
         f"FedAvg (float32 deltas): {fedavg_bytes:,} B up": [r["test_loss"] for r in fedavg]},
        "One-byte SPSA, logistic regression on digits, 4 clients", OUT / "spsa.png", ylabel="test cross-entropy",
    )
    start, end = spsa[0]["test_loss"], spsa[-1]["test_loss"]
    passed = exact and rejected == 0 and end < 0.8 * start and spsa[-1]["test_acc"] >= 0.8
    finish(
        passed,
        f"one-byte SPSA test loss {start:.3f} -> {end:.3f} (must fall below 80% of round 1), accuracy "
        f"{spsa[-1]['test_acc']:.4f} (>= 0.80 required; FedAvg {fedavg[-1]['test_acc']:.4f}), exactly 1 byte per step "
        f"+ {HEADER_BYTES} B header: {exact}, {rejected} rejected rebuilds, {fedavg_bytes / spsa_bytes:.0f}x fewer uplink bytes",
    )


if __name__ == "__main__":
    main()
