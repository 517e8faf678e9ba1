"""FedAvg: local training, then the server adds the combined update (weighted mean by default)."""

from __future__ import annotations

from fedsim.state import Tensors
from fedsim.strategy import ClientUpdate, Combine, LocalTask, OneLoopStrategy
from fedsim.training import GradientFn, LocalTraining, LossTerm


class FedAvg(OneLoopStrategy):
    """Federated Averaging (McMahan et al., "Communication-Efficient Learning of Deep Networks
    from Decentralized Data", AISTATS 2017): E local epochs with the run's optimizer, upload the
    model delta; the server adds the combined delta (the sample-weighted mean unless a robust
    aggregator is configured) to the global model."""

    def training_for(self, task: LocalTask) -> LocalTraining:
        """The task's training loop with this strategy's contributions."""
        return task.training(**self.fit_args(task))  # type: ignore[arg-type]

    def fit_args(self, task: LocalTask) -> dict[str, object]:
        """This strategy's contributions to the task's training loop."""
        return {"loss_terms": self.loss_terms(task), "gradient": self.gradient()}

    def loss_terms(self, task: LocalTask) -> tuple[LossTerm, ...]:
        """Terms added to the local loss; subclasses add regularisers."""
        return ()

    def gradient(self) -> GradientFn | None:
        """The local gradient estimator; None: the codec's if it has one, else autograd (FedSAM's is sharpness-aware)."""
        return None

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        mean = combine(updates)
        return {k: v + mean[k] for k, v in global_state.items()}
