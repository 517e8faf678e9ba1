"""The bench's reference: the same federated job written as a Flower user would write it.

Flower's own ``FedAvg`` strategy (weighted by ``num-examples``, every client sampled by Flower) and a
ClientApp training the MLP for one local epoch on its partition of fedsim's split, run by
``flwr.simulation.run_simulation`` on Ray, with the global model evaluated centrally after every round.
Flower samples its own cohorts, so the cohorts (not the amount of work per round) differ from fedsim's.
"""

from __future__ import annotations

import logging
import time

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg
from flwr.simulation import run_simulation

from fedsim.engine.context import Run
from fedsim.evaluation import evaluate
from fedsim.engine.simulation import quiet_engine_logs
from fedsim.seeding import torch_generator


_ENVS: dict[str, Run] = {}  # per process: a Ray actor builds the data and partition once


def env_for(cfg: dict) -> Run:
    key = repr(sorted(cfg.items()))
    if key not in _ENVS:
        _ENVS[key] = Run(cfg)
    return _ENVS[key]


def plain_flower_job(cfg: dict, num_cpus: int = 2) -> tuple[float, list[float]]:
    """(whole-run wall seconds, the wall time of each round) of the job of the resolved config ``cfg``."""
    env = env_for(cfg)
    client = ClientApp()

    @client.train()
    def train(message: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        env = env_for(cfg)
        cid = int(context.node_config["partition-id"])
        x, y = env.client_data(cid)
        model = env.new_model()
        model.load_state_dict(message.content["arrays"].to_torch_state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg["lr"])
        order = torch.randperm(len(y), generator=torch_generator(env.seed, "train", 0, cid))
        for start in range(0, len(y), cfg["batch_size"]):
            idx = order[start : start + cfg["batch_size"]]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
        return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": MetricRecord({"num-examples": len(y)})}),
                       reply_to=message)

    server = ServerApp()
    marks: list[float] = []
    accuracy: list[float] = []
    test_x, test_y = env.test_data()

    def central(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        model = env.new_model()
        model.load_state_dict(arrays.to_torch_state_dict())
        marks.append(time.perf_counter())
        scores = evaluate(model, test_x, test_y)
        accuracy.append(scores["test_acc"])
        return MetricRecord(scores)

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(fraction_train=cfg["clients_per_round"] / cfg["num_clients"], fraction_evaluate=0.0,
                          min_train_nodes=cfg["clients_per_round"], min_available_nodes=cfg["num_clients"])
        strategy.start(grid=grid, initial_arrays=ArrayRecord(env.new_model().state_dict()), num_rounds=cfg["rounds"], evaluate_fn=central)

    quiet_engine_logs(False)
    started = time.perf_counter()
    run_simulation(server_app=server, client_app=client, num_supernodes=cfg["num_clients"], backend_name="ray",
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": num_cpus, "include_dashboard": False, "logging_level": logging.ERROR}})
    total = time.perf_counter() - started
    if len(marks) != cfg["rounds"] + 1 or accuracy[-1] < 0.5:  # its clients did train (a failing ClientApp does not stop Flower)
        raise RuntimeError(f"the plain Flower app evaluated {len(marks)} times, final accuracy {accuracy[-1]:.3f}")
    return total, [b - a for a, b in zip(marks, marks[1:])]  # marks[0]: the initial model's evaluation
