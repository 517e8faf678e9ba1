"""After-round callbacks: central evaluation, privacy observers, results on disk, checkpoints.

Each callback gets the finished :class:`RoundResult` and the round's record, adds its fields
to the record or writes something, in the order the engine lists them. Observers see only
the public :class:`~fedsim.privacy.ServerView`; the harness scores what they return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from flwr.app import ArrayRecord

from fedsim.checkpoint import Checkpoint, CheckpointStore
from fedsim.engine.context import Components, RunContext
from fedsim.engine.harness import Truth, score_models, score_privacy
from fedsim.engine.state_store import ClientStateStore
from fedsim.privacy import DataFacts, ServerView
from fedsim.results import RunRecorder
from fedsim.state import ClientState, Tensors, from_record
from fedsim.strategy import ClientUpdate
from fedsim.training import OptimizerConfig


@dataclass
class RoundResult:
    """Everything one round produced, for the callbacks."""

    round: int
    start_state: Tensors  # the global state the round started from
    global_state: Tensors  # the new global state
    updates: list[ClientUpdate]  # accepted (after the server-side adversary), before screening
    client_states: ClientStateStore  # every hosted state, by client id
    started: float = field(default_factory=time.perf_counter)  # perf_counter() when the round began


@dataclass
class StateView(Mapping[int, Any]):
    """Every hosted client state, converted by ``convert`` when asked for (a spilled one is read then)."""

    entries: Mapping[int, dict[str, ArrayRecord]]
    convert: Callable[[dict[str, ArrayRecord]], Any]

    def __getitem__(self, client_id: int) -> Any:
        return self.convert(self.entries[client_id])

    def __iter__(self) -> Iterator[int]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)


class Callback(Protocol):
    def after_round(self, result: RoundResult, record: dict[str, Any]) -> None: ...


@dataclass
class CentralEvaluation:
    """Test metrics of the strategy's scored models (the honest clients' mean for per-client models)."""

    ctx: RunContext
    parts: Components
    truth: Truth

    def after_round(self, result: RoundResult, record: dict[str, Any]) -> None:
        device = str(self.ctx.device)
        states = StateView(result.client_states, lambda entries: ClientState(entries, device))
        record.update(score_models(self.ctx, self.parts.strategy, self.parts.attack, self.truth, result.global_state, states))


@dataclass
class PrivacyObservers:
    """The honest-but-curious server's observer, given the public view; the harness scores its output."""

    ctx: RunContext
    parts: Components
    out_dir: Path

    def after_round(self, result: RoundResult, record: dict[str, Any]) -> None:
        ctx, strategy = self.ctx, self.parts.strategy
        data = ctx.data
        lr, local_epochs = float(strategy.configure_round(result.round).get("lr", ctx.cfg["lr"])), int(ctx.cfg["local_epochs"])
        optimizer = OptimizerConfig(**ctx.cfg["optimizer"])
        view = ServerView(
            round=result.round,
            seed=ctx.seed,
            global_state=result.start_state,
            updates=result.updates,
            lr=lr,
            local_epochs=local_epochs,
            batch_size=int(ctx.cfg["batch_size"]),
            data=DataFacts(tuple(data.input_shape), int(data.num_classes), tuple(getattr(data, "mean", ())), tuple(getattr(data, "std", ()))),
            attack_model=lambda: strategy.attack_model(result.start_state, ctx.new_model),
            held_out=data.x_test,
            granted_labels=lambda client_id: ctx.client_data(client_id)[1],
            replay=lambda model: strategy.replay_stages(model, optimizer, lr, local_epochs),
            device=ctx.device,
        )
        observation = self.parts.privacy.observe(view)
        if observation is not None:
            record.update(score_privacy(ctx, type(self.parts.privacy).__name__, result.round, observation, self.out_dir))


@dataclass
class Recording:
    """Stamps the round's wall time (everything up to here, evaluation included) and appends the
    record to rounds.jsonl (and the trackers)."""

    recorder: RunRecorder

    def after_round(self, result: RoundResult, record: dict[str, Any]) -> None:
        self.recorder.record({**record, "wall_s": time.perf_counter() - result.started})


@dataclass
class Checkpointing:
    """Every ``every`` rounds and after the last: everything the next rounds depend on, written atomically."""

    store: CheckpointStore
    config: dict[str, Any]  # the run's numbers-relevant config, recorded in every checkpoint
    parts: Components
    recorder: RunRecorder
    every: int
    last_round: int

    def after_round(self, result: RoundResult, record: dict[str, Any]) -> None:
        if not self.every or (result.round % self.every and result.round != self.last_round):
            return
        states = result.client_states
        self.store.save(
            Checkpoint(
                round=result.round,
                config=self.config,
                global_state=result.global_state,
                client_states=StateView(states, lambda entries: {k: from_record(v) for k, v in entries.items()}),
                components={kind: c.state_dict() for kind, c in self.parts.by_kind().items()},
                records=list(self.recorder.records),
            ),
            versions=states.versions,
        )
