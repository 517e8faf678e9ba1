"""FedAvg: local training, then the server adds the combined update (weighted mean by default)."""

from __future__ import annotations

from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, Combine, LocalResult, LocalTask, Strategy
from fedsim.training import GradientFn, LossTerm


class FedAvg(Strategy):
    """Federated Averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks
    from Decentralized Data", AISTATS 2017): E local epochs with the run's optimizer, upload the
    model delta; the server adds the combined delta (the sample-weighted mean unless a robust
    aggregator is configured) to the global model."""

    def local_update(self, task: LocalTask) -> LocalResult:
        trained = self.fit(task, loss_terms=self.loss_terms(task), gradient=self.gradient())
        return LocalResult(task.delta(trained.params), len(task.y), {"train_loss": trained.mean_loss})

    def loss_terms(self, task: LocalTask) -> tuple[LossTerm, ...]:
        """Terms added to the local loss; subclasses add regularisers."""
        return ()

    def gradient(self) -> GradientFn | None:
        """The local gradient estimator; None: the codec's if it has one, else autograd (FedSAM's is sharpness-aware)."""
        return None

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        mean = combine(updates)
        return {k: v + mean[k] for k, v in global_state.items()}
