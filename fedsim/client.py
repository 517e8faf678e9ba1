"""The client side of a round, as a Flower ClientApp.

Pipeline (DESIGN.md section 3): global arrays in -> client data (+ data attack if
attacking) -> strategy.local_update -> update attack if attacking -> codec.encode
-> reply with the encoded update, metrics and the true role and attack type (for
scoring only).
"""

from __future__ import annotations

import math

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.attack import Attack
from fedsim.environment import Config, environment_for
from fedsim.seeding import torch_generator
from fedsim.state import ClientState, from_record, state_entries
from fedsim.strategy import LocalTask, model_holding

TRUTH_KEY = "truth"  # reply record holding the client's true role and attack type (scoring only)


def partition_id(context: Context) -> int:
    """The client id (partition) this Flower node plays."""
    return int(context.node_config["partition-id"])


def run_local_round(cfg: Config, message: Message, context: Context) -> Message:
    """One client's work for one round; returns the reply message."""
    torch.set_num_threads(int(cfg["backend"]["client_threads"]))
    env = environment_for(cfg)
    cid = partition_id(context)
    round_config = dict(message.content["config"])
    server_round = int(round_config.pop("round"))
    global_state = from_record(message.content["arrays"], str(env.device))
    attack = env.attack.for_client(cid, int(cfg["num_clients"]), env.seed)

    x, y = env.client_data(cid)
    if attack is not None:
        x, y = attack.poison_data(x, y, torch_generator(env.seed, "data-attack", server_round, cid))
    model = model_holding(global_state, env.new_model)
    client_state = ClientState(state_entries(message.content), str(env.device))
    task = LocalTask(
        round=server_round,
        client_id=cid,
        model=model,
        global_state=global_state,
        x=x,
        y=y,
        lr=float(round_config.pop("lr", cfg["lr"])),
        local_epochs=int(cfg["local_epochs"]),
        batch_size=int(cfg["batch_size"]),
        generator=torch_generator(env.seed, "train", server_round, cid, device=str(env.device)),
        client_state=client_state,
        config=round_config,
    )
    result = env.codec.local_update(task)
    if result is None:
        result = env.strategy.local_update(task)
    update = result.update
    if attack is not None:
        update = attack.poison_update(update, torch_generator(env.seed, "update-attack", server_round, cid))
    encoded = env.codec.encode(update, client_state, server_round)
    bytes_up = env.codec.wire_bytes(encoded)
    metrics = {
        "num_examples": result.num_examples,
        "bytes_up": bytes_up,
        "compression_ratio": dense_upload_bytes(env.strategy.upload_shapes(global_state)) / max(bytes_up, 1),
        **result.metrics,
    }
    acting = attack or Attack()  # the base Attack is the benign client
    truth = ConfigRecord({"role": acting.role, "kind": acting.name})
    content = RecordDict({"update": encoded, "metrics": MetricRecord(metrics), TRUTH_KEY: truth, **client_state.entries()})
    return Message(content, reply_to=message)


def dense_upload_bytes(shapes: dict[str, tuple[int, ...]]) -> int:
    """Bytes of the strategy's upload sent uncompressed as float32: the reference for the compression ratio."""
    return sum(4 * math.prod(shape) for shape in shapes.values())


def build_client_app(cfg: Config) -> ClientApp:
    """A ClientApp running fedsim's client pipeline for the resolved config ``cfg``."""
    app = ClientApp()

    @app.query()
    def identify(message: Message, context: Context) -> Message:
        return Message(RecordDict({"identity": ConfigRecord({"partition_id": partition_id(context)})}), reply_to=message)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return run_local_round(cfg, message, context)

    return app
