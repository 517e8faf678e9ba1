"""The codec hook: per-client wire bytes and compression ratio, and codecs that train locally."""

from __future__ import annotations

import math

import torch

from fedsim.codec import Codec
from conftest import Run
from fedsim.training import GradientFn, OptimizerConfig
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
    """A codec whose gradient estimator proposes no change (tests that the loop takes a codec's estimator)."""

    def gradient_estimator(self, server_round: int, client_id: int) -> GradientFn:
        def zero(loss_fn, params, batch):
            return float(loss_fn(params, *batch)), {n: torch.zeros_like(p) for n, p in params.items()}

        return zero


def test_codec_gradient_estimator_drives_the_strategys_loop(run_sim) -> None:
    _, records, _ = run_sim("compression._target_=tests.test_codec_hook.FrozenCodec")
    assert records[0]["test_acc"] == records[1]["test_acc"]  # every step was a zero step
    assert all("train_loss" in c for c in records[0]["clients"].values())  # yet the strategy's loop ran
    _, trained, _ = run_sim()
    assert trained[1]["test_acc"] > records[1]["test_acc"]


def test_dense_codec_decodes_the_update_not_the_global_state() -> None:
    """The update and the global state differ everywhere, so a decode that returned (or added) the
    global state could not pass."""
    env = Run(make_config())
    state = env.strategy.init_global(env.new_model())
    update = {k: torch.randn_like(v) * 0.01 for k, v in state.items()}
    codec = Codec()
    decoded = codec.decode(codec.encode(update, None, 1), state, 0.1, OptimizerConfig())
    assert all(torch.equal(decoded[k], update[k]) and not torch.equal(decoded[k], state[k]) for k in state)
