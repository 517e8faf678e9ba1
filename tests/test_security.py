"""Hostile input: no code runs from a data file or a checkpoint, and no client reply can take
over the aggregate, break the results on disk or poison the hosted state. Each test fails on
the code of before this hardening."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from conftest import SMALL, Run, make_config, read_rounds
from fedsim.data import cifar10
from fedsim.engine.replies import collect
from fedsim.engine.simulation import simulate
from fedsim.engine.weights import capped_counts
from fedsim.results import RunRecorder
from fedsim.strategies.fedavg import FedAvg
from fedsim.strategy import LocalResult
from fedsim.training import OptimizerConfig

CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class Payload:
    """Unpickling this runs ``touch <marker>``: the marker file appears iff the loader ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def fedsim_cli(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedsim", *SMALL, *overrides], capture_output=True, text=True, timeout=300)


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


# --- code execution from files ------------------------------------------------------------


def test_a_payload_planted_in_a_checkpoint_never_runs(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    args = ("rounds=2", "checkpoint_every=1")
    simulate(make_config(*args), run_dir, progress=False)

    def plant(path: Path) -> None:
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["records"][0]["note"] = Payload(marker)  # otherwise a genuine, loadable checkpoint
        torch.save(checkpoint, path)

    plant(run_dir / "checkpoints" / "round_000002.pt")  # the newest only: the resume falls back to round 1's
    result = fedsim_cli(*args, f"resume={run_dir}")
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert "round_000002.pt is unusable" in output and "refused by the weights-only loader" in output
    for path in (run_dir / "checkpoints").glob("*.pt"):
        plant(path)
    result = fedsim_cli(*args, f"resume={run_dir}")  # both planted: one line, nothing run
    assert result.returncode == 2
    assert last_line(result).startswith("fedsim: error: no usable checkpoint in")
    assert not marker.exists()


def write_cifar(folder: Path, protocol: int, n: int = 2) -> dict[str, np.ndarray]:
    """The CIFAR-10 python batches, pickled with ``protocol`` (the real files are protocol 2, from Python 2)."""
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True)
    written = {}
    for i, name in enumerate(CIFAR_BATCHES):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {b"batch_label": name.encode(), b"data": data, b"labels": [(i + j) % 10 for j in range(n)],
                 b"filenames": [f"img{j}.png".encode() for j in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=protocol))
        written[name] = data
    return written


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_the_restricted_unpickler_reads_every_pickle_protocol(tmp_path: Path, protocol: int) -> None:
    written = write_cifar(tmp_path / "cifar-10-batches-py", protocol)
    data = cifar10(str(tmp_path))
    np.testing.assert_array_equal(np.rint(data.denormalise(data.x_test) * 255).reshape(2, -1), written["test_batch"])


@pytest.mark.parametrize("name", CIFAR_BATCHES)
@pytest.mark.parametrize("whole_file", [False, True])
def test_a_payload_in_a_cifar_batch_never_runs(tmp_path: Path, name: str, whole_file: bool) -> None:
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "pwned"
    write_cifar(folder, protocol=2)
    planted = Payload(marker) if whole_file else {b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": Payload(marker)}
    (folder / name).write_bytes(pickle.dumps(planted, protocol=2))
    with pytest.raises(ValueError, match=rf"{name}: not a CIFAR batch \(refused global posix.system"):
        cifar10(str(tmp_path))
    assert not marker.exists()


def test_a_planted_cifar_batch_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    folder, marker = tmp_path / "cifar-10-batches-py", tmp_path / "pwned"
    write_cifar(folder, protocol=2)
    (folder / "data_batch_3").write_bytes(pickle.dumps(Payload(marker), protocol=2))
    result = fedsim_cli("dataset=cifar10", f"dataset.root={tmp_path}", "model=cnn")
    assert result.returncode == 2
    assert result.stderr.strip() == last_line(result)  # exactly one line
    assert last_line(result).startswith("fedsim: error: ") and "data_batch_3: not a CIFAR batch" in last_line(result)
    assert not marker.exists()


# --- clients that lie -----------------------------------------------------------------------


class InflatingLiar(FedAvg):
    """Client 0 claims 10**12 examples and uploads its update sign-flipped and scaled by 10."""

    def local_update(self, task):
        result = super().local_update(task)
        if task.client_id != 0:
            return result
        return LocalResult({k: -10 * v for k, v in result.update.items()}, 10**12, result.metrics)


def test_a_client_claiming_more_examples_than_it_holds_is_rejected(run_sim) -> None:
    _, records, _ = run_sim("strategy._target_=tests.test_security.InflatingLiar", "rounds=3")
    for record in records:
        assert [r["client"] for r in record["rejected"]] == [0]
        assert "num_examples=1000000000000 exceeds the client's partition" in record["rejected"][0]["reason"]
    assert records[-1]["test_acc"] > 0.6  # the honest clients trained the model


def test_capped_counts_water_fill_to_the_share() -> None:
    counts = [1000.0, 10.0, 10.0, 10.0]
    capped = capped_counts(counts, 0.4)
    assert capped[1:] == [10.0, 10.0, 10.0]
    assert capped[0] / sum(capped) == pytest.approx(0.4, abs=1e-9) and capped[0] / sum(capped) <= 0.4
    assert capped_counts([5.0, 5.0, 4.0], 0.5) == [5.0, 5.0, 4.0]  # no one above the share: unchanged
    assert capped_counts([9.0, 3.0, 1.0], 0.2) == [1.0, 1.0, 1.0]  # below 1/3 no cap holds: all equal
    two_big = capped_counts([100.0, 90.0, 5.0, 5.0], 0.3)
    assert max(two_big) / sum(two_big) == pytest.approx(0.3, abs=1e-9) and two_big[0] == pytest.approx(two_big[1])


def test_max_weight_share_caps_the_largest_client_of_a_skewed_partition(run_sim) -> None:
    skewed = ("partition=dirichlet", "partition.alpha=0.1", "num_clients=4", "clients_per_round=4", "rounds=2")
    _, free, _ = run_sim(*skewed)
    _, capped, _ = run_sim(*skewed, "max_weight_share=0.3")
    sizes = [c["num_examples"] for c in free[0]["clients"].values()]
    assert max(sizes) / sum(sizes) > 0.3  # the cap binds on this partition
    assert [c["num_examples"] for c in capped[0]["clients"].values()] == sizes  # the record keeps the claimed counts
    assert capped[-1]["test_loss"] != free[-1]["test_loss"]


def reply(update: dict[str, torch.Tensor], metrics: dict, state: dict[str, torch.Tensor] | None = None, node: int = 1001) -> Message:
    content = RecordDict({"update": ArrayRecord(torch_state_dict=update), "metrics": MetricRecord(metrics)})
    if state is not None:
        content["state.residual"] = ArrayRecord(torch_state_dict=state)
    request = Message(RecordDict(), dst_node_id=node, message_type="train", group_id="1")
    request.metadata.__dict__["_message_id"] = str(uuid4())
    return Message(content, reply_to=request)


@pytest.fixture(scope="module")
def server():
    run = Run(make_config("max_client_state_mb=0.01"))
    return run, run.strategy.init_global(run.new_model())


def collected(server, *replies: Message, client_states: dict | None = None):
    run, state = server
    return collect(run.ctx, run.codec, 1, list(enumerate(replies)), state, run.strategy.upload_shapes(state), 0.1,
                   OptimizerConfig(), {} if client_states is None else client_states, run.strategy.upload_dtypes(state))


def small_update(state: dict[str, torch.Tensor], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, 0.01, dtype=dtype) for k, v in state.items()}


def test_a_float64_upload_is_rejected_so_the_model_stays_float32(server) -> None:
    got = collected(server, reply(small_update(server[1], torch.float64), {"num_examples": 10}))
    assert not got.updates and "dtype torch.float64, expected torch.float32" in got.rejected[0]["reason"]


def test_a_list_metric_rejects_the_reply_instead_of_crashing_the_server(server) -> None:
    got = collected(server, reply(small_update(server[1]), {"num_examples": 10, "train_loss": [1.0, 2.0]}),
                    reply(small_update(server[1]), {"num_examples": 10, "train_loss": 0.5}, node=1002))
    assert [u.client_id for u in got.updates] == [1]
    assert "metric 'train_loss' is a list" in got.rejected[0]["reason"]


def test_a_rejected_reply_commits_no_client_state_and_states_are_bounded(server) -> None:
    states: dict = {0: {"state.residual": ArrayRecord(torch_state_dict={"r": torch.zeros(3)})}}
    before = states[0]["state.residual"]
    nan_update = {k: v * float("nan") for k, v in small_update(server[1]).items()}
    collected(server, reply(nan_update, {"num_examples": 10}, {"r": torch.ones(3)}), client_states=states)
    assert states[0]["state.residual"] is before  # the refused round left the hosted state as it was
    got = collected(server, reply(small_update(server[1]), {"num_examples": 10}, {"r": torch.full((3,), float("nan"))}),
                    reply(small_update(server[1]), {"num_examples": 10}, {"r": torch.zeros(10_000)}, node=1002))
    reasons = [r["reason"] for r in got.rejected]
    assert "client state state.residual/r contains NaN or Inf" in reasons[0]
    assert "exceeds max_client_state_mb=0.01" in reasons[1]


def test_a_client_cannot_overwrite_the_measured_bytes_up(server, tmp_path: Path) -> None:
    from fedsim.defense import Verdict
    from fedsim.engine.harness import Truth
    from fedsim.engine.round_record import round_record

    run, state = server
    got = collected(server, reply(small_update(state), {"num_examples": 10, "bytes_up": -5, "role": 7.0}))
    record = round_record(1, [0], got, Verdict([True], ["benign"]), 0, run.strategy.upload_shapes(state), Truth.of(run.attack, 4, 0))
    assert record["bytes_up"] == record["clients"]["0"]["bytes_up"] == sum(4 * v.numel() for v in state.values())
    assert record["clients"]["0"]["role"] == "benign"


def test_non_finite_numbers_are_written_as_null_so_the_files_stay_strict_json(tmp_path: Path) -> None:
    recorder = RunRecorder(tmp_path)
    recorder.record({"round": 1, "train_loss": float("nan"), "test_acc": 0.5, "test_loss": float("inf"), "bytes_up": 1,
                     "bytes_down": 1, "failures": [], "rejected": [], "clients": {"0": {"x": float("-inf")}}})
    recorder.finish({})

    def strict(text: str):
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))

    record = strict((tmp_path / "rounds.jsonl").read_text())
    assert record["train_loss"] is None and record["test_loss"] is None and record["clients"]["0"]["x"] is None
    assert strict((tmp_path / "summary.json").read_text())["final_test_loss"] is None


class HugeUploads(FedAvg):
    """Every client uploads 3e38 in every entry: finite, but the aggregate overflows to Inf."""

    def local_update(self, task):
        result = super().local_update(task)
        return LocalResult({k: torch.full_like(v, 3e38) for k, v in result.update.items()}, result.num_examples, result.metrics)


def test_an_overflowing_aggregate_is_refused_and_the_global_model_stays_finite(tmp_path: Path, caplog) -> None:
    cfg = make_config("strategy._target_=tests.test_security.HugeUploads", "rounds=3", "checkpoint_every=3")
    simulate(cfg, tmp_path, progress=False)
    final = torch.load(tmp_path / "checkpoints" / "round_000003.pt", weights_only=True)["global_state"]
    assert all(bool(torch.isfinite(t).all()) for t in final.values())
    assert any("aggregate refused" in m for m in caplog.messages)
    json.loads((tmp_path / "summary.json").read_text(), parse_constant=lambda token: pytest.fail(token))
    assert len(read_rounds(tmp_path)) == 3
