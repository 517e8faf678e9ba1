"""fedsim's own Ray transport: a Flower Grid handing the round's messages to long-lived Ray actors.

Each actor (one per ``backend.client_cpus`` / ``client_gpus`` slot) holds the ClientApp, the data
and the components of the run it serves, built once, and runs chunks of messages. The pool and
Ray itself outlive a run: the next run of the same process (the jobs of a Hydra multirun) reuses
them and only pays for building its own ClientApp. The ServerApp/ClientApp/Message contract is
Flower's; only the delivery differs (``backend.transport=flower`` runs Flower's simulation engine).

Faults: an actor whose worker dies is replaced and its messages run once more (client work is a
pure function of the message); a second death is an error reply, so the client loses only that
round. ``client_timeout_s``: each message then runs alone, and an actor still busy past its
client's deadline is killed and replaced, so a straggler never delays the next round.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run

from fedsim.engine.inline_grid import SimulatedGrid, drop_hosted_state, timed_replies

log = logging.getLogger("fedsim")

Config = dict[str, Any]
CHUNKS_PER_ACTOR = 4  # without a timeout, a round's messages go out in about this many chunks per actor


def ray_module() -> Any:
    import ray

    return ray


class ClientWorker:
    """A Ray actor: runs chunks of messages through the ClientApp of the run they belong to."""

    def __init__(self) -> None:
        self.apps: dict[str, Any] = {}

    def run(self, key: str, cfg: Config, paths: list[str], items: list[tuple[Message, Context]]) -> list[tuple[Message, float]]:
        from fedsim.engine.client_app import build_client_app
        from fedsim.engine.simulation import cohort_runner

        if key not in self.apps:
            missing = [p for p in paths if p not in sys.path]  # the driver's import path of this run (a later run may add folders)
            if missing:
                sys.path.extend(missing)
                importlib.invalidate_caches()
            self.apps = {key: (build_client_app(cfg), cohort_runner(cfg))}  # one run at a time: the previous run's is dropped
        return list(timed_replies(*self.apps[key], items))


@dataclass(frozen=True)
class PoolSpec:
    """What a pool is made of; a run asking for another spec gets a new pool."""

    address: str | None
    size: int
    cpus: float
    gpus: float


class WorkerPool:
    """Long-lived :class:`ClientWorker` actors."""

    def __init__(self, spec: PoolSpec) -> None:
        ray = ray_module()
        self.spec = spec
        self.remote = ray.remote(num_cpus=spec.cpus, num_gpus=spec.gpus, max_restarts=0, max_task_retries=0)(ClientWorker)
        self.actors = [self.remote.remote() for _ in range(spec.size)]

    def replace(self, index: int) -> None:
        """Kill actor ``index`` (dead, or busy past a deadline) and start a fresh one in its place."""
        ray_module().kill(self.actors[index], no_restart=True)
        self.actors[index] = self.remote.remote()

    def close(self) -> None:
        for actor in self.actors:
            ray_module().kill(actor, no_restart=True)
        self.actors = []


_POOL: WorkerPool | None = None  # the process's pool, reused by every run asking for the same spec


def ensure_ray(backend: Config, verbose: bool) -> None:
    """Start a local Ray (or join ``backend.ray_address``) unless this process already has one; say so."""
    ray = ray_module()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")])  # actors import what we import
    args: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose}
    if not verbose:
        args["logging_level"] = logging.ERROR
    if backend.get("ray_address"):
        args["address"] = backend["ray_address"]
    elif backend.get("num_cpus"):
        args["num_cpus"] = int(backend["num_cpus"])
    where = f"joining the Ray cluster at {backend['ray_address']}" if backend.get("ray_address") else "starting a local Ray"
    print(f"fedsim: {where} (once per process; the runs after this one reuse it)", file=sys.stderr, flush=True)
    ray.init(**args)


def worker_pool(backend: Config, verbose: bool) -> WorkerPool:
    """The process's pool for this backend config: reused when it matches, else (re)built."""
    global _POOL
    if not ray_module().is_initialized():
        _POOL = None  # Ray was shut down (Flower's engine does at the end of its run): the actors are gone
    ensure_ray(backend, verbose)
    cpus, gpus = float(backend["client_cpus"]), float(backend["client_gpus"])
    available = ray_module().cluster_resources()
    size = int(available.get("CPU", 1) // cpus)
    if gpus > 0:
        size = min(size, int(available.get("GPU", 0) // gpus))
    spec = PoolSpec(backend.get("ray_address"), max(size, 1), cpus, gpus)
    if _POOL is None or _POOL.spec != spec:
        if _POOL is not None:
            _POOL.close()
        _POOL = WorkerPool(spec)
    return _POOL


def release_pool() -> None:
    """Shut down the process's Ray, and with it the pool, if fedsim started them (before Flower's engine starts
    Ray and actors of its own: the pool would hold the CPUs they need)."""
    global _POOL
    if _POOL is not None and ray_module().is_initialized():
        ray_module().shutdown()
    _POOL = None


class RayGrid(SimulatedGrid):
    """A Grid of ``num_nodes`` nodes whose messages run on a :class:`WorkerPool`."""

    def __init__(self, pool: WorkerPool, cfg: Config, num_nodes: int, run: Run) -> None:
        super().__init__(num_nodes, run)
        self.pool = pool
        self._key = json.dumps(cfg, sort_keys=True, default=str)
        self._cfg = ray_module().put(cfg)
        self._paths = list(sys.path)
        self._vectorize = bool(cfg["backend"].get("vectorize"))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("RayGrid delivers through send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("RayGrid delivers through send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Run every message on the pool; returns the replies in message order, without the clients that took
        longer than ``timeout`` seconds (measured from when their message started on an actor)."""
        ray = ray_module()
        messages = list(messages)
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
        per_actor = 1 if self._vectorize else CHUNKS_PER_ACTOR  # a vectorised chunk is one cohort per actor
        size = 1 if timeout is not None else max(1, math.ceil(len(messages) / (per_actor * len(self.pool.actors))))
        queue = [(list(range(i, min(i + size, len(messages)))), 0) for i in range(0, len(messages), size)]
        replies: dict[int, Message] = {}
        idle = list(range(len(self.pool.actors)))
        running: dict[Any, tuple[int, list[int], int, float]] = {}  # ref -> (actor, message indices, attempt, start)
        while queue or running:
            while idle and queue:
                actor, (chunk, attempt) = idle.pop(), queue.pop(0)
                items = [(messages[i], self._contexts[messages[i].metadata.dst_node_id]) for i in chunk]
                running[self.pool.actors[actor].run.remote(self._key, self._cfg, self._paths, items)] = (actor, chunk, attempt, time.monotonic())
            done, _ = ray.wait(list(running), num_returns=1, timeout=None if timeout is None else 0.05)
            for ref in done:
                actor, chunk, attempt, _ = running.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayActorError:  # the worker died: a fresh actor, the chunk once more
                    self.pool.replace(actor)
                    if attempt == 0:
                        queue.insert(0, (chunk, 1))
                    else:
                        replies.update({i: died_twice(messages[i]) for i in chunk})
                else:
                    replies.update({i: reply for i, (reply, seconds) in zip(chunk, results) if timeout is None or seconds <= timeout})
                    for i in chunk:
                        drop_hosted_state(messages[i])
                idle.append(actor)
            if timeout is not None:
                for ref, (actor, _, _, started) in list(running.items()):
                    if time.monotonic() - started > timeout:  # its client is not heard; its actor is replaced
                        del running[ref]
                        self.pool.replace(actor)
                        idle.append(actor)
        return [replies[i] for i in sorted(replies)]


def died_twice(message: Message) -> Message:
    reason = "the client's Ray worker died twice running this message"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
