"""Helpers of the poisoning tests: compose a run config the way the CLI does, run one client's round."""

from __future__ import annotations

import os

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

from typing import Any  # noqa: E402

from flwr.common.constant import SUPERLINK_NODE_ID  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from flwr.app import ConfigRecord, Message, RecordDict  # noqa: E402
from conftest import compose_config  # noqa: E402

from fedsim.engine.client_app import client_side_for, run_local_round  # noqa: E402
from fedsim.engine.harness import Truth  # noqa: E402
from conftest import Run  # noqa: E402
from fedsim.state import Tensors, from_record, to_record  # noqa: E402

FAST = ["backend=inline", "dataset=digits", "progress=false", "model.hidden=[32]"]


def make_cfg(*overrides: str) -> dict[str, Any]:
    """The resolved config for ``overrides`` on top of small, fast defaults (which they replace)."""
    return compose_config(FAST, *overrides)


def client_round(cfg: dict[str, Any], client_id: int, server_round: int = 1) -> tuple[Tensors, dict[str, str]]:
    """Run client ``client_id``'s full pipeline on the initial global model: (decoded update, true role and kind)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # as the inline backend
    run = Run(cfg)
    global_state = run.strategy.init_global(run.new_model())
    content = RecordDict({"arrays": to_record(global_state), "config": ConfigRecord({"round": server_round})})
    message = Message(content, dst_node_id=1001 + client_id, message_type="train")
    reply = run_local_round(client_side_for(cfg), message, client_id)
    truth = Truth.of(run.attack, run.num_clients, run.seed)
    return from_record(reply.content["update"]), {"role": truth.roles[client_id], "kind": truth.kinds[client_id]}
