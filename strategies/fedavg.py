"""FedAvg: local SGD, then the server averages the updates weighted by sample count."""

from __future__ import annotations

from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, LocalResult, LocalTask, LossFn, Strategy, cross_entropy


class FedAvg(Strategy):
    """Federated Averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks
    from Decentralized Data", AISTATS 2017): E local epochs of SGD, upload the model delta;
    the server adds the sample-weighted mean delta to the global model."""

    def local_update(self, task: LocalTask) -> LocalResult:
        train_loss = self.sgd_epochs(task, self.local_loss(task))
        return LocalResult(self.model_delta(task.model, task.global_state), len(task.y), {"train_loss": train_loss})

    def local_loss(self, task: LocalTask) -> LossFn:
        """The loss minimised locally; subclasses add regularisers."""
        return cross_entropy

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate]) -> Tensors:
        mean = self.weighted_mean(updates)
        return {k: v + mean[k] for k, v in global_state.items()}
