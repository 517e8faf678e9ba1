"""The client side of a round, as a Flower ClientApp.

Pipeline (DESIGN.md section 3): global arrays in -> client data (+ data attack if
malicious) -> strategy.local_update -> update attack if malicious -> codec.encode
-> reply with the encoded update, metrics and the true role (for scoring only).
"""

from __future__ import annotations

import math

import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedsim.attack import MALICIOUS
from fedsim.environment import Config, environment_for
from fedsim.seeding import torch_generator
from fedsim.state import ClientState, from_record
from fedsim.strategy import LocalTask

ROLE_KEY = "role_malicious"


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
    malicious = env.attack.role(cid, cfg["num_clients"], env.seed) == MALICIOUS

    x, y = env.client_data(cid)
    if malicious:
        x, y = env.attack.poison_data(x, y, torch_generator(env.seed, "data-attack", server_round, cid))
    model = env.new_model()
    model.load_state_dict(global_state, strict=False)
    client_state = ClientState(context.state, str(env.device))
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
    if malicious:
        update = env.attack.poison_update(update, torch_generator(env.seed, "update-attack", server_round, cid))
    encoded = env.codec.encode(update, client_state, server_round)
    bytes_up = env.codec.wire_bytes(encoded)
    metrics = {
        "num_examples": result.num_examples,
        "bytes_up": bytes_up,
        "compression_ratio": dense_upload_bytes(env.strategy.upload_shapes(global_state)) / max(bytes_up, 1),
        ROLE_KEY: int(malicious),
        **result.metrics,
    }
    return Message(RecordDict({"update": encoded, "metrics": MetricRecord(metrics)}), reply_to=message)


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
