"""HyperFL vs FedAvg: personalised accuracy on a non-IID split, and gradient inversion against what each shares.

Accuracy: sklearn digits, MLP with one hidden layer of 64, 10 clients holding 3 labels each (shards), every
client every round, 30 rounds, seeds 0-2. HyperFL follows the paper's schedule (head alone 1 epoch SGD 0.1
momentum 0.5; then hypernetwork + embedding 5 epochs SGD 0.02 momentum 0.5, clip 50); FedAvg trains 5 local
epochs of SGD at 0.05. Both are scored the same way, the personalised metric: each client's model (FedAvg: the
global model; HyperFL: global hypernetwork + the client's private embedding and head) on the central test set
re-weighted to the client's own label distribution, mean over clients, after the last round. FedAvg's plain
global test accuracy is shown too.

Inversion: round 1 of a federation of 360 clients holding ~4 digits each (IID), 4 of them sampled; the same
clients (same images) for both methods. The fedsim observers Inverting Gradients (600 iterations) and DLG (300
L-BFGS iterations) attack each sampled client's decoded upload with the labels handed to the attacker (the
strongest setting; HyperFL's upload holds no classifier gradient to infer them from). Against HyperFL they
differentiate ``HyperFL.attack_model``: the hypernetwork the server holds, generating the feature extractor from
an embedding of the attacker's guessing, with a guessed head. HyperFL is attacked with the paper's schedule and
with a single local step (local_epochs=1, the attacker's best case). Baselines that use nothing from the upload:
uniform-random images, and the mean training image (the data prior alone). Also reported, not gated: an
analytic attack outside fedsim's observers ("bias ratio*", see :func:`bias_ratio`).

Gates: HyperFL's personalised accuracy at most 5 points below FedAvg's (mean over seeds; the paper's
"comparable"; a gain passes and is printed); every fedsim attack on HyperFL scores no better than the
mean-image guess; FedAvg's IG PSNR at least 10 dB above the best fedsim attack on HyperFL.
Run: .venv/bin/python experiments/repro/hyperfl.py   (~5 min on 2 cores; outputs in experiments/repro/out/hyperfl/)
"""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any

import numpy as np
import torch
from flwr.app import RecordDict

from common import OUT, config, figure, finish, print_table, run, save_figure
from fedsim.checkpoint import CheckpointStore
from fedsim.engine.context import Run
from fedsim.evaluation import evaluate, evaluate_for_labels
from fedsim.engine.reconstruction_scores import psnr, score_batch, ssim
from fedsim.seeding import torch_generator
from fedsim.state import ClientState
from fedsim.strategy import LocalTask

SEEDS = (0, 1, 2)
ROUNDS = 30
COMMON = ["dataset=digits", "model=mlp", "model.hidden=[64]", "batch_size=32"]
ACCURACY = [*COMMON, "num_clients=10", "clients_per_round=10", "partition=shards", "partition.classes_per_client=3",
            f"rounds={ROUNDS}", f"checkpoint_every={ROUNDS}"]
METHODS = {
    "FedAvg": ["strategy=fedavg", "lr=0.05", "local_epochs=5"],
    "HyperFL": ["strategy=hyperfl", "lr=0.02", "local_epochs=5"],
}
INVERSION = [*COMMON, "num_clients=360", "clients_per_round=4", "rounds=1", "partition=iid"]
KNOWN = ["privacy_attack.labels=known", "privacy_attack.max_images=8"]
ATTACKS = {"IG": ["privacy_attack=inverting_gradients", "privacy_attack.iterations=600", *KNOWN],
           "DLG": ["privacy_attack=dlg", "privacy_attack.iterations=300", *KNOWN]}
ATTACKED = {  # what each method shares in the accuracy runs, plus HyperFL's single-step best case for the attacker
    "FedAvg": METHODS["FedAvg"],
    "HyperFL": METHODS["HyperFL"],
    "HyperFL, 1 step": ["strategy=hyperfl", "lr=0.02", "local_epochs=1"],
}
ACC_MARGIN, FEDAVG_GAP_DB = 0.05, 10.0


def personalised(overrides: list[str], name: str) -> dict[str, float]:
    """The final global model scored per client on its label distribution (mean), and on the plain test set."""
    cfg = config(overrides)
    env = Run(cfg)
    checkpoint = CheckpointStore(OUT / name / "checkpoints").load_latest(cfg)
    model = env.new_model()
    model.load_state_dict(checkpoint.global_state, strict=False)
    x, y = env.test_data()
    per_client = [
        evaluate_for_labels(model, x, y, torch.bincount(torch.from_numpy(env.data.y_train[idx]), minlength=env.data.num_classes))
        for idx in env.partitions
    ]
    return {"personalised": float(np.mean([s["test_acc"] for s in per_client])), "global": evaluate(model, x, y)["test_acc"]}


def accuracy() -> tuple[dict[str, Any], dict[str, list[float]]]:
    results: dict[str, Any] = {}
    curves: dict[str, list[float]] = {}
    for method, extra in METHODS.items():
        for seed in SEEDS:
            overrides = [*ACCURACY, *extra, f"seed={seed}"]
            name = f"hyperfl/acc_{method}_seed{seed}"
            started = time.perf_counter()
            shutil.rmtree(OUT / name, ignore_errors=True)  # no checkpoint of an earlier run may be read
            records = run(name, overrides)
            scores = personalised(overrides, name) if method == "FedAvg" else {"personalised": records[-1]["test_acc"], "global": None}
            results[(method, seed)] = {**scores, "seconds": time.perf_counter() - started}
            if seed == SEEDS[0]:
                curves[f"{method} ({'global model' if method == 'FedAvg' else 'personalised'})"] = [r["test_acc"] for r in records]
            print(f"{method} seed {seed}: {results[(method, seed)]}", flush=True)
    return results, curves


def inversion() -> dict[tuple[str, str], dict[str, float]]:
    results = {}
    attacked_batches = None
    for method, extra in ATTACKED.items():
        for attack, attack_args in ATTACKS.items():
            name = f"hyperfl/inv_{method.replace(', ', '_').replace(' ', '')}_{attack}"
            started = time.perf_counter()
            privacy = run(name, [*INVERSION, *extra, *attack_args])[0]["privacy"]
            clients = privacy["clients"]
            results[(method, attack)] = {k: privacy[k] for k in ("psnr", "ssim")} | {
                "clients": len(clients), "seconds": time.perf_counter() - started}
            attacked_batches = sorted(int(c) for c in clients)
            print(f"{method} / {attack}: {results[(method, attack)]}", flush=True)
    results.update(baselines(attacked_batches))
    for method in ("HyperFL", "HyperFL, 1 step"):
        results[(method, "bias ratio*")] = bias_ratio(ATTACKED[method], attacked_batches)
    return results


def baselines(client_ids: list[int]) -> dict[tuple[str, str], dict[str, float]]:
    """Guesses that use nothing from the upload, scored against the attacked clients' true batches:
    uniform-random images, and the mean training image (the data prior alone)."""
    env = Run(config([*INVERSION, "strategy=fedavg"]))
    mean_px = env.data.denormalise(env.data.x_train).mean(0)
    scores: dict[str, list[dict[str, float]]] = {"random images": [], "mean training image": []}
    for cid in client_ids:
        x, y = env.client_data(cid)
        true_px = env.data.denormalise(x.numpy())
        guesses = {"random images": torch.rand(true_px.shape, generator=torch_generator(0, "repro-hyperfl-random", cid)).numpy(),
                   "mean training image": np.repeat(mean_px[None], len(true_px), axis=0)}
        for name, guess in guesses.items():
            scores[name].append(score_batch(true_px, y.numpy(), guess, y.numpy()))
    return {(name, "-"): {"psnr": float(np.mean([s["psnr"] for s in got])), "ssim": float(np.mean([s["ssim"] for s in got])),
                          "clients": len(client_ids), "seconds": 0.0} for name, got in scores.items()}


def bias_ratio(extra: list[str], client_ids: list[int]) -> dict[str, float]:
    """An analytic attack on HyperFL's upload, outside fedsim's observers (reported, not gated).

    The bias of the hypernetwork head generating the first Linear layer's weight W receives exactly
    dL/dW (summed over the local steps), the one generating its bias dL/db; a row i of W whose hidden
    unit one image alone activates gives that image as dW[i] / db[i]. Every row is a candidate, and each
    true image is paired with its best candidate: an oracle pick, so an upper bound on this attack.
    The client's upload is recomputed exactly as the engine's client computes it (same seeded generator).
    """
    env = Run(config([*INVERSION, *extra]))
    strategy, started = env.strategy, time.perf_counter()
    global_state = strategy.init_global(env.new_model())
    weight, bias = list(strategy.build(env.new_model()).hypernet.shapes)[:2]
    assert (weight, bias) == ("net.1.weight", "net.1.bias"), (weight, bias)  # heads 0 and 1 generate the first layer
    psnrs, ssims = [], []
    for cid in client_ids:
        x, y = env.client_data(cid)
        task = LocalTask(1, cid, env.new_model(), global_state, x, y, float(env.cfg["lr"]), int(env.cfg["local_epochs"]),
                         int(env.cfg["batch_size"]), torch_generator(env.seed, "train", 1, cid), ClientState(RecordDict()))
        update = strategy.local_update(task).update
        d_weight, d_bias = update["hypernet.heads.0.bias"].view(-1, x[0].numel()), update["hypernet.heads.1.bias"]
        rows = env.data.denormalise((d_weight / d_bias[:, None]).view(-1, *x.shape[1:]).numpy()).clip(0, 1)
        true_px = env.data.denormalise(x.numpy())
        best = [max(rows, key=lambda r: psnr(t, r)) for t in true_px]
        psnrs += [psnr(t, r) for t, r in zip(true_px, best)]
        ssims += [ssim(t, r) for t, r in zip(true_px, best)]
    return {"psnr": float(np.mean(psnrs)), "ssim": float(np.mean(ssims)), "clients": len(client_ids),
            "seconds": time.perf_counter() - started}


def main() -> int:
    torch.set_num_threads(1)
    acc, curves = accuracy()
    inv = inversion()

    print("\nPersonalised accuracy (each client's model on the test set re-weighted to its labels; final round)")
    rows = []
    for method in METHODS:
        pers = [acc[(method, s)]["personalised"] for s in SEEDS]
        glob = [acc[(method, s)]["global"] for s in SEEDS if acc[(method, s)]["global"] is not None]
        rows.append([method, f"{np.mean(pers):.3f} ± {np.std(pers):.3f}",
                     f"{np.mean(glob):.3f} ± {np.std(glob):.3f}" if glob else "- (no global model)",
                     " ".join(f"{p:.3f}" for p in pers)])
    print_table(["method", "personalised acc (mean ± std, 3 seeds)", "global-model test acc", "per seed"], rows)

    print("\nGradient inversion of round-1 uploads (4 clients, ~4 digits each, labels known to the attacker)")
    print_table(["target", "attack", "PSNR (dB)", "SSIM", "clients", "seconds"],
                [[m, a, r["psnr"], r["ssim"], r["clients"], f"{r['seconds']:.0f}"] for (m, a), r in inv.items()])

    fig, (ax_acc, ax_inv) = figure(ncols=2, width=12.0)
    for label, values in curves.items():
        ax_acc.plot(range(1, len(values) + 1), values, label=label)
    ax_acc.set(xlabel="round", ylabel="test accuracy", title=f"digits, 3 labels per client, seed {SEEDS[0]}")
    labels = [m if a == "-" else f"{m} / {a}" for m, a in inv]
    ax_inv.bar(range(len(inv)), [r["psnr"] for r in inv.values()], label="mean PSNR")
    ax_inv.set_xticks(range(len(inv)), labels, fontsize=7, rotation=35, ha="right")
    ax_inv.set(ylabel="PSNR (dB)", title="inversion of round-1 uploads")
    (OUT / "hyperfl").mkdir(parents=True, exist_ok=True)
    save_figure(fig, OUT / "hyperfl" / "hyperfl.png")

    gap = float(np.mean([acc[("HyperFL", s)]["personalised"] - acc[("FedAvg", s)]["personalised"] for s in SEEDS]))
    random_psnr = inv[("random images", "-")]["psnr"]
    prior_psnr = inv[("mean training image", "-")]["psnr"]
    observed = {key: r for key, r in inv.items() if key[0].startswith("HyperFL") and key[1] in ATTACKS}
    (worst_method, worst_attack), worst = max(observed.items(), key=lambda item: item[1]["psnr"])
    fedavg_ig = inv[("FedAvg", "IG")]["psnr"]
    analytic = max(r["psnr"] for (m, a), r in inv.items() if a == "bias ratio*")
    checks = [
        (gap >= -ACC_MARGIN, f"personalised accuracy HyperFL - FedAvg {100 * gap:+.1f} points (>= -{100 * ACC_MARGIN:.0f})"),
        (worst["psnr"] <= prior_psnr,
         f"best fedsim attack on HyperFL ({worst_method} / {worst_attack}) {worst['psnr']:.1f} dB <= mean-image guess "
         f"{prior_psnr:.1f} dB (random images {random_psnr:.1f} dB)"),
        (fedavg_ig >= worst["psnr"] + FEDAVG_GAP_DB,
         f"IG on FedAvg {fedavg_ig:.1f} dB >= best on HyperFL + {FEDAVG_GAP_DB:.0f} dB"),
    ]
    print("* bias ratio: an analytic attack on the hypernetwork heads' biases, outside fedsim's observers, oracle pick "
          f"of the best row per image (upper bound); best {analytic:.1f} dB: reported, not gated")
    passed = all(ok for ok, _ in checks)
    finish(passed, "; ".join(("" if ok else "NOT ") + text for ok, text in checks))
    return 0


if __name__ == "__main__":
    sys.exit(main())
