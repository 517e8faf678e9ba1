"""The round, top to bottom (docs/architecture.md, "One round").

sample -> send payloads -> collect (decode, validate) -> server-side adversary -> (the server's own
update on its root dataset, for a defense that asks for one) -> screen ->
strategy.aggregate(updates, combine) -> check the new global state -> send the next round's
messages -> after-round callbacks (central evaluation, privacy observers, rounds.jsonl,
checkpoints). The server hosts every client's persistent state and ships it with the client's message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.checkpoint import CheckpointError, CheckpointStore, numbers_config
from fedsim.engine.callbacks import CentralEvaluation, Checkpointing, PrivacyObservers, Recording, RoundResult
from fedsim.engine.context import Components, RunContext
from fedsim.engine.harness import Truth
from fedsim.engine.messages import train_messages
from fedsim.engine.nodes import discover
from fedsim.engine.outbound import Outbound
from fedsim.engine.replies import Collected, collect, require_enough
from fedsim.engine.root_training import RootTraining
from fedsim.engine.state_store import ClientStateStore
from fedsim.engine.round_record import round_record
from fedsim.engine.weights import cap_weight_shares
from fedsim.network import AdversarialDelivery
from fedsim.results import RunRecorder
from fedsim.sampling import sample_clients
from fedsim.state import Tensors, to_record
from fedsim.training import OptimizerConfig
from fedsim.validation import aggregate_problem

log = logging.getLogger("fedsim")


class FederatedServer:
    """Drives the rounds of one run over any Flower ``Grid`` (Ray simulation or inline)."""

    def __init__(self, ctx: RunContext, parts: Components, recorder: RunRecorder, progress: bool = True) -> None:
        self.ctx, self.parts, self.recorder, self.progress = ctx, parts, recorder, progress
        self.cfg = ctx.cfg
        self.optimizer = OptimizerConfig(**self.cfg["optimizer"])
        self.truth = Truth.of(parts.attack, ctx.num_clients, ctx.seed)  # the harness's; never on the wire
        byzantine = frozenset(c for c in range(ctx.num_clients) if self.truth.malicious(c))
        parts.strategy.bind_network(AdversarialDelivery(byzantine, ctx.seed))
        root_size = parts.defense.root_examples()
        self.root = RootTraining.drawn(ctx, self.optimizer, root_size) if root_size else None
        budget = self.cfg.get("client_state_memory_mb")
        self.client_states = ClientStateStore(recorder.out_dir / "client_states", None if budget is None else int(float(budget) * 2**20))
        self.checkpoints = CheckpointStore(recorder.out_dir / "checkpoints")
        self.callbacks = [
            CentralEvaluation(ctx, parts, self.truth),
            PrivacyObservers(ctx, parts, recorder.out_dir),
            Recording(recorder),
            Checkpointing(self.checkpoints, numbers_config(self.cfg), parts, recorder, int(self.cfg.get("checkpoint_every") or 0), ctx.rounds),
        ]

    def run(self, grid: Grid) -> Tensors:
        """Run all rounds (from the last checkpoint when resuming); returns the final global state.

        Round r+1's messages are sent once round r's global state is made, before round r's callbacks
        (:mod:`~fedsim.engine.outbound`); a round's ``wall_s`` runs from the end of the previous round's
        callbacks to its own record, so the rounds' wall times add up to the run's."""
        node_of = discover(grid, self.ctx.num_clients)
        client_of = {node: cid for cid, node in node_of.items()}
        done, global_state = self.start()
        bar = tqdm(range(done + 1, self.ctx.rounds + 1), initial=done, total=self.ctx.rounds, desc="rounds", unit="round", disable=not self.progress)
        started, sent = time.perf_counter(), None
        try:
            sent = self.send(grid, node_of, done + 1, global_state) if done < self.ctx.rounds else None
            for server_round in bar:
                record, result = self.run_round(sent, client_of, global_state, started)
                sent = self.send(grid, node_of, server_round + 1, result.global_state) if server_round < self.ctx.rounds else None
                for callback in self.callbacks:
                    callback.after_round(result, record)
                global_state = result.global_state
                bar.set_postfix(acc=f"{record['test_acc']:.4f}", loss=f"{record['test_loss']:.3f}")
                started = time.perf_counter()
        finally:
            if sent is not None:
                sent.cancel()
            self.client_states.close()
        return global_state

    def start(self) -> tuple[int, Tensors]:
        """(rounds already done, global state): a fresh start, or the newest checkpoint when resuming."""
        global_state = self.parts.strategy.init_global(self.ctx.new_model())  # also sets up server-side attributes
        if not self.cfg.get("resume"):
            return 0, global_state
        checkpoint = self.checkpoints.load_latest(self.cfg)
        if checkpoint is None and self.cfg["resume"] == "auto":
            log.warning("resume=auto: %s holds no checkpoint; starting afresh", self.checkpoints.folder)
            return 0, global_state
        if checkpoint is None:
            raise CheckpointError(f"resume requested but {self.checkpoints.folder} holds no checkpoint; "
                                  "resume=auto starts afresh when there is none")
        for kind, component in self.parts.by_kind().items():
            component.load_state_dict(checkpoint.components[kind])
        for cid, entries in checkpoint.client_states.items():
            self.client_states.restore(cid, {k: to_record(v) for k, v in entries.items()}, checkpoint.client_states.version(cid))
        self.recorder.restore(checkpoint.records)
        log.warning("resumed from %s after round %d", self.checkpoints.folder, checkpoint.round)
        return checkpoint.round, checkpoint.global_state

    def send(self, grid: Grid, node_of: dict[int, int], server_round: int, global_state: Tensors) -> Outbound:
        """Sample the round's clients and send each its message (started at once on a Grid that can post)."""
        strategy = self.parts.strategy
        sampled = sample_clients(self.ctx.num_clients, int(self.cfg["clients_per_round"]), self.ctx.seed, server_round)
        round_config = {"round": server_round, **strategy.configure_round(server_round)}
        messages, bytes_down = train_messages(strategy, sampled, node_of, round_config, global_state, self.client_states)
        return Outbound.send(grid, server_round, sampled, round_config, messages, bytes_down, self.cfg.get("client_timeout_s"))

    def run_round(self, sent: Outbound, client_of: dict[int, int], global_state: Tensors, started: float) -> tuple[dict[str, Any], RoundResult]:
        """Receive the round ``sent`` (``client_of``: node id -> client id), then collect, screen and aggregate."""
        strategy, defense = self.parts.strategy, self.parts.defense
        server_round, sampled, round_config, timeout = sent.round, sent.sampled, sent.round_config, sent.timeout
        replies = [(client_of[r.metadata.src_node_id], r) for r in sent.receive()]
        lr = float(round_config.get("lr", self.cfg["lr"]))
        expected = strategy.upload_shapes(global_state)
        got = collect(self.ctx, self.parts.codec, server_round, replies, global_state, expected, lr, self.optimizer,
                      self.client_states, strategy.upload_dtypes(global_state))
        for cid in sorted(set(sampled) - {cid for cid, _ in replies}):
            got.fail(server_round, cid, "no reply" if timeout is None else f"no reply within client_timeout_s={timeout}")
        require_enough(server_round, got, len(sampled), int(self.cfg.get("min_clients") or 1))
        self.forge(server_round, got)
        if self.root is not None:
            defense.observe_root_update(server_round, self.root.update(server_round, global_state, lr))
        verdict = defense.screen(server_round, got.updates)
        kept = cap_weight_shares([u for u, keep in zip(got.updates, verdict.keep) if keep], self.cfg.get("max_weight_share"))
        new_state = global_state
        if kept:
            new_state = self.checked(server_round, strategy.aggregate(server_round, global_state, kept, defense.combiner() or strategy.combine), global_state)
        else:
            log.warning("round %d: no update to aggregate; the global model is unchanged", server_round)
        record = round_record(server_round, sampled, got, verdict, sent.bytes_down, expected, self.truth)
        return record, RoundResult(server_round, global_state, new_state, got.updates, self.client_states, started)

    def forge(self, server_round: int, got: Collected) -> None:
        """The server-side adversary writes its clients' uploads after seeing the honest ones."""
        malicious = [i for i, u in enumerate(got.updates) if self.truth.malicious(u.client_id)]
        if not malicious:
            return
        honest = [u.update for u in got.updates if not self.truth.malicious(u.client_id)]
        forged = self.parts.attack.forge(server_round, honest, [got.updates[i].client_id for i in malicious])
        for i, tensors in zip(malicious, forged or []):
            got.updates[i].update = tensors

    def checked(self, server_round: int, new_state: Tensors, old_state: Tensors) -> Tensors:
        """The aggregate, or the previous state when the aggregate is malformed or not finite."""
        if (problem := aggregate_problem(new_state, old_state)) is None:
            return new_state
        log.warning("round %d: aggregate refused (%s); the global model is unchanged", server_round, problem)
        return old_state
