"""fedsim's own Ray transport: a Flower Grid handing the round's messages to long-lived Ray actors.

Each actor (one per ``backend.client_cpus`` / ``client_gpus`` slot) holds the ClientApp, the data
and the components of the run it serves, built once, and runs chunks of messages. The pool and
Ray itself outlive a run: the next run of the same process (the jobs of a Hydra multirun) reuses
them and only pays for building its own ClientApp. The ServerApp/ClientApp/Message contract is
Flower's; only the delivery differs (``backend.transport=flower`` runs Flower's simulation engine).

Faults: an actor whose worker dies is replaced and its messages run once more, each alone (client
work is a pure function of the message); a second death is an error reply, so only the client that
kills its worker loses that round. ``client_timeout_s``: each message then runs alone, and an actor still busy past its
client's deadline is killed and replaced, so a straggler never delays the next round.
"""

from __future__ import annotations

import importlib
import logging
import os
import pickle
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

from flwr.app import Context, Error, Message
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run

from fedsim.engine.bulk_pickle import BulkWriter, bulk_folder, remove_leftovers
from fedsim.engine.client_app import build_client_app, config_key
from fedsim.engine.cohort import cohort_runner
from fedsim.engine.inline_grid import SimulatedGrid, timed_replies
from fedsim.state import drop_hosted_state

log = logging.getLogger("fedsim")

Config = dict[str, Any]
CHUNKS_PER_ACTOR = 4  # without a timeout, a round's messages go out in at most this many chunks per actor...
MIN_CHUNK_S = 0.05  # ...each taking about this long at least: a Ray call costs milliseconds of every core


def ray_module() -> Any:
    import ray

    return ray


Items = list[tuple[Message, Context]]
Timed = list[tuple[Message, float]]


class ClientWorker:
    """A Ray actor: runs chunks of messages through the ClientApp of the run they belong to.

    ``items``: the chunk, or its :class:`~fedsim.engine.bulk_pickle.BulkWriter` pickle when ``bulk`` names the
    (folder, prefix) of this machine's shared-memory files; the replies then come back the same way, as
    (pickle, its file or None)."""

    def __init__(self) -> None:
        self.apps: dict[str, Any] = {}

    def run(self, key: str, cfg: Config, paths: list[str], items: Items | bytes, bulk: tuple[str, str] | None = None) -> Timed | tuple[bytes, str | None]:
        if bulk is None:
            return self.replies(key, cfg, paths, items)  # type: ignore[arg-type]
        writer = BulkWriter(Path(bulk[0]), bulk[1])
        packed = writer.dumps(self.replies(key, cfg, paths, pickle.loads(items)))  # type: ignore[arg-type]
        return packed, str(writer.path) if writer.used else None

    def replies(self, key: str, cfg: Config, paths: list[str], items: Items) -> Timed:
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
    """Long-lived :class:`ClientWorker` actors. On a local Ray (all actors on this machine) chunks and replies
    carry their arrays through shared-memory files (:mod:`~fedsim.engine.bulk_pickle`), ``bulk``; on a
    cluster, through Ray."""

    def __init__(self, spec: PoolSpec) -> None:
        ray = ray_module()
        self.spec = spec
        self.remote = ray.remote(num_cpus=spec.cpus, num_gpus=spec.gpus, max_restarts=0, max_task_retries=0)(ClientWorker)
        self.actors = [self.remote.remote() for _ in range(spec.size)]
        self.bulk = None if spec.address else (str(bulk_folder()), f"fedsim-{os.getpid()}-{uuid4().hex[:8]}")

    def replace(self, index: int) -> None:
        """Kill actor ``index`` (dead, or busy past a deadline) and start a fresh one in its place."""
        ray_module().kill(self.actors[index], no_restart=True)
        self.actors[index] = self.remote.remote()

    def close(self) -> None:
        for actor in self.actors:
            ray_module().kill(actor, no_restart=True)
        self.actors = []
        if self.bulk is not None:
            remove_leftovers(Path(self.bulk[0]), self.bulk[1])


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
        self._key = config_key(cfg)
        self._cfg = cfg  # small: inline in each call (a put object costs a store round trip per call)
        self._paths = list(sys.path)
        self._vectorize = bool(cfg["backend"].get("vectorize"))
        self._message_s: float | None = None  # the mean seconds a message of the last round took on an actor

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError("RayGrid delivers through send_and_receive only")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError("RayGrid delivers through send_and_receive only")

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Run every message on the pool; returns the replies in message order, without the clients that took
        longer than ``timeout`` seconds (measured from when their message started on an actor)."""
        return self.post(messages, timeout=timeout).receive()

    def post(self, messages: Iterable[Message], *, timeout: float | None = None) -> Delivery:
        """Start the messages on the pool and return at once: the first chunk of each actor is on its way (two
        without a timeout); :meth:`Delivery.receive` sends the rest as actors free up and collects the replies.

        Without a timeout the messages go out in near-equal chunks, two queued on each actor so that none waits
        for the driver between chunks: one cohort per actor when vectorised, else up to ``CHUNKS_PER_ACTOR``
        per actor (for balance) as long as a chunk takes ``MIN_CHUNK_S`` by the last round's clients (one
        per actor in round 1). With a timeout, each message alone, one at a time per actor, so its clock
        starts when it starts."""
        messages = list(messages)
        for message in messages:
            message.metadata.__dict__["_message_id"] = str(uuid4())
        actors = len(self.pool.actors)
        count = len(messages) if timeout is not None else min(len(messages), actors * self.chunks_per_actor(len(messages)))
        queue = [(list(chunk), 0) for chunk in even_chunks(len(messages), count)]
        writer = BulkWriter(Path(self.pool.bulk[0]), self.pool.bulk[1]) if self.pool.bulk else None
        return Delivery(self, messages, queue, 1 if timeout is not None else 2, timeout, writer)

    def chunks_per_actor(self, count: int) -> int:
        if self._vectorize or self._message_s is None:
            return 1
        return max(1, min(CHUNKS_PER_ACTOR, int(self._message_s * count / (len(self.pool.actors) * MIN_CHUNK_S))))


class Delivery:
    """One batch of messages on a :class:`RayGrid`'s pool, from its first chunks' start to the last reply."""

    def __init__(self, grid: RayGrid, messages: list[Message], queue: list[tuple[list[int], int]], depth: int,
                 timeout: float | None, writer: BulkWriter | None) -> None:
        self.grid, self.pool, self.messages, self.queue = grid, grid.pool, messages, queue
        self.depth, self.timeout, self.writer = depth, timeout, writer
        self.replies: dict[int, Message] = {}
        self.took: list[float] = []  # seconds each finished message took on its actor
        self.load = {actor: 0 for actor in range(len(self.pool.actors))}  # chunks queued or running on each actor
        self.running: dict[Any, tuple[int, list[int], int, float]] = {}  # ref -> (actor, message indices, attempt, start)
        self.submit()

    def submit(self) -> None:
        """Queued chunks onto the actors with room: spread first, then queued up to ``depth`` per actor."""
        for actor in [a for level in range(self.depth) for a in self.load if self.load[a] <= level]:
            if not self.queue:
                break
            chunk, attempt = self.queue.pop(0)
            items = [(self.messages[i], self.grid._contexts[self.messages[i].metadata.dst_node_id]) for i in chunk]
            packed = items if self.writer is None else self.writer.dumps(items)
            ref = self.pool.actors[actor].run.remote(self.grid._key, self.grid._cfg, self.grid._paths, packed, self.pool.bulk)
            self.running[ref], self.load[actor] = (actor, chunk, attempt, time.monotonic()), self.load[actor] + 1

    def receive(self) -> list[Message]:
        """Every reply, in message order (faults and deadlines handled as the module says)."""
        ray, timeout = ray_module(), self.timeout
        try:
            while self.queue or self.running:
                self.submit()
                done, _ = ray.wait(list(self.running), num_returns=1, timeout=None if timeout is None else 0.05)
                for ref in done:
                    self.settle(ref)
                if timeout is not None:
                    for ref, (actor, _, _, started) in list(self.running.items()):
                        if time.monotonic() - started > timeout:  # its client is not heard; its actor is replaced
                            del self.running[ref]
                            self.pool.replace(actor)
                            self.load[actor] = 0
        finally:
            self.remove_files()
        if self.took:
            self.grid._message_s = sum(self.took) / len(self.took)
        return [self.replies[i] for i in sorted(self.replies)]

    def settle(self, ref: Any) -> None:
        """Take in a finished chunk: its replies, or (its worker died) its messages queued once more."""
        ray = ray_module()
        actor, chunk, attempt, _ = self.running.pop(ref)
        self.load[actor] -= 1
        try:
            results = unpack(ray.get(ref), self.writer is not None)
        except ray.exceptions.RayActorError:  # the worker died: a fresh actor, its chunks once more
            self.pool.replace(actor)
            for other, (owner, lost, tries, _) in list(self.running.items()):  # the chunk queued behind it died too
                if owner == actor:
                    del self.running[other]
                    self.queue.insert(0, (lost, tries))
            self.load[actor] = 0
            if attempt == 0:  # each of its messages alone: only the one that kills its worker again is lost
                self.queue[:0] = [([i], 1) for i in chunk]
            else:
                self.replies.update({i: died_twice(self.messages[i]) for i in chunk})
        else:
            self.replies.update({i: reply for i, (reply, seconds) in zip(chunk, results) if self.timeout is None or seconds <= self.timeout})
            self.took.extend(seconds for _, seconds in results)
            for i in chunk:
                drop_hosted_state(self.messages[i])

    def cancel(self) -> None:
        """Give the delivery up (its run stopped): the chunks already on the actors finish and their replies are
        dropped, so the pool is idle for the next run and no reply file is left; the rest never start."""
        self.queue.clear()
        ray = ray_module()
        try:
            if self.running:
                ray.wait(list(self.running), num_returns=len(self.running))
            for ref in list(self.running):
                try:
                    unpack(ray.get(ref), self.writer is not None)
                except ray.exceptions.RayError:
                    pass  # a chunk that failed left no reply file
            self.running.clear()
        finally:
            self.remove_files()

    def remove_files(self) -> None:
        if self.writer is not None:
            self.writer.remove()


def even_chunks(n: int, count: int) -> list[range]:
    """``range(n)`` in ``count`` consecutive chunks whose sizes differ by at most one."""
    size, extra = divmod(n, max(count, 1))
    starts = [i * size + min(i, extra) for i in range(count + 1)]
    return [range(starts[i], starts[i + 1]) for i in range(count) if starts[i + 1] > starts[i]]


def unpack(result: Any, bulk: bool) -> Timed:
    """An actor's replies, read back from its shared-memory pickle (whose file is then deleted) when ``bulk``."""
    if not bulk:
        return result
    packed, path = result
    try:
        return pickle.loads(packed)
    finally:
        if path is not None:
            Path(path).unlink(missing_ok=True)


def died_twice(message: Message) -> Message:
    reason = "the client's Ray worker died twice running this message"
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
