"""The round, top to bottom (docs/architecture.md, "One round").

sample -> send payloads -> collect (decode, validate) -> server-side adversary -> screen ->
strategy.aggregate(updates, combine) -> check the new global state -> after-round callbacks
(central evaluation, privacy observers, rounds.jsonl, checkpoints). The server hosts every
client's persistent state and ships it with the client's message.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.checkpoint import CheckpointError, CheckpointStore, config_fingerprint
from fedsim.engine.callbacks import CentralEvaluation, Checkpointing, PrivacyObservers, Recording, RoundResult
from fedsim.engine.context import Components, RunContext
from fedsim.engine.detection import detection_scores
from fedsim.engine.harness import Truth
from fedsim.engine.nodes import discover
from fedsim.engine.replies import Collected, collect, dense_upload_bytes
from fedsim.results import RunRecorder
from fedsim.sampling import sample_clients
from fedsim.state import Tensors, record_nbytes, to_record
from fedsim.training import OptimizerConfig

log = logging.getLogger("fedsim")


class TooFewClients(RuntimeError):
    """Fewer than ``min_clients`` valid replies in a round: the run cannot go on meaningfully."""


class FederatedServer:
    """Drives the rounds of one run over any Flower ``Grid`` (Ray simulation or inline)."""

    def __init__(self, ctx: RunContext, parts: Components, recorder: RunRecorder, progress: bool = True) -> None:
        self.ctx, self.parts, self.recorder, self.progress = ctx, parts, recorder, progress
        self.cfg = ctx.cfg
        self.optimizer = OptimizerConfig(**self.cfg["optimizer"])
        self.truth = Truth.of(parts.attack, ctx.num_clients, ctx.seed)  # the harness's; never on the wire
        self.client_states: dict[int, dict[str, Any]] = {}
        self.checkpoints = CheckpointStore(recorder.out_dir / "checkpoints")
        self.fingerprint = config_fingerprint(self.cfg)
        self.callbacks = [
            CentralEvaluation(ctx, parts, self.truth),
            PrivacyObservers(ctx, parts, recorder.out_dir),
            Recording(recorder),
            Checkpointing(self.checkpoints, self.fingerprint, parts, recorder, int(self.cfg.get("checkpoint_every") or 0), ctx.rounds),
        ]

    def run(self, grid: Grid) -> Tensors:
        """Run all rounds (from the last checkpoint when resuming); returns the final global state."""
        node_of = discover(grid, self.ctx.num_clients)
        done, global_state = self.start()
        bar = tqdm(range(done + 1, self.ctx.rounds + 1), initial=done, total=self.ctx.rounds, desc="rounds", unit="round", disable=not self.progress)
        for server_round in bar:
            started = time.perf_counter()
            record, result = self.run_round(grid, node_of, server_round, global_state)
            for callback in self.callbacks:
                if isinstance(callback, Recording):
                    record["wall_s"] = time.perf_counter() - started
                callback.after_round(result, record)
            global_state = result.global_state
            bar.set_postfix(acc=f"{record['test_acc']:.4f}", loss=f"{record['test_loss']:.3f}")
        return global_state

    def start(self) -> tuple[int, Tensors]:
        """(rounds already done, global state): a fresh start, or the newest checkpoint when resuming."""
        global_state = self.parts.strategy.init_global(self.ctx.new_model())  # also sets up server-side attributes
        if not self.cfg.get("resume"):
            return 0, global_state
        checkpoint = self.checkpoints.load_latest(self.fingerprint)
        if checkpoint is None:
            raise CheckpointError(f"resume requested but {self.checkpoints.folder} holds no checkpoint")
        for kind, component in self.parts.by_kind().items():
            component.load_state_dict(checkpoint.components[kind])
        self.client_states = {cid: {k: to_record(v) for k, v in s.items()} for cid, s in checkpoint.client_states.items()}
        self.recorder.restore(checkpoint.records)
        log.warning("resumed from %s after round %d", self.checkpoints.folder, checkpoint.round)
        return checkpoint.round, checkpoint.global_state

    def run_round(self, grid: Grid, node_of: dict[int, int], server_round: int, global_state: Tensors) -> tuple[dict[str, Any], RoundResult]:
        strategy, defense = self.parts.strategy, self.parts.defense
        sampled = sample_clients(self.ctx.num_clients, int(self.cfg["clients_per_round"]), self.ctx.seed, server_round)
        round_config = {"round": server_round, **strategy.configure_round(server_round)}
        messages, bytes_down = self.messages(sampled, node_of, round_config, global_state)
        timeout = self.cfg.get("client_timeout_s")
        client_of = {node: cid for cid, node in node_of.items()}
        replies = [(client_of[r.metadata.src_node_id], r) for r in grid.send_and_receive(messages, timeout=timeout)]
        lr = float(round_config.get("lr", self.cfg["lr"]))
        expected = strategy.upload_shapes(global_state)
        got = collect(self.ctx, self.parts.codec, server_round, replies, global_state, expected, lr, self.optimizer, self.client_states)
        for cid in sorted(set(sampled) - {cid for cid, _ in replies}):
            got.fail(server_round, cid, "no reply" if timeout is None else f"no reply within client_timeout_s={timeout}")
        self.require_enough(server_round, got, len(sampled))
        self.forge(server_round, got)
        verdict = defense.screen(server_round, got.updates)
        kept = [u for u, keep in zip(got.updates, verdict.keep) if keep]
        new_state = global_state
        if kept:
            new_state = self.checked(server_round, strategy.aggregate(server_round, global_state, kept, defense.combiner() or strategy.combine), global_state)
        else:
            log.warning("round %d: no update to aggregate; the global model is unchanged", server_round)
        losses = [(u.metrics["train_loss"], u.num_examples) for u in got.updates if "train_loss" in u.metrics]
        dense = dense_upload_bytes(expected)
        roles = [self.truth.roles[u.client_id] for u in got.updates]
        kinds = [self.truth.kinds[u.client_id] for u in got.updates]
        record: dict[str, Any] = {
            "round": server_round,
            "train_loss": sum(l * n for l, n in losses) / sum(n for _, n in losses) if losses else None,
            "clients_sampled": len(sampled),
            "clients_aggregated": len(kept),
            "failures": got.failures,
            "rejected": got.rejected,
            "excluded": [u.client_id for u, keep in zip(got.updates, verdict.keep) if not keep],
            "bytes_up": sum(got.bytes_up.values()),
            "bytes_down": bytes_down,
            "clients": {
                str(u.client_id): {**u.metrics, "num_examples": u.num_examples, "bytes_up": got.bytes_up[u.client_id],
                                   "compression_ratio": dense / max(got.bytes_up[u.client_id], 1), "role": r, "kind": k, "label": label}
                for u, r, k, label in zip(got.updates, roles, kinds, verdict.labels)
            },
            "detection": detection_scores(roles, kinds, verdict.labels),
        }
        return record, RoundResult(server_round, global_state, new_state, got.updates, self.client_states)

    def messages(self, sampled: list[int], node_of: dict[int, int], round_config: dict[str, Any], global_state: Tensors) -> tuple[list[Message], int]:
        """Each sampled client's message (payload, config, extras, hosted state) and the downlink bytes."""
        strategy, shared = self.parts.strategy, to_record(global_state)
        messages, bytes_down = [], 0
        for cid in sampled:
            payload = strategy.payload_for(cid, global_state)
            content = {"arrays": shared if payload is global_state else to_record(payload), "config": ConfigRecord(round_config)}
            if extra := strategy.extra_for(cid):
                content["extra"] = to_record(extra)
            bytes_down += sum(record_nbytes(content[k]) for k in ("arrays", "extra") if k in content)
            messages.append(Message(RecordDict({**content, **self.client_states.get(cid, {})}), dst_node_id=node_of[cid],
                                    message_type="train", group_id=str(round_config["round"])))
        return messages, bytes_down

    def require_enough(self, server_round: int, got: Collected, sampled: int) -> None:
        min_clients = int(self.cfg.get("min_clients") or 1)
        if len(got.updates) < min_clients:
            raise TooFewClients(f"round {server_round}: only {len(got.updates)} of {sampled} sampled clients sent a valid update "
                                f"(min_clients={min_clients}); failures: {got.failures}; rejected: {got.rejected}")

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
        """The aggregate if it is finite and keeps every tensor's dtype and shape; else the previous state."""
        for name, old in old_state.items():
            new = new_state.get(name)
            if new is None or new.shape != old.shape or new.dtype != old.dtype or not bool(torch.isfinite(new).all()):
                log.warning("round %d: aggregate refused (%s is missing, reshaped, retyped or not finite); the global model is unchanged", server_round, name)
                return old_state
        return new_state
