"""One-byte SPSA: bit-exact server rebuild from seeds + bytes, one byte per step, the code, learning."""

from __future__ import annotations

import math

import pytest
import torch
from flwr.app import ArrayRecord, RecordDict

from fedsim.compression.spsa import LogByteCode, OneByteSPSA, SpsaHeader
from conftest import Run
from fedsim.seeding import torch_generator
from fedsim.state import ClientState
from fedsim.strategy import LocalTask
from conftest import make_config

HEADER_BYTES = 24
OVERRIDES = ["compression=spsa_one_byte", "model.hidden=[16]", "num_clients=4", "lr=0.01", "batch_size=32"]


def client_round(env: Run, client_id: int, server_round: int) -> tuple[LocalTask, ArrayRecord, dict]:
    """What the client pipeline does: the strategy's local update with the codec's (zeroth-order) estimator, then encode."""
    model = env.new_model()
    global_state = env.strategy.init_global(model)
    x, y = env.client_data(client_id)
    task = LocalTask(
        round=server_round, client_id=client_id, model=model, global_state=global_state, x=x, y=y, lr=0.01,
        local_epochs=2, batch_size=32, generator=torch_generator(env.seed, "train", server_round, client_id),
        client_state=ClientState(RecordDict()), gradient=env.codec.gradient_estimator(server_round, client_id),
    )
    result = env.strategy.local_update(task)
    return task, env.codec.encode(result.update, task.client_state, server_round), result.update


def replay(codec: OneByteSPSA, record: ArrayRecord, task: LocalTask) -> dict:
    return codec.decode(record, task.global_state, task.lr, task.optimizer)


@pytest.fixture(scope="module")
def env() -> Run:
    return Run(make_config(*OVERRIDES))


def test_spsa_server_rebuild_equals_client_model_bit_for_bit(env: Run) -> None:
    task, record, client_delta = client_round(env, client_id=2, server_round=3)
    assert any(bool(d.abs().sum() > 0) for d in client_delta.values())  # it trained
    fresh = OneByteSPSA(seed=env.seed)  # any participant: nothing shared but the run seed and the public settings
    delta = replay(fresh, record, task)
    assert set(delta) == set(client_delta) and all(torch.equal(delta[k], client_delta[k]) for k in delta)


def test_spsa_rebuild_needs_the_shared_seed(env: Run) -> None:
    task, record, client_delta = client_round(env, client_id=0, server_round=1)
    wrong = replay(OneByteSPSA(seed=env.seed + 1), record, task)
    assert not torch.equal(wrong["net.1.weight"], client_delta["net.1.weight"])


def test_spsa_message_is_one_byte_per_step_plus_header(env: Run) -> None:
    task, record, _ = client_round(env, client_id=1, server_round=1)
    steps = 2 * math.ceil(len(task.y) / 32)
    assert set(record) == {"header", "codes"}
    assert record["codes"].numpy().dtype == "int8" and record["codes"].numpy().shape == (steps,)
    assert record["header"].numpy().nbytes == HEADER_BYTES
    header = SpsaHeader.unpack(record["header"].numpy())
    assert (header.round, header.client_id, header.steps) == (1, 1, steps)
    assert env.codec.wire_bytes(record) == steps + HEADER_BYTES


def test_spsa_run_uploads_one_byte_per_step_and_loss_falls_with_clients_joining_and_leaving(run_sim) -> None:
    _, records, _ = run_sim(*OVERRIDES, "model.hidden=[]", "rounds=12", "num_clients=6", "clients_per_round=3")
    seen = [set(r["clients"]) for r in records]
    assert len(set().union(*seen)) == 6 and any(a != b for a, b in zip(seen, seen[1:]))  # membership changes
    for record in records:
        assert record["rejected"] == [] and record["failures"] == [] and record["clients_aggregated"] == 3
        for client in record["clients"].values():
            assert client["bytes_up"] == math.ceil(client["num_examples"] / 32) + HEADER_BYTES  # 1 epoch, batch 32
            assert client["compression_ratio"] > 20
    assert records[-1]["test_loss"] < records[0]["test_loss"] - 0.4


def test_spsa_byte_code_is_logarithmic_signed_and_clipped() -> None:
    code = LogByteCode.spanning(1e-4, 1e2)
    header = SpsaHeader(1, 0, 0, 1e-3, code.log2_min, code.log2_step)
    assert header.code == code and OneByteSPSA(seed=0, grad_min=1e-4, grad_max=1e2).code == code
    header = code
    assert header.quantize(0.0) == 0 and header.dequantize(0) == 0.0
    assert header.quantize(1e-6) == 0 and header.quantize(float("nan")) == 0
    assert header.quantize(1e9) == 127 and header.quantize(-float("inf")) == -127
    max_error = 2 ** (code.log2_step / 2) - 1
    for g in torch.logspace(-3.999, 2, 200, dtype=torch.float64).tolist():
        for signed in (g, -g):
            byte = header.quantize(signed)
            assert -127 <= byte <= 127 and math.copysign(1, byte) == math.copysign(1, signed)
            assert abs(header.dequantize(byte) / signed - 1) <= max_error + 1e-12
            assert header.quantize(header.dequantize(byte)) == byte


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"eps": 0}, "compression.eps"), ({"grad_min": -1}, "compression.grad_min"), ({"grad_max": 1e-5}, "compression.grad_max")],
)
def test_spsa_rejects_bad_hyperparameters(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        OneByteSPSA(seed=0, **kwargs)


def test_spsa_malformed_message_is_refused(env: Run) -> None:
    task, record, _ = client_round(env, client_id=0, server_round=1)
    truncated = ArrayRecord({"header": record["header"], "codes": ArrayRecord(torch_state_dict={"c": torch.zeros(3, dtype=torch.int8)})["c"]})
    with pytest.raises(ValueError, match="int8 bytes"):
        replay(env.codec, truncated, task)


def test_spsa_ray_backend_matches_inline(run_sim) -> None:
    overrides = [*OVERRIDES, "model.hidden=[]", "rounds=2", "num_clients=2", "clients_per_round=2"]
    _, inline, _ = run_sim(*overrides)
    _, ray, _ = run_sim(*overrides, "backend=ray", "backend.num_cpus=2")
    assert [r["test_loss"] for r in ray] == [r["test_loss"] for r in inline]
    assert [r["bytes_up"] for r in ray] == [r["bytes_up"] for r in inline]
    assert all(r["rejected"] == [] and r["clients_aggregated"] == 2 for r in ray)
