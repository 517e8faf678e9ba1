"""The client side of a round, as a Flower ClientApp (docs/architecture.md, "Client side").

Per message: the payload (model arrays, round config, per-client extras, the client's hosted
state) -> the client's data, poisoned if this client is malicious -> local training through
the strategy -> the update transforms in order (poisoning, then the codec's encode) -> a reply
holding only what a real client sends: the encoded update, its example count and its metrics.

Every message runs on fresh copies of the client-side components, so a component that changes
itself while training cannot carry anything to the next client: inline and Ray, with any
number of workers, compute the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp


from fedsim.component import fresh_copy
from fedsim.engine.context import Components, Config, RunContext, build_components
from fedsim.seeding import torch_generator
from fedsim.state import ClientState, from_record, state_entries
from fedsim.strategy import LocalResult, LocalTask
from fedsim.training import OptimizerConfig, autograd_gradient, model_loss


def partition_id(context: Context) -> int:
    """The client id (partition) this Flower node plays."""
    return int(context.node_config["partition-id"])


@dataclass
class ClientSide:
    """What a client process holds for a run: the frozen context and templates of its components."""

    context: RunContext
    templates: Components
    optimizer: OptimizerConfig

    @classmethod
    def build(cls, cfg: Config, context: RunContext | None = None) -> "ClientSide":
        side = cls(context or RunContext.from_config(cfg), build_components(cfg), OptimizerConfig(**cfg["optimizer"]))
        warm_up(side.context)
        return side

    def fresh(self) -> Components:
        """Copies of the component templates for one message (as one ``copy.deepcopy`` of them all makes them)."""
        memo: dict[int, Any] = {}
        return Components(**{kind: fresh_copy(component, memo) for kind, component in vars(self.templates).items()})


def warm_up(ctx: RunContext) -> None:
    """One forward and backward pass of the run's model on its first two training examples, when a process
    builds its client side: torch's first call of each kernel costs tens of milliseconds, which would
    otherwise land on the first round's clock (and its client timeouts). Under a forked RNG, on a pooled
    model that its next lend resets, so nothing of it reaches a round."""
    x, y = ctx.train_examples(np.arange(min(2, len(ctx.data.y_train))))
    model = ctx.new_model.holding({})
    with torch.random.fork_rng(devices=[] if ctx.device.type == "cpu" else [ctx.device]):
        params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
        autograd_gradient(model_loss(model), params, (x, y))
    ctx.new_model.release(model)


# The only per-process slot of the engine: a Ray actor (whose ClientApp Flower re-creates for
# every message) builds its ClientSide once per run and finds it here.
_CLIENT_SIDES: dict[str, ClientSide] = {}


def client_side_for(cfg: Config, context: RunContext | None = None, key: str | None = None) -> ClientSide:
    """The process's ClientSide for ``cfg`` (built on first use); ``key``: ``cfg``'s :func:`config_key`, if known."""
    key = key or config_key(cfg)
    if key not in _CLIENT_SIDES:
        _CLIENT_SIDES.clear()
        _CLIENT_SIDES[key] = ClientSide.build(cfg, context)
    return _CLIENT_SIDES[key]


def config_key(cfg: Config) -> str:
    """The identity of a run's config (its canonical JSON: a fraction of a millisecond, so computed once per app)."""
    return json.dumps(cfg, sort_keys=True, default=str)


@dataclass
class Prepared:
    """One client's round, set up: its fresh components, the task, the attack it plays (None: honest)."""

    parts: Components
    task: LocalTask
    attack: Any
    message: Message


def prepare(side: ClientSide, message: Message, client_id: int, like: Prepared | None = None) -> Prepared:
    """The client's data (poisoned if it is malicious), state and task for this message.

    ``like``: another client of the same vectorised chunk, whose model this task shares (else the run's
    model factory lends one, loaded with the payload), and whose decoded payload too when this message
    carries the very same arrays record."""
    ctx, parts = side.context, side.fresh()
    cfg, device = ctx.cfg, str(ctx.device)
    torch.set_num_threads(int(cfg["backend"]["client_threads"]))
    round_config = dict(message.content["config"])
    server_round = int(round_config.pop("round"))
    arrays = message.content["arrays"]
    same = like is not None and like.message.content["arrays"] is arrays
    payload = like.task.global_state if same else from_record(arrays, device)
    extra = from_record(message.content["extra"], device) if "extra" in message.content else {}
    attack = parts.attack.for_client(client_id, ctx.num_clients, ctx.seed)

    x, y = ctx.client_data(client_id)
    if attack is not None:
        x, y = attack.poison_data(x, y, torch_generator(ctx.seed, "data-attack", server_round, client_id))
    task = LocalTask(
        round=server_round,
        client_id=client_id,
        model=ctx.new_model.holding(payload) if like is None else like.task.model,
        global_state=payload,
        x=x,
        y=y,
        lr=float(round_config.pop("lr", cfg["lr"])),
        generator=torch_generator(ctx.seed, "train", server_round, client_id, device=device),
        client_state=ClientState(state_entries(message.content), device),
        optimizer=side.optimizer,
        config=round_config,
        extra=extra,
        gradient=parts.codec.gradient_estimator(server_round, client_id),
        **ctx.local_schedule(),
    )
    return Prepared(parts, task, attack, message)


def reply(side: ClientSide, prepared: Prepared, result: LocalResult) -> Message:
    """The reply to a prepared round: the update (poisoned if malicious, then encoded), count, metrics, state."""
    ctx, task, update = side.context, prepared.task, result.update
    if prepared.attack is not None:
        update = prepared.attack.poison_update(update, torch_generator(ctx.seed, "update-attack", task.round, task.client_id))
    encoded: ArrayRecord = prepared.parts.codec.encode(update, task.client_state, task.round)
    metrics = {"num_examples": result.num_examples, **result.metrics}
    content = RecordDict({"update": encoded, "metrics": MetricRecord(metrics), **task.client_state.entries()})
    return Message(content, reply_to=prepared.message)


def run_local_round(side: ClientSide, message: Message, client_id: int) -> Message:
    """One client's work for one round; returns the reply message."""
    prepared = prepare(side, message, client_id)
    answer = reply(side, prepared, prepared.parts.strategy.local_update(prepared.task))
    side.context.new_model.release(prepared.task.model)  # the reply holds its own bytes: nothing refers to the model any more
    return answer


def build_client_app(cfg: Config, context: RunContext | None = None) -> ClientApp:
    """A ClientApp running fedsim's client pipeline for the resolved config ``cfg``.

    ``context``: the run context to share (in-process backends); a Ray actor builds its own.
    """
    app, key = ClientApp(), config_key(cfg)

    @app.query()
    def identify(message: Message, context_: Context) -> Message:
        client_side_for(cfg, context, key)  # warm up: the worker loads data and builds components before round 1's clock
        return Message(RecordDict({"identity": ConfigRecord({"partition_id": partition_id(context_)})}), reply_to=message)

    @app.train()
    def train(message: Message, context_: Context) -> Message:
        return run_local_round(client_side_for(cfg, context, key), message, partition_id(context_))

    return app
