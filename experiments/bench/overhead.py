"""Framework overhead: fedsim (inline and Ray backends) vs a bare PyTorch loop doing the same training.

Timings are the fastest of ``--repeat`` runs (Ray: one run). The bare loop trains the same clients (same partition, same sampling, same seeds for
shuffling), averages the deltas and evaluates centrally each round, sequentially in one
process with one torch thread. Prints ``overhead_ratio = fedsim_wall / bare_wall`` per
backend and case; Ray's start-up and shutdown are measured separately and excluded
from its ratio (``ray_rounds_wall`` is the time from the first round's start to the
last round's end).

    python experiments/bench/overhead.py            # both cases, both backends
    python experiments/bench/overhead.py --quick    # fewer rounds
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from fedsim.engine.context import Run, RunContext
from fedsim.evaluation import evaluate
from fedsim.sampling import sample_clients
from fedsim.seeding import torch_generator
from fedsim.engine.simulation import simulate

CASES = {
    "100 clients, 10 per round": ["num_clients=100", "clients_per_round=10"],
    "10 clients, all per round": ["num_clients=10", "clients_per_round=10"],
}


def config(overrides: list[str]) -> dict:
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["progress=false", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def bare_loop(env: Run) -> float:
    """The same federated training as plain PyTorch; returns its wall seconds."""
    cfg = env.cfg
    torch.set_num_threads(1)
    started = time.perf_counter()
    model = env.new_model()
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    test_x, test_y = env.test_data()
    for rnd in range(1, cfg["rounds"] + 1):
        deltas, sizes = [], []
        for cid in sample_clients(cfg["num_clients"], cfg["clients_per_round"], env.seed, rnd):
            x, y = env.client_data(cid)
            local = env.new_model()
            local.load_state_dict(global_state)
            opt = torch.optim.SGD(local.parameters(), lr=cfg["lr"])
            gen = torch_generator(env.seed, "train", rnd, cid)
            for _ in range(cfg["local_epochs"]):
                order = torch.randperm(len(y), generator=gen)
                for s in range(0, len(y), cfg["batch_size"]):
                    idx = order[s : s + cfg["batch_size"]]
                    opt.zero_grad()
                    torch.nn.functional.cross_entropy(local(x[idx]), y[idx]).backward()
                    opt.step()
            deltas.append({k: local.state_dict()[k] - v for k, v in global_state.items()})
            sizes.append(len(y))
        total = sum(sizes)
        global_state = {k: v + sum(d[k] * (n / total) for d, n in zip(deltas, sizes)) for k, v in global_state.items()}
        model.load_state_dict(global_state)
        evaluate(model, test_x, test_y)
    return time.perf_counter() - started


def fedsim_run(cfg: dict, ctx: RunContext) -> tuple[float, float, float]:
    """(total wall, rounds wall, final accuracy) of one fedsim run on the prebuilt server-side context."""
    with tempfile.TemporaryDirectory() as out:
        started = time.perf_counter()
        summary = simulate(cfg, Path(out), progress=False, ctx=ctx)
        total = time.perf_counter() - started
        records = [json.loads(line) for line in (Path(out) / "rounds.jsonl").read_text().splitlines()]
    return total, sum(r["wall_s"] for r in records), summary["final_test_acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 10")
    parser.add_argument("--backends", default="inline,ray")
    parser.add_argument("--repeat", type=int, default=2, help="bare and inline runs repeated, fastest kept")
    args = parser.parse_args()
    rounds = 3 if args.quick else 10
    print(f"{'case':28} {'backend':7} {'bare_s':>7} {'fedsim_s':>9} {'startup_s':>9} {'overhead_ratio':>14} {'acc':>6}")
    for case, overrides in CASES.items():
        base = [*overrides, f"rounds={rounds}"]
        env = Run(config(base + ["backend=inline"]))
        bare = min(bare_loop(env) for _ in range(args.repeat))
        for backend in args.backends.split(","):
            cfg = config(base + [f"backend={backend}"])
            ctx = RunContext.from_config(cfg)  # the server's data loading is outside both timings
            repeats = args.repeat if backend == "inline" else 1  # each Ray run pays its start-up again
            total, rounds_wall, acc = min(fedsim_run(cfg, ctx) for _ in range(repeats))
            # inline: everything counts; ray: start-up/shutdown reported apart
            measured = total if backend == "inline" else rounds_wall
            startup = 0.0 if backend == "inline" else total - rounds_wall
            print(
                f"{case:28} {backend:7} {bare:7.2f} {measured:9.2f} {startup:9.2f} "
                f"{'overhead_ratio=' + format(measured / bare, '.2f'):>14} {acc:6.3f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
