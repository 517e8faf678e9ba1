"""The codec hook: per-client wire bytes and compression ratio, and codecs that train locally."""

from __future__ import annotations

import math

import torch

from fedsim.codec import Codec
from fedsim.environment import Environment
from fedsim.strategy import LocalResult, LocalTask
from conftest import make_config


def test_dense_codec_records_bytes_and_unit_ratio_per_client(run_sim) -> None:
    summary, records, _ = run_sim("rounds=2", "num_clients=3", "clients_per_round=3", "model.hidden=[8]")
    params = 64 * 8 + 8 + 8 * 10 + 10
    for record in records:
        assert set(record["clients"]) == {"0", "1", "2"}
        for client in record["clients"].values():
            assert client["bytes_up"] == 4 * params
            assert math.isclose(client["compression_ratio"], 1.0)
        assert record["bytes_up"] == 3 * 4 * params
    assert summary["bytes_up_total"] == 2 * 3 * 4 * params


class FrozenCodec(Codec):
    """A codec that takes over local training and proposes no change (tests the hook)."""

    def local_update(self, task: LocalTask) -> LocalResult:
        return LocalResult({k: torch.zeros_like(v) for k, v in task.global_state.items()}, len(task.y), {})


def test_codec_local_update_replaces_the_strategy(run_sim) -> None:
    _, records, _ = run_sim("compression._target_=tests.test_codec_hook.FrozenCodec")
    assert records[0]["test_acc"] == records[1]["test_acc"]  # the strategy's SGD never ran
    assert all("train_loss" not in c for c in records[0]["clients"].values())
    _, trained, _ = run_sim()
    assert trained[1]["test_acc"] > records[1]["test_acc"]


def test_dense_codec_ignores_global_state() -> None:
    env = Environment.from_config(make_config())
    state = env.strategy.init_global(env.new_model())
    codec = Codec()
    decoded = codec.decode(codec.encode(state, None, 1), state)
    assert all(torch.equal(decoded[k], state[k]) for k in state)
