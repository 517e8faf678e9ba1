"""The bench's bare-loop job written as a user of Apple's pfl-research (``pfl`` 0.6) would write it.

pfl's ``FederatedAveraging`` on a ``SimulatedBackend`` trains a ``PyTorchModel`` (local SGD, central SGD with
lr 1.0 applying the average delta) with deltas weighted by data points (``WeightByDatapoints``). A
``FederatedDataset`` whose user sampler walks fedsim's cohorts (``sample_clients``) round by round hands each
sampled client its partition already permuted by the bare loop's shuffle for that round
(``torch_generator(seed, "train", round, client)``); pfl's local loop then runs plain SGD over batches in
order with the mean cross-entropy, as the bare loop does, so the two end on the same weights (to float
rounding). A callback evaluates the global model centrally after every round with fedsim's ``evaluate``.

As in pfl, only the trainable parameters are trained and averaged (no buffers), and pfl evaluates every
user of the first round before and after its training (``evaluation_frequency`` cannot skip iteration 0;
later rounds are not evaluated per user). Metrics are not sent to pfl's platform (it would print them).
"""

from __future__ import annotations

import os
import time

import torch
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.hyperparam import NNTrainHyperParams
from pfl.metrics import Metrics, StringMetricName, Weighted
from pfl.model.pytorch import PyTorchModel
from torch import nn

from fedsim.engine.context import Run
from fedsim.evaluation import evaluate
from fedsim.sampling import sample_clients
from fedsim.seeding import torch_generator


class PflModule(nn.Module):
    """A fedsim model with the ``loss`` and ``metrics`` methods pfl's ``PyTorchModel`` calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.train()  # central evaluation leaves the module in eval mode
        return nn.functional.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, Weighted]:
        self.eval()
        return {"loss": Weighted(float(nn.functional.cross_entropy(self(x), y, reduction="sum")), len(y))}


class CentralEvaluation(TrainingProcessCallback):
    """fedsim's central evaluation of the global model after every central iteration."""

    def __init__(self, net: nn.Module, test_x: torch.Tensor, test_y: torch.Tensor) -> None:
        self.net, self.test_x, self.test_y = net, test_x, test_y

    def after_central_iteration(self, aggregate_metrics: Metrics, model: PyTorchModel, *,
                                central_iteration: int) -> tuple[bool, Metrics]:
        scores = evaluate(self.net, self.test_x, self.test_y)
        return False, Metrics([(StringMetricName(f"Central val | {name}"), value) for name, value in scores.items()])


def pfl_job(env: Run) -> tuple[float, dict[str, torch.Tensor]]:
    """(wall seconds of the whole training, central evaluation included; the final global state) of the bare
    loop's job run by pfl."""
    cfg = env.cfg
    if cfg["local_epochs"] != 1:
        raise ValueError(f"the pfl job needs local_epochs=1 (got {cfg['local_epochs']}): each user's pfl Dataset holds "
                         "its examples in the round's one shuffle, and pfl would replay that order every epoch")
    os.environ["PFL_PYTORCH_DEVICE"] = str(env.device)  # pfl would otherwise pick CUDA/MPS itself
    torch.set_num_threads(1)
    started = time.perf_counter()
    net = env.new_model()
    module = PflModule(net)
    if set(net.state_dict()) != {name for name, p in net.named_parameters() if p.requires_grad}:
        raise ValueError("pfl averages only trainable parameters; this model has buffers or frozen parameters")
    model = PyTorchModel(model=module, local_optimizer_create=torch.optim.SGD,
                         central_optimizer=torch.optim.SGD(module.parameters(), lr=1.0))
    rounds = int(cfg["rounds"])
    schedule = iter([(rnd, cid) for rnd in range(1, rounds + 1)
                     for cid in sample_clients(cfg["num_clients"], cfg["clients_per_round"], env.seed, rnd)])

    def user_dataset(key: tuple[int, int]) -> Dataset:
        rnd, cid = key
        x, y = env.client_data(cid)
        order = torch.randperm(len(y), generator=torch_generator(env.seed, "train", rnd, cid))
        return Dataset((x[order], y[order]), user_id=str(cid))

    training = FederatedDataset(user_dataset, user_sampler=lambda: next(schedule))
    backend = SimulatedBackend(training_data=training, val_data=None, postprocessors=[WeightByDatapoints()])
    params = NNAlgorithmParams(central_num_iterations=rounds, evaluation_frequency=rounds,
                               train_cohort_size=min(cfg["clients_per_round"], cfg["num_clients"]), val_cohort_size=None)
    train_params = NNTrainHyperParams(local_batch_size=cfg["batch_size"], local_num_epochs=1, local_learning_rate=cfg["lr"])
    FederatedAveraging().run(algorithm_params=params, backend=backend, model=model, model_train_params=train_params,
                             callbacks=[CentralEvaluation(net, *env.test_data())], send_metrics_to_platform=False)
    seconds = time.perf_counter() - started
    return seconds, {name: tensor.detach().clone() for name, tensor in net.state_dict().items()}
