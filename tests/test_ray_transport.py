"""fedsim's Ray transport: Ray and the actor pool start once per process and are reused by the next runs."""

from __future__ import annotations

import ray

from conftest import make_config, metrics_only, read_rounds
from fedsim.engine import ray_grid
from fedsim.engine.simulation import simulate

RUN = ("backend=ray", "dataset=digits", "num_clients=6", "clients_per_round=4", "rounds=2")


def test_ray_starts_once_with_one_line_and_the_next_runs_reuse_it_and_its_actors(tmp_path, capfd):
    ray.shutdown()  # as in a fresh process
    simulate(make_config(*RUN), tmp_path / "first", progress=False)
    first = capfd.readouterr().err
    assert first.count("fedsim: starting a local Ray") == 1
    pool, actors = ray_grid._POOL, list(ray_grid._POOL.actors)
    simulate(make_config(*RUN, "lr=0.1"), tmp_path / "second", progress=False)  # another job of a sweep
    simulate(make_config(*RUN, "strategy=fedprox"), tmp_path / "third", progress=False)
    assert "starting a local Ray" not in capfd.readouterr().err
    assert ray_grid._POOL is pool and ray_grid._POOL.actors == actors  # the same live actors served every run
    inline = tmp_path / "inline"
    simulate(make_config(*RUN[1:], "strategy=fedprox", "backend=inline"), inline, progress=False)
    assert metrics_only(read_rounds(tmp_path / "third")) == metrics_only(read_rounds(inline))  # a reused actor rebuilt its client side


def test_flowers_engine_shutting_ray_down_does_not_strand_the_pool(tmp_path):
    simulate(make_config(*RUN), tmp_path / "actors", progress=False)
    simulate(make_config(*RUN, "backend.transport=flower"), tmp_path / "flower", progress=False)  # ends with ray.shutdown()
    simulate(make_config(*RUN), tmp_path / "again", progress=False)
    assert metrics_only(read_rounds(tmp_path / "again")) == metrics_only(read_rounds(tmp_path / "actors")) \
        == metrics_only(read_rounds(tmp_path / "flower"))
