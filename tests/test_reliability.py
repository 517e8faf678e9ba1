"""Checkpoint/resume and fault tolerance: a killed run resumes to the same numbers, faults cost one
client round, and too few replies stop the run clearly."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from fedsim.checkpoint import read_checkpoint

from conftest import cli_in_process, make_config, metrics_only, read_rounds
from fedsim.engine.replies import TooFewClients
from fedsim.engine.simulation import simulate

# Stateful on both sides: FedSpeed (client correction h_i + the server's sum of h_i), DGC (client
# residuals and momenta), MUD-HoG (server-side update histories), with one sign-flipper.
STATEFUL = [
    "dataset=digits",
    "num_clients=6",
    "clients_per_round=6",
    "rounds=8",
    "strategy=fedspeed",
    "compression=dgc",
    "attack=sign_flip",
    "attack.fraction=0.17",
    "defense=mudhog",
    "backend=inline",
    "progress=false",
    "checkpoint_every=1",
]


def fedsim_process(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "fedsim", *STATEFUL, f"hydra.run.dir={run_dir}", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = process.communicate(timeout=300)
    return subprocess.CompletedProcess(process.args, process.returncode, out, err)


def checkpoint_at(run_dir: Path, rnd: int) -> dict:
    """A round's checkpoint as a dict, its client states read in."""
    checkpoint = read_checkpoint(run_dir / "checkpoints" / f"round_{rnd:06d}.pt")
    return {**vars(checkpoint), "client_states": dict(checkpoint.client_states)}


def assert_equal_nested(a, b, where: str = "") -> None:
    """Tensors bit-equal, containers equal in structure, everything else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)) and a and isinstance(a[0], torch.Tensor):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b or str(a) == str(b), where


def assert_same_run(a: Path, b: Path, last_round: int) -> None:
    """Same round records, and bit-equal global, client and component state in the final checkpoints."""
    assert metrics_only(read_rounds(a)) == metrics_only(read_rounds(b))
    ca, cb = checkpoint_at(a, last_round), checkpoint_at(b, last_round)
    for part in ("global_state", "client_states", "components"):
        assert_equal_nested(ca[part], cb[part], part)
    assert ca["client_states"], "the run kept no client state"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reliability") / "uninterrupted"
    result = finish(fedsim_process(run_dir))
    assert result.returncode == 0, result.stderr
    return run_dir


def test_sigkill_mid_run_then_resume_equals_uninterrupted(uninterrupted, tmp_path):
    run_dir = tmp_path / "killed"
    process = fedsim_process(run_dir)
    deadline = time.monotonic() + 240
    while not (run_dir / "checkpoints" / "round_000003.pt").exists():
        assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run_dir / "summary.json").exists()  # killed before the end
    assert len(read_rounds(run_dir)) < 8

    result = finish(fedsim_process(run_dir, "resume=true"))
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stdout + result.stderr
    assert_same_run(run_dir, uninterrupted, 8)


def test_resume_skips_a_truncated_checkpoint(uninterrupted, tmp_path):
    run_dir = tmp_path / "corrupt"
    shutil.copytree(uninterrupted, run_dir)
    newest = run_dir / "checkpoints" / "round_000008.pt"
    newest.write_bytes(newest.read_bytes()[:1000])
    result = finish(fedsim_process(run_dir, f"resume={run_dir}"))
    assert result.returncode == 0, result.stderr
    assert "round_000008.pt is unusable" in result.stdout + result.stderr
    assert_same_run(run_dir, uninterrupted, 8)  # round 8 redone from the round-7 checkpoint


def test_all_checkpoints_corrupt_is_one_clear_error_and_loses_nothing(uninterrupted, tmp_path):
    run_dir = tmp_path / "all_corrupt"
    shutil.copytree(uninterrupted, run_dir)
    for path in (run_dir / "checkpoints").glob("*.pt"):
        path.write_bytes(b"garbage")
    rounds_before = (run_dir / "rounds.jsonl").read_text()
    result = finish(fedsim_process(run_dir, "resume=true"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("fedsim: error: no usable checkpoint in")
    assert (run_dir / "rounds.jsonl").read_text() == rounds_before


def test_resume_under_another_config_is_refused(uninterrupted, tmp_path):
    run_dir = tmp_path / "other"
    shutil.copytree(uninterrupted, run_dir)
    result = finish(fedsim_process(run_dir, "resume=true", "lr=0.5"))
    assert result.returncode == 2
    assert "different config (lr: 0.05 -> 0.5); refusing to resume" in result.stderr


@pytest.fixture
def faulty_module(tmp_path, monkeypatch):
    """A test-only component: client 1 kills its own process ``kills`` times (default once), then never
    again (the marker file); client 2 stalls ``stall_s`` on its first call."""
    (tmp_path / "faulty.py").write_text(
        textwrap.dedent(
            """
            import os, signal, time
            from fedsim.attack import Attack


            class Faulty(Attack):
                def __init__(self, marker, stall_s=0.0, kills=1, client=None):
                    self.marker, self.stall_s, self.kills, self.client = marker, stall_s, kills, client

                def for_client(self, client_id, num_clients, seed):
                    return Faulty(self.marker, self.stall_s, self.kills, client_id) if client_id in (1, 2) else None

                def poison_data(self, x, y, generator):
                    killed = sum(os.path.exists(f"{self.marker}.{i}") for i in range(self.kills))
                    if self.client == 1 and not os.path.exists(self.marker) and killed < self.kills:
                        open(f"{self.marker}.{killed}", "w").close()
                        if killed + 1 == self.kills:
                            open(self.marker, "w").close()
                        os.kill(os.getpid(), signal.SIGKILL)
                    if self.client == 2 and self.stall_s and not os.path.exists(self.marker + ".stalled"):
                        open(self.marker + ".stalled", "w").close()
                        time.sleep(self.stall_s)
                    return x, y
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield str(tmp_path / "marker")
    sys.modules.pop("faulty", None)


def test_killed_ray_worker_is_restarted_and_its_clients_rerun(run_sim, faulty_module):
    """Client 1 SIGKILLs its Ray worker mid-round: Ray restarts the actor, the lost client rounds run
    again from their messages, and the run ends exactly as one without the fault."""
    _, killed, _ = run_sim("backend=ray", "rounds=3", "attack._target_=faulty.Faulty", f"+attack.marker={faulty_module}")
    assert os.path.exists(faulty_module)  # the worker really was killed
    assert [r["failures"] for r in killed] == [[], [], []]
    _, plain, _ = run_sim("backend=inline", "rounds=3")
    assert metrics_only(killed) == metrics_only(plain)


def test_a_client_that_kills_its_ray_worker_twice_loses_only_that_round(run_sim, faulty_module):
    """The retry dies too: client 1's round-1 contribution is lost, the run and every other client go on."""
    _, rounds, _ = run_sim("backend=ray", "rounds=3", "attack._target_=faulty.Faulty", f"+attack.marker={faulty_module}",
                           "+attack.kills=2")
    assert os.path.exists(f"{faulty_module}.1")  # killed twice
    assert [f["client"] for f in rounds[0]["failures"]] == [1]
    assert rounds[0]["clients_aggregated"] == 3
    assert [(r["failures"], r["clients_aggregated"]) for r in rounds[1:]] == [([], 4), ([], 4)]


# Deadlines with structural margins: a stall of 8 s against a 4 s deadline, while a cold client's
# first round takes about 1 s, so the verdict never depends on how warm the process is.
TIMEOUT, STALL = "client_timeout_s=4.0", "+attack.stall_s=8.0"


def test_client_over_the_timeout_loses_its_round(run_sim, faulty_module, caplog):
    open(faulty_module, "w").close()  # no kill here: only the stall
    _, rounds, _ = run_sim("rounds=2", TIMEOUT, "attack._target_=faulty.Faulty", f"+attack.marker={faulty_module}", STALL)
    assert rounds[0]["failures"] == [{"client": 2, "reason": "no reply within client_timeout_s=4.0"}]
    assert rounds[0]["clients_aggregated"] == 3
    assert rounds[1]["failures"] == [] and rounds[1]["clients_aggregated"] == 4
    assert any("client 2 failed: no reply within" in m for m in caplog.messages)


def test_fewer_valid_replies_than_min_clients_stops_the_run(tmp_path, faulty_module):
    open(faulty_module, "w").close()
    cfg = make_config("min_clients=4", TIMEOUT, "attack._target_=faulty.Faulty", f"+attack.marker={faulty_module}", STALL)
    with pytest.raises(TooFewClients, match=r"round 1: only 3 of 4 sampled clients sent a valid update \(min_clients=4\)"):
        simulate(cfg, tmp_path / "run", progress=False)
    assert os.path.exists(faulty_module + ".stalled")


@pytest.fixture
def second_call_faults(tmp_path, monkeypatch):
    """A test-only component: on its second call (round 2) client 2 raises and client 3 stalls 8 s."""
    (tmp_path / "second_call.py").write_text(
        textwrap.dedent(
            """
            import os, time
            from fedsim.attack import Attack


            class SecondCallFaults(Attack):
                def __init__(self, folder, client=None):
                    self.folder, self.client = folder, client

                def for_client(self, client_id, num_clients, seed):
                    return SecondCallFaults(self.folder, client_id) if client_id in (2, 3) else None

                def poison_data(self, x, y, generator):
                    marker = os.path.join(self.folder, f"called_{self.client}")
                    if not os.path.exists(marker):
                        open(marker, "w").close()
                    elif self.client == 2:
                        raise RuntimeError("client 2 breaks in round 2")
                    else:
                        time.sleep(8.0)
                    return x, y
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield str(tmp_path)
    sys.modules.pop("second_call", None)


def test_a_failed_or_silent_client_keeps_the_state_it_had(tmp_path, second_call_faults):
    """DGC's residuals live in client state: a client that raises, or misses the deadline, in round 2
    keeps its round-1 state (README, "Faults"), while the clients that replied move on."""
    run_dir = tmp_path / "run"
    simulate(make_config("compression=dgc", "rounds=2", "checkpoint_every=1", TIMEOUT, "attack._target_=second_call.SecondCallFaults",
                         f"+attack.folder={second_call_faults}"), run_dir, progress=False)
    after_1, after_2 = checkpoint_at(run_dir, 1), checkpoint_at(run_dir, 2)
    assert [f["client"] for f in after_2["records"][1]["failures"]] == [2, 3]
    for cid in (2, 3):
        assert after_1["client_states"][cid], "no state to keep"
        assert_equal_nested(after_2["client_states"][cid], after_1["client_states"][cid], f"client {cid}")
    for cid in (0, 1):  # the clients that replied did change theirs
        with pytest.raises(AssertionError):
            assert_equal_nested(after_2["client_states"][cid], after_1["client_states"][cid])


@pytest.mark.parametrize("transport", ["actors", "flower"])
def test_ray_run_checkpoints_the_same_state_as_inline(tmp_path, transport):
    """fedsim's actor pool and Flower's engine both deliver exactly what the inline Grid computes."""
    runs = {}
    for backend in ("inline", "ray"):
        cfg = make_config(*STATEFUL[:-2], f"backend={backend}", "rounds=3", "checkpoint_every=3",
                          *([f"backend.transport={transport}"] if backend == "ray" else []))
        simulate(cfg, tmp_path / backend, progress=False)
        runs[backend] = checkpoint_at(tmp_path / backend, 3)
    inline, ray = runs["inline"], runs["ray"]
    assert inline["records"] and metrics_only(inline["records"]) == metrics_only(ray["records"])
    assert_equal_nested(inline["client_states"], ray["client_states"], "client_states")
    assert_equal_nested(inline["global_state"], ray["global_state"], "global_state")


@pytest.mark.parametrize(
    ("component", "rounds", "every"),
    [
        (("strategy=monna", "strategy.f=1"), 6, 3),  # node models on the server, momenta in client state
        (("compression=spsa_one_byte",), 6, 3),
        (("compression=dgc", "clients_per_round=2"), 6, 3),  # residuals of clients sampled at different rounds
        # update histories and verdicts on the server: resumed from round 5, after MUD-HoG has flagged the flipper
        (("attack=sign_flip", "attack.fraction=0.25", "defense=mudhog"), 8, 5),
    ],
    ids=["monna", "spsa", "dgc", "mudhog"],
)
def test_resume_restores_component_state(tmp_path, component, rounds, every):
    """Every stateful component resumes exactly: drop the last checkpoint, resume from the one before."""
    overrides = [*component, f"rounds={rounds}", f"checkpoint_every={every}"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    simulate(make_config(*overrides), full, progress=False)
    shutil.copytree(full, resumed)
    (resumed / "checkpoints" / f"round_{rounds:06d}.pt").unlink()
    if "defense=mudhog" in component:  # the state being resumed holds a verdict, not only histories
        assert checkpoint_at(resumed, every)["components"]["defense"]["confirmed"]
    simulate(make_config(*overrides, "resume=true"), resumed, progress=False)
    assert_same_run(resumed, full, rounds)


def test_a_resume_on_another_backend_with_other_logging_continues_bit_identically(tmp_path):
    """Backend and logging are run control, not numbers: an inline run resumed on Ray, verbose and with
    another checkpoint interval, ends as the uninterrupted inline run."""
    overrides = ["compression=dgc", "attack=sign_flip", "attack.fraction=0.25", "defense=mudhog", "rounds=4"]
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    simulate(make_config(*overrides, "checkpoint_every=2"), full, progress=False)
    shutil.copytree(full, resumed)
    (resumed / "checkpoints" / "round_000004.pt").unlink()
    simulate(make_config(*overrides, "checkpoint_every=1", "backend=ray", "verbose=true", "resume=true"), resumed, progress=False)
    assert_same_run(resumed, full, 4)


LIGHT = ["dataset=digits", "num_clients=4", "clients_per_round=4", "backend=inline", "progress=false", "checkpoint_every=1"]


def test_resume_auto_starts_afresh_then_continues(tmp_path, monkeypatch):
    run_dir = tmp_path / "requeued"
    code, _, err = cli_in_process([*LIGHT, "rounds=2", "resume=auto", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch)
    assert code == 0, err
    code, _, err = cli_in_process([*LIGHT, "rounds=3", "resume=auto", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch)
    assert code == 0, err  # a longer horizon extends the finished run
    fresh = tmp_path / "fresh"
    code, _, err = cli_in_process([*LIGHT, "rounds=3", f"hydra.run.dir={fresh}"], tmp_path, monkeypatch)
    assert code == 0, err
    assert metrics_only(read_rounds(run_dir)) == metrics_only(read_rounds(fresh))  # 2 + 1 rounds == 3 rounds
    assert "rounds: 3" in (run_dir / "config.yaml").read_text()


def test_a_refused_resume_names_the_changed_fields_and_leaves_the_folder_untouched(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    code, _, err = cli_in_process([*LIGHT, "rounds=2", f"hydra.run.dir={run_dir}"], tmp_path, monkeypatch)
    assert code == 0, err
    before = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    code, _, err = cli_in_process([*LIGHT, "rounds=2", "lr=0.2", "backend.client_threads=2", f"resume={run_dir}"], tmp_path, monkeypatch)
    assert code == 2
    assert err.strip().splitlines()[-1].endswith("different config (backend.client_threads: 1 -> 2; lr: 0.05 -> 0.2); refusing to resume")
    assert {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()} == before  # config.yaml included


@pytest.fixture
def sleepy_module(tmp_path, monkeypatch):
    """A test-only component: client 2 sleeps ``stall_s`` in every round (a persistent straggler)."""
    (tmp_path / "sleepy.py").write_text(
        textwrap.dedent(
            """
            import time
            from fedsim.attack import Attack


            class Sleepy(Attack):
                def __init__(self, stall_s, client=None):
                    self.stall_s, self.client = stall_s, client

                def for_client(self, client_id, num_clients, seed):
                    return Sleepy(self.stall_s, client_id) if client_id == 2 else None

                def poison_data(self, x, y, generator):
                    time.sleep(self.stall_s)
                    return x, y
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("sleepy", None)


@pytest.mark.parametrize("attempt", [1, 2])
def test_a_ray_straggler_loses_only_its_own_rounds(tmp_path, sleepy_module, attempt):
    """With one spare actor per straggler, its late task never pushes the next round's clients past
    their deadline (Ray cannot interrupt a running actor task, so the late task keeps its actor
    until it ends: with no spare actor the next round's clients queue behind it, see README).
    Run in a fresh process, so that its Ray instance has the 5 actors asked for."""
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "fedsim", "dataset=digits", "num_clients=4", "clients_per_round=4", "progress=false",
         "backend=ray", "backend.num_cpus=5", "client_timeout_s=4.0", "attack._target_=sleepy.Sleepy", "+attack.stall_s=7.0",
         "rounds=4",
         f"hydra.run.dir={run_dir}"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    first, *later = read_rounds(run_dir)
    assert {"client": 2, "reason": "no reply within client_timeout_s=4.0"} in first["failures"]  # round 1 may also pay a cold worker
    for record in later:  # after it, the straggler's late task must cost no one else their round
        assert record["failures"] == [{"client": 2, "reason": "no reply within client_timeout_s=4.0"}]
        assert record["clients_aggregated"] == 3
