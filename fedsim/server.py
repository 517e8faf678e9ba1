"""The server side of the simulation: the round loop run inside a Flower ServerApp.

Per round (DESIGN.md section 3): sample clients (seeded) -> send the global arrays
-> collect replies, decode, reject malformed or non-finite ones with a logged
reason -> privacy observers -> defense -> strategy.aggregate -> central
evaluation -> one record in rounds.jsonl.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.attack import MALICIOUS, Attack
from fedsim.client import TRUTH_KEY
from fedsim.environment import Config, Environment
from fedsim.results import RunRecorder
from fedsim.sampling import sample_clients
from fedsim.scoring import detection_scores
from fedsim.state import Tensors, record_nbytes, to_record
from fedsim.strategy import ClientUpdate
from fedsim.validation import update_problem

log = logging.getLogger("fedsim")


@dataclass
class Collected:
    """One round's replies, sorted into accepted updates and refusals."""

    updates: list[ClientUpdate] = field(default_factory=list)
    roles: list[str] = field(default_factory=list)  # true roles, for scoring only
    kinds: list[str] = field(default_factory=list)  # true attack types, for scoring only
    failures: list[dict[str, Any]] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    bytes_up: int = 0


def is_malicious(attack: Attack | None) -> bool:
    """Whether a client run by ``attack`` (None: no attack) is truly malicious."""
    return attack is not None and attack.role == MALICIOUS


class FederatedServer:
    """Drives the rounds of one run over any Flower ``Grid`` (Ray simulation or inline)."""

    def __init__(self, env: Environment, recorder: RunRecorder, progress: bool = True) -> None:
        self.env = env
        self.cfg: Config = env.cfg
        self.recorder = recorder
        self.progress = progress
        num_clients = int(self.cfg["num_clients"])
        # ground truth, for scoring only (strategies that report their honest clients' mean)
        self.honest_clients = [c for c in range(num_clients) if not is_malicious(env.attack.for_client(c, num_clients, env.seed))]

    def run(self, grid: Grid) -> Tensors:
        """Run all rounds; returns the final global state."""
        if hasattr(grid, "pull_interval"):
            grid.pull_interval = 0.005  # Flower's default 0.1 s poll dominates small rounds
        node_of = self.discover(grid)
        model = self.env.new_model()
        global_state = self.env.strategy.init_global(model)
        rounds = tqdm(range(1, int(self.cfg["rounds"]) + 1), desc="rounds", unit="round", disable=not self.progress)
        for server_round in rounds:
            record, global_state = self.run_round(grid, node_of, server_round, global_state)
            self.recorder.record(record)
            rounds.set_postfix(acc=f"{record['test_acc']:.4f}", loss=f"{record['test_loss']:.3f}")
        return global_state

    def discover(self, grid: Grid) -> dict[int, int]:
        """Ask every node which client (partition) it plays: client id -> node id."""
        nodes = self.wait_for_nodes(grid)
        queries = [Message(RecordDict(), dst_node_id=n, message_type="query", group_id="discover") for n in nodes]
        node_of = {}
        for reply in grid.send_and_receive(queries):
            if reply.has_error():
                raise RuntimeError(f"node {reply.metadata.src_node_id} failed to identify: {reply.error.reason}")
            node_of[int(reply.content["identity"]["partition_id"])] = reply.metadata.src_node_id
        missing = sorted(set(range(int(self.cfg["num_clients"]))) - set(node_of))
        if missing:
            raise RuntimeError(f"no Flower node plays clients {missing}")
        return node_of

    def wait_for_nodes(self, grid: Grid, timeout_s: float = 300.0) -> list[int]:
        """The node ids, once all ``num_clients`` nodes have registered (the Ray engine starts them lazily)."""
        expected, deadline = int(self.cfg["num_clients"]), time.monotonic() + timeout_s
        while len(nodes := list(grid.get_node_ids())) < expected:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(nodes)} of {expected} Flower nodes registered within {timeout_s:.0f} s")
            time.sleep(0.05)
        return nodes

    def run_round(
        self, grid: Grid, node_of: dict[int, int], server_round: int, global_state: Tensors
    ) -> tuple[dict[str, Any], Tensors]:
        """One round; returns its record and the new global state."""
        started = time.perf_counter()
        env, strategy = self.env, self.env.strategy
        sampled = sample_clients(int(self.cfg["num_clients"]), int(self.cfg["clients_per_round"]), env.seed, server_round)
        shared = to_record(global_state)
        arrays = {}
        for cid in sampled:
            payload = strategy.payload_for(cid, global_state)
            arrays[cid] = shared if payload is global_state else to_record(payload)
        config = ConfigRecord({"round": server_round, **strategy.configure_round(server_round)})
        messages = [
            Message(
                RecordDict({"arrays": arrays[cid], "config": config}),
                dst_node_id=node_of[cid],
                message_type="train",
                group_id=str(server_round),
            )
            for cid in sampled
        ]
        replies = grid.send_and_receive(messages)
        client_of = {node: cid for cid, node in node_of.items()}
        got = self.collect(server_round, replies, client_of, global_state)
        for cid in sorted(set(sampled) - {client_of[r.metadata.src_node_id] for r in replies}):
            got.failures.append({"client": cid, "reason": "no reply"})

        privacy = env.privacy.observe(server_round, global_state, got.updates, env, self.recorder.out_dir)
        verdict = env.defense.screen(server_round, got.updates)
        kept = [u for u, keep in zip(got.updates, verdict.keep) if keep]
        if verdict.combined is not None:  # a robust aggregate stands in for every kept update
            kept = [replace(u, update=verdict.combined) for u in kept]
        if kept:
            global_state = strategy.aggregate(server_round, global_state, kept)
        else:
            log.warning("round %d: no update to aggregate; the global model is unchanged", server_round)

        test_x, test_y = env.test_data()
        model = env.new_model()
        model.load_state_dict(global_state, strict=False)
        metrics = {
            **strategy.evaluate(global_state, env.new_model, test_x, test_y, self.honest_clients),
            **env.attack.test_metrics(model, test_x, test_y),
        }
        losses = [(u.metrics["train_loss"], u.num_examples) for u in got.updates if "train_loss" in u.metrics]
        train_loss = sum(l * n for l, n in losses) / sum(n for _, n in losses) if losses else None
        record: dict[str, Any] = {
            "round": server_round,
            **metrics,
            "train_loss": train_loss,
            "clients_sampled": len(sampled),
            "clients_aggregated": len(kept),
            "failures": got.failures,
            "rejected": got.rejected,
            "excluded": [u.client_id for u, keep in zip(got.updates, verdict.keep) if not keep],
            "bytes_up": got.bytes_up,
            "bytes_down": sum(record_nbytes(arrays[cid]) for cid in sampled),
            "clients": {
                str(u.client_id): {**u.metrics, "num_examples": u.num_examples, "role": r, "kind": k, "label": label}
                for u, r, k, label in zip(got.updates, got.roles, got.kinds, verdict.labels)
            },
            "detection": detection_scores(got.roles, got.kinds, verdict.labels),
            **privacy,
            "wall_s": time.perf_counter() - started,
        }
        return record, global_state

    def collect(
        self, server_round: int, replies: list[Message], client_of: dict[int, int], global_state: Tensors
    ) -> Collected:
        """Decode and validate the replies in client order; refusals are logged and recorded.

        Each accepted client's metrics keep its ``bytes_up`` (and ``compression_ratio``) for the record.
        """
        got = Collected()
        expected = self.env.strategy.upload_shapes(global_state)
        max_norm = self.cfg.get("max_update_norm")
        for reply in sorted(replies, key=lambda r: client_of[r.metadata.src_node_id]):
            cid = client_of[reply.metadata.src_node_id]
            if reply.has_error():
                log.warning("round %d: client %d failed: %s", server_round, cid, reply.error.reason)
                got.failures.append({"client": cid, "reason": reply.error.reason})
                continue
            try:
                metrics = dict(reply.content["metrics"])
                got.bytes_up += int(metrics["bytes_up"])
                truth = reply.content[TRUTH_KEY]
                num_examples = int(metrics.pop("num_examples"))
                update = self.env.codec.decode(reply.content["update"], global_state)
            except Exception as exc:  # a malformed reply must not stop the round
                problem = f"undecodable reply: {type(exc).__name__}: {exc}"
            else:
                problem = update_problem(update, expected, max_norm)
                if problem is None and num_examples <= 0:
                    problem = f"num_examples={num_examples} is not positive"
            if problem is not None:
                log.warning("round %d: rejected client %d: %s", server_round, cid, problem)
                got.rejected.append({"client": cid, "reason": problem})
                continue
            got.updates.append(ClientUpdate(cid, update, num_examples, {k: float(v) for k, v in metrics.items()}))
            got.roles.append(str(truth["role"]))
            got.kinds.append(str(truth["kind"]))
        return got
