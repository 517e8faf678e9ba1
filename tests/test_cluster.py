"""Cluster execution: a job joins a running Ray cluster; a sweep runs through a submitit launcher."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_module

TINY = ["dataset=digits", "rounds=1", "num_clients=2", "clients_per_round=2", "progress=false"]
RAY_PORTS = (
    "port", "ray-client-server-port", "node-manager-port", "object-manager-port", "runtime-env-agent-port",
    "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain ``text`` (Ray's processes name their session folder)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in args:
            found.append(args)
    return found


def wait_for_port(port: int, head: subprocess.Popen, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray head exited: {head.stdout.read()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"ray head did not open port {port} within {timeout_s:.0f} s")


@contextmanager
def ray_cluster() -> Iterator[tuple[subprocess.Popen, str, str]]:
    """A one-node Ray cluster on loopback with private ports and temp folder; stops only it on exit.

    ``ray start --block`` ends the processes it started when it is terminated, so no
    ``ray stop`` (which would stop every Ray on the machine) is needed.
    """
    temp_dir = tempfile.mkdtemp(prefix="fsr", dir="/tmp")  # short: Ray's socket paths are limited to 107 bytes
    ports = {name: free_port() for name in RAY_PORTS}
    head = subprocess.Popen(
        [
            sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--num-cpus=2",
            "--node-ip-address=127.0.0.1", "--include-dashboard=false", "--disable-usage-stats",
            f"--temp-dir={temp_dir}", *(f"--{name}={port}" for name, port in ports.items()),
        ],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        wait_for_port(ports["port"], head)
        yield head, f"127.0.0.1:{ports['port']}", temp_dir
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        deadline = time.monotonic() + 30
        while processes_mentioning(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.cluster
def test_job_joins_a_running_ray_cluster_which_stops_cleanly(tmp_path):
    out = tmp_path / "run"
    with ray_cluster() as (head, address, temp_dir):
        result = subprocess.run(
            [sys.executable, "-m", "fedsim", "backend=ray", f"backend.ray_address={address}", *TINY, f"hydra.run.dir={out}"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        # the job ran on the cluster, not on a Ray of its own: its workers logged into the cluster's session
        assert list(Path(temp_dir).glob("session_*/logs/worker-*"))
        # Flower's ray.shutdown() only disconnected the driver: the cluster is still up
        assert head.poll() is None and processes_mentioning(temp_dir)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["backend"] == "ray" and summary["rounds"] == 1 and summary["final_test_acc"] > 0.3
    assert head.returncode is not None and not processes_mentioning(temp_dir)


@pytest.mark.cluster
def test_sweep_through_submitit_local_launcher(tmp_path):
    sweep = tmp_path / "multirun"
    result = subprocess.run(
        [sys.executable, "-m", "fedsim", "-m", "hydra/launcher=local", "backend=inline", *TINY,
         "strategy=fedavg,fedprox", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Submitit 'local' sweep" in result.stdout + result.stderr
    assert len(list((sweep / ".submitit").glob("*/*_submission.sh"))) + len(list((sweep / ".submitit").glob("*/*.pkl"))) > 0
    report = subprocess.run([sys.executable, "-m", "fedsim.report", str(sweep)], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    table = pd.read_csv(sweep / "report.csv")
    assert sorted(table["strategy"]) == ["fedavg", "fedprox"] and table["final_acc"].gt(0.3).all()


def test_slurm_preset_composes_to_submitits_slurm_launcher():
    with initialize_config_module(config_module="fedsim.conf", version_base=None):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.cpus_per_task, launcher.tasks_per_node, launcher.array_parallelism) == (4, 1, 64)
