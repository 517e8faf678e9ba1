"""The server side of the simulation: the round loop run inside a Flower ServerApp.

Per round (DESIGN.md section 3): sample clients (seeded) -> send the global arrays
-> collect replies, decode, reject malformed or non-finite ones with a logged
reason -> privacy observers -> defense -> strategy.aggregate -> central
evaluation -> one record in rounds.jsonl -> a checkpoint every ``checkpoint_every``
rounds. The server also hosts every client's persistent state (shipped with the
client's message, returned with its reply), so checkpoints hold all of a run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid
from tqdm import tqdm

from fedsim.attack import MALICIOUS, Attack
from fedsim.checkpoint import Checkpoint, CheckpointError, CheckpointStore, config_fingerprint
from fedsim.client import TRUTH_KEY
from fedsim.environment import Config, Environment
from fedsim.results import RunRecorder
from fedsim.sampling import sample_clients
from fedsim.scoring import detection_scores
from fedsim.state import ClientState, Tensors, from_record, record_nbytes, state_entries, to_record
from fedsim.strategy import ClientUpdate, model_holding
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


class TooFewClients(RuntimeError):
    """Fewer than ``min_clients`` valid replies in a round: the run cannot go on meaningfully."""


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
        self.client_states: dict[int, dict[str, ArrayRecord]] = {}  # client id -> its persistent state
        self.checkpoints = CheckpointStore(recorder.out_dir / "checkpoints")
        self.fingerprint = config_fingerprint(self.cfg)

    def run(self, grid: Grid) -> Tensors:
        """Run all rounds (from the last checkpoint when resuming); returns the final global state."""
        if hasattr(grid, "pull_interval"):
            grid.pull_interval = 0.005  # Flower's default 0.1 s poll dominates small rounds
        node_of = self.discover(grid)
        done, global_state = self.start()
        total, every = int(self.cfg["rounds"]), int(self.cfg.get("checkpoint_every") or 0)
        rounds = tqdm(range(done + 1, total + 1), initial=done, total=total, desc="rounds", unit="round", disable=not self.progress)
        for server_round in rounds:
            record, global_state = self.run_round(grid, node_of, server_round, global_state)
            self.recorder.record(record)
            rounds.set_postfix(acc=f"{record['test_acc']:.4f}", loss=f"{record['test_loss']:.3f}")
            if every and (server_round % every == 0 or server_round == total):
                self.save_checkpoint(server_round, global_state)
        return global_state

    def components(self) -> dict[str, Any]:
        """The run's components by kind (each a :class:`fedsim.persistent.Persistent`)."""
        env = self.env
        return {"strategy": env.strategy, "attack": env.attack, "codec": env.codec, "defense": env.defense, "privacy": env.privacy}

    def start(self) -> tuple[int, Tensors]:
        """(rounds already done, global state): a fresh start, or the newest checkpoint when resuming."""
        # init_global also sets up a strategy's server-side attributes; a checkpoint then overwrites them
        global_state = self.env.strategy.init_global(self.env.new_model())
        if not self.cfg.get("resume"):
            return 0, global_state
        checkpoint = self.checkpoints.load_latest(self.fingerprint)
        if checkpoint is None:
            raise CheckpointError(f"resume requested but {self.checkpoints.folder} holds no checkpoint")
        for kind, component in self.components().items():
            component.load_state_dict(checkpoint.components[kind])
        self.client_states = {
            cid: {k: to_record(v) for k, v in states.items()} for cid, states in checkpoint.client_states.items()
        }
        self.recorder.restore(checkpoint.records)
        log.warning("resumed from %s after round %d", self.checkpoints.folder, checkpoint.round)
        return checkpoint.round, checkpoint.global_state

    def save_checkpoint(self, server_round: int, global_state: Tensors) -> None:
        """Everything the next rounds depend on, written atomically."""
        self.checkpoints.save(
            Checkpoint(
                round=server_round,
                fingerprint=self.fingerprint,
                global_state=global_state,
                client_states={cid: {k: from_record(v) for k, v in s.items()} for cid, s in self.client_states.items()},
                components={kind: c.state_dict() for kind, c in self.components().items()},
                records=list(self.recorder.records),
            )
        )

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
                RecordDict({"arrays": arrays[cid], "config": config, **self.client_states.get(cid, {})}),
                dst_node_id=node_of[cid],
                message_type="train",
                group_id=str(server_round),
            )
            for cid in sampled
        ]
        timeout = self.cfg.get("client_timeout_s")
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        client_of = {node: cid for cid, node in node_of.items()}
        got = self.collect(server_round, replies, client_of, global_state)
        for cid in sorted(set(sampled) - {client_of[r.metadata.src_node_id] for r in replies}):
            reason = "no reply" if timeout is None else f"no reply within client_timeout_s={timeout}"
            log.warning("round %d: client %d: %s", server_round, cid, reason)
            got.failures.append({"client": cid, "reason": reason})
        min_clients = int(self.cfg.get("min_clients") or 1)
        if len(got.updates) < min_clients:
            raise TooFewClients(
                f"round {server_round}: only {len(got.updates)} of {len(sampled)} sampled clients sent a valid update "
                f"(min_clients={min_clients}); failures: {got.failures}; rejected: {got.rejected}"
            )

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
        metrics = {
            **strategy.evaluate(
                global_state,
                env.new_model,
                test_x,
                test_y,
                self.honest_clients,
                {cid: ClientState(entries, str(env.device)) for cid, entries in self.client_states.items()},
            ),
            **env.attack.test_metrics(model_holding(global_state, env.new_model), test_x, test_y),
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
                continue  # a failed round leaves the client's state as it was
            self.client_states[cid] = state_entries(reply.content)
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
