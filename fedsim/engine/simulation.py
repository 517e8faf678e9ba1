"""Running one configured simulation on a chosen backend.

``backend=inline``: the ServerApp logic drives an in-process ``InlineGrid`` (no Ray).
``backend=ray``: the same ClientApp on Ray actors, locally or on an existing cluster
(``backend.ray_address``): through fedsim's ``RayGrid`` and its pool of long-lived actors
(``backend.transport=actors``, the default), or through Flower's simulation engine
(``flwr.simulation.run_simulation``, ``backend.transport=flower``). All give identical
metrics for the same seed.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from flwr.app import Context
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from fedsim.engine.client_app import build_client_app
from fedsim.engine.cohort import cohort_runner
from fedsim.engine.context import Components, Config, RunContext, build_components, check_fit
from fedsim.engine.inline_grid import Cohort, InlineGrid
from fedsim.engine.loop import FederatedServer
from fedsim.engine.ray_grid import RayGrid, release_pool, worker_pool
from fedsim.results import RunRecorder
from fedsim.trackers import trackers_for

BACKENDS = ("inline", "ray")


def simulate(
    cfg: Config, out_dir: Path, progress: bool = True, ctx: RunContext | None = None, parts: Components | None = None
) -> dict[str, Any]:
    """Run the simulation described by the resolved config ``cfg``; results go to ``out_dir``.

    ``ctx``: the run context already built from this same ``cfg`` (a script running several
    simulations of one config loads the data once); built here when None. ``parts``: the server's
    components, already built from ``cfg`` and checked against ``ctx`` (:func:`check_fit`), as the CLI
    does before any work; built and checked here when None."""
    quiet_engine_logs(bool(cfg.get("verbose", False)))
    backend = cfg["backend"]["name"]
    if backend not in BACKENDS:
        raise ValueError(f"backend.name={backend!r}; valid: {', '.join(BACKENDS)}")
    started = time.perf_counter()
    if ctx is None:
        ctx = RunContext.from_config(cfg)
    elif ctx.cfg != cfg:
        raise ValueError("simulate: the run context was built from a different config")
    if parts is None:
        parts = build_components(cfg)
        check_fit(parts, ctx)
    recorder = RunRecorder(out_dir, trackers_for(cfg, out_dir))
    server = FederatedServer(ctx, parts, recorder, progress)
    with setup_left_to_rest():
        if backend == "inline":  # the frozen context is shared; the client side builds its own components
            run_inline(server, build_client_app(cfg, ctx), ctx.num_clients, cohort_runner(cfg, ctx))
        elif cfg["backend"].get("transport", "actors") == "actors":  # every Ray actor builds its own context and components
            run_actors(server, cfg)
        else:
            run_flower(server, build_client_app(cfg), cfg)
    return server.recorder.finish({"backend": backend, "wall_s": time.perf_counter() - started})


@contextmanager
def setup_left_to_rest() -> Iterator[None]:
    """For the rounds, the objects that exist when they start (data, config, models, the libraries' own) leave
    the cyclic garbage collector's generations (``gc.freeze``): its full collections, which would rescan them
    all every so many allocations (pauses of 0.3 s in a 100-client run), scan only what the rounds create.
    They rejoin afterwards, so a process running many simulations still collects them."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def run_inline(server: FederatedServer, client_app: Any, num_clients: int, cohort: Cohort | None = None) -> None:
    """Drive the rounds through an in-process Grid."""
    server.run(InlineGrid(client_app, num_clients, server_run(), cohort))


def run_actors(server: FederatedServer, cfg: Config) -> None:
    """Drive the rounds through fedsim's RayGrid on the process's pool of long-lived actors."""
    pool = worker_pool(cfg["backend"], bool(cfg.get("verbose", False)))
    with torch_threads(int(cfg["backend"]["client_threads"])):
        server.run(RayGrid(pool, cfg, int(cfg["num_clients"]), server_run()))


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """The server side on ``count`` torch threads, as inline's (the client app sets them in its process), so that it
    computes the same numbers; torch's default of every core would also fight the actors training the next round
    while the server evaluates (on 2 cores such a run's rounds took 13% longer)."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def server_run() -> Run:
    """The Flower run a Grid of this process serves, with the server's task identity set."""
    run = Run.create_empty(run_id=1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, run.run_id, SUPERLINK_NODE_ID
    return run


def run_flower(server: FederatedServer, client_app: Any, cfg: Config) -> None:
    """Drive the rounds through Flower's Ray simulation engine."""
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's future default, and no warning
    release_pool()  # fedsim's actors would hold the CPUs Flower's actors need
    backend = cfg["backend"]
    server_app = ServerApp()
    failure: list[BaseException] = []

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        try:
            server.run(grid)
        except BaseException as exc:  # Flower logs and swallows ServerApp errors: re-raise them below
            failure.append(exc)
            raise

    init_args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": bool(cfg.get("verbose", False))}
    if not cfg.get("verbose", False):
        init_args["logging_level"] = logging.ERROR
        hide_actor_shutdown_retries()
    if backend.get("ray_address"):
        init_args["address"] = backend["ray_address"]
    elif backend.get("num_cpus"):
        init_args["num_cpus"] = int(backend["num_cpus"])
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=int(cfg["num_clients"]),
        backend_name="ray",
        backend_config={
            # A client actor whose worker process dies is restarted, and the tasks it held are run once more
            # (client work is a pure function of the message, so a retry gives the same reply); a client
            # that kills its worker twice loses its round, never the run.
            "client_resources": {
                "num_cpus": backend["client_cpus"],
                "num_gpus": backend["client_gpus"],
                "max_restarts": -1,
                "max_task_retries": 1,
            },
            "init_args": init_args,
        },
        verbose_logging=bool(cfg.get("verbose", False)),
    )
    if failure:
        raise failure[0]


def hide_actor_shutdown_retries() -> None:
    """Drop Ray's notice that an actor's ``terminate`` call is retried at shutdown.

    Client actors allow one task retry (so a worker's death costs nothing); Flower ends
    them with ``exit_actor()``, which Ray reports as a retried failure on stdout. The
    notice is printed by Ray's driver-side error listener, whose printer is wrapped
    here; every other Ray error still prints.
    """
    import ray._private.worker as ray_worker

    printer = ray_worker.print_to_stdstream
    if getattr(printer, "fedsim_filtered", False):
        return

    def filtered(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        lines = [line for line in data.get("lines", []) if "ClientAppActor.terminate failed" not in line]
        if lines:
            printer({**data, "lines": lines}, *args, **kwargs)

    filtered.fedsim_filtered = True  # type: ignore[attr-defined]
    ray_worker.print_to_stdstream = filtered


def quiet_engine_logs(verbose: bool) -> None:
    """Flower's and Ray's log noise off unless ``verbose``; fedsim's own warnings stay on."""
    logging.getLogger("fedsim").setLevel(logging.INFO if verbose else logging.WARNING)
    for name in ("flwr", "ray"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.CRITICAL)
