"""Round r+1's messages go out before round r's callbacks: on fedsim's Ray actors its clients train while the
server evaluates round r; a run stopped in between leaves the pool idle and no shared-memory file behind."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import make_config, metrics_only, read_rounds
from fedsim.engine import ray_grid
from fedsim.engine.simulation import simulate
from fedsim.privacy import Observation, PrivacyAttack, ServerView
from fedsim.strategy import LocalResult, LocalTask
from strategies.fedavg import FedAvg

RUN = ("dataset=digits", "num_clients=6", "clients_per_round=4", "rounds=3")


class MarkingFedAvg(FedAvg):
    """FedAvg whose clients append their round to the file ``marks`` as they start training."""

    def __init__(self, marks: str) -> None:
        self.marks = marks

    def local_update(self, task: LocalTask) -> LocalResult:
        with open(self.marks, "a") as f:
            f.write(f"{task.round}\n")
        return super().local_update(task)


class AwaitsNextRound(PrivacyAttack):
    """In round 1's callbacks, waits up to ``wait_s`` for a client of round 2 to start; raises if none does,
    or (``stop``) once one has."""

    def __init__(self, marks: str, wait_s: float, stop: bool = False) -> None:
        self.marks, self.wait_s, self.stop = marks, wait_s, stop

    def observe(self, view: ServerView) -> Observation | None:
        if view.round != 1:
            return None
        deadline = time.monotonic() + self.wait_s
        while "2" not in Path(self.marks).read_text().split():
            if time.monotonic() > deadline:
                raise RuntimeError("no client of round 2 started during round 1's callbacks")
            time.sleep(0.02)
        if self.stop:
            raise RuntimeError("stopped after round 2 had started")
        return None


def probed(marks: Path, wait_s: float, stop: bool = False) -> tuple[str, ...]:
    return (f"strategy._target_={__name__}.MarkingFedAvg", f"+strategy.marks={marks}", f"privacy_attack._target_={__name__}.AwaitsNextRound",
            f"+privacy_attack.marks={marks}", f"+privacy_attack.wait_s={wait_s}", f"+privacy_attack.stop={stop}")


def test_ray_actors_train_the_next_round_during_the_callbacks_and_compute_what_inline_does(tmp_path):
    simulate(make_config(*RUN, "backend=ray", *probed(tmp_path / "ray.marks", wait_s=60)), tmp_path / "ray", progress=False)
    with pytest.raises(RuntimeError, match="no client of round 2 started"):  # inline delivers when the loop asks
        simulate(make_config(*RUN, "backend=inline", *probed(tmp_path / "inline.marks", wait_s=1)), tmp_path / "stuck", progress=False)
    plain = tmp_path / "inline"
    simulate(make_config(*RUN, "backend=inline", f"strategy._target_={__name__}.MarkingFedAvg", f"+strategy.marks={tmp_path / 'x'}"),
             plain, progress=False)
    assert metrics_only(read_rounds(tmp_path / "ray")) == metrics_only(read_rounds(plain))


def test_a_run_stopped_with_a_round_on_the_actors_leaves_the_pool_idle_and_no_file(tmp_path):
    run = ("dataset=mnist5k", *RUN[1:])  # a model whose arrays travel in shared-memory files (digits' are too small)
    with pytest.raises(RuntimeError, match="stopped after round 2 had started"):
        simulate(make_config(*run, "backend=ray", *probed(tmp_path / "marks", wait_s=60, stop=True)), tmp_path / "stopped", progress=False)
    folder, prefix = ray_grid._POOL.bulk
    assert not list(Path(folder).glob(f"{prefix}-*"))  # the round on the actors was drained, its files removed
    simulate(make_config(*run, "backend=ray"), tmp_path / "next", progress=False)  # the same pool serves the next run
    simulate(make_config(*run, "backend=inline"), tmp_path / "inline", progress=False)
    assert metrics_only(read_rounds(tmp_path / "next")) == metrics_only(read_rounds(tmp_path / "inline"))
