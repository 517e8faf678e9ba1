"""Optional trackers: TensorBoard event files and a local MLflow store mirror rounds.jsonl."""

from __future__ import annotations

import struct

import pytest
from tensorboardX.proto.event_pb2 import Event

from fedsim.config import validate
from fedsim.params import ParamError as ConfigError
from fedsim.engine.simulation import simulate
from fedsim.trackers import scalars

from conftest import make_config, read_rounds


def tensorboard_scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> step -> value, read from the TFRecord framing of every event file in ``folder``."""
    found: dict[str, dict[int, float]] = {}
    for path in folder.glob("events.out.tfevents.*"):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                found.setdefault(value.tag, {})[event.step] = value.simple_value
    return found


def test_trackers_are_off_by_default(tmp_path):
    simulate(make_config(), tmp_path, progress=False)
    assert not (tmp_path / "tensorboard").exists() and not (tmp_path / "mlruns").exists()


def test_tensorboard_and_mlflow_mirror_the_round_records(tmp_path):
    from mlflow.tracking import MlflowClient

    summary = simulate(make_config("tracking.tensorboard=true", "tracking.mlflow=true"), tmp_path, progress=False)
    rounds = read_rounds(tmp_path)
    expected = {r["round"]: pytest.approx(r["test_acc"], abs=1e-6) for r in rounds}

    board = tensorboard_scalars(tmp_path / "tensorboard")
    assert board["test_acc"] == expected
    assert set(board) >= {"test_loss", "bytes_up", "detection/tp", "summary/final_test_acc"}

    client = MlflowClient(tracking_uri=(tmp_path / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([client.get_experiment_by_name("fedsim").experiment_id])
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "test_acc")} == expected
    assert run.data.metrics["summary/final_test_acc"] == pytest.approx(summary["final_test_acc"])
    assert run.data.params["strategy._target_"].endswith("FedAvg") and run.data.params["rounds"] == "2"
    assert run.info.status == "FINISHED"


def test_scalars_flatten_numbers_and_skip_the_rest():
    record = {"round": 3, "test_acc": 0.5, "clients": {"0": {"x": 1}}, "failures": [], "detection": {"tp": 1, "precision": None}, "ok": True}
    assert scalars(record) == {"test_acc": 0.5, "detection/tp": 1.0}


def test_tracker_switch_must_be_boolean():
    with pytest.raises(ConfigError, match="tracking.mlflow='yes': must be true or false"):
        validate(make_config("tracking.mlflow=yes"))
