"""One-byte SPSA as the paper's protocol: projected gradients at a shared theta_t, every byte relayed
to every participant, replicas kept in step, no model downlink after a client has joined."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from fedsim.compression.spsa import LogByteCode, direction, projected_gradient
from fedsim.params import check_choice, check_range, check_that
from fedsim.seeding import derive_seed
from fedsim.state import Tensors, tensors_nbytes
from fedsim.strategy import ClientUpdate, Combine, LocalResult, LocalTask, Strategy
from fedsim.training import model_loss

SEED_PURPOSE = "spsa-relay-direction"
CODES = ("byte", "float32")
REPLICA, SYNCED = "relay.replica", "relay.synced"  # the client's state: its model replica and the round it is at
PARTICIPANTS, VALUES = "relay.participants", "relay.values"  # the downlink of a returning client


class OneByteRelay(Strategy):
    """One-byte SPSA with shared randomness, the protocol of Zelikman et al., "Just One Byte (per
    gradient): A Note on Low-Bandwidth Decentralized Language Model Finetuning Using Shared
    Randomness" (2023; reference ezelikman/justonebyte app.py, ``update_weights`` and
    ``apply_all_grads``), with MeZO's two-sided estimate (Malladi et al., NeurIPS 2023).

    Round t: every sampled client computes ``samples`` projected gradients at the *same* theta_t, the
    k-th on a fresh mini-batch along z seeded by (run seed, t, client, k): g = (L(theta + eps z) -
    L(theta - eps z)) / (2 eps). It uploads them as one byte each (``code=byte``: sign + 7-bit
    log-magnitude, :class:`~fedsim.compression.spsa.LogByteCode`) or as float32 (``code=float32``,
    the same protocol uncompressed). Every replica, the server's and each client's, applies every
    (client, k) value of the round in client order: theta -= lr * g / sqrt(G) * z, G the round's
    number of projected gradients, as ``apply_all_grads`` does.

    Downlink: the server relays each round's values to the clients that missed them. A message to a
    client carries, for every round since the one its replica is at, a participant bitmask
    (ceil(num_clients / 8) bytes) and the participants' values; the client replays them. The run's
    initial model is its seeded initialisation, which every process builds itself (as the reference's
    machines all load the same pretrained model), so a client joining at round t is sent the bytes of
    rounds 1..t-1, or the model (float32) if that is fewer bytes: it gets the model at most once.
    Uplink: the values only (round, client and count are known to the server).

    Deviations: the reference's learned log-epsilon (``gamma``) and variance scaling are not
    implemented (both off by default there); its 9-bit code that then sends the float is replaced by
    a true one-byte code, as DESIGN notes. A robust aggregator cannot replace the rule.
    """

    robust_combine_ok = False
    persistent = ("history", "synced")

    def __init__(
        self,
        seed: int,
        num_clients: int,
        lr: float,
        samples: int = 4,
        eps: float = 1e-3,
        code: str = "byte",
        grad_min: float = 1e-4,
        grad_max: float = 1e2,
    ) -> None:
        check_range("strategy.num_clients", num_clients, low=1, integer=True)
        check_range("strategy.samples", samples, low=1, integer=True)
        check_range("strategy.eps", eps, low=0, low_open=True)
        check_choice("strategy.code", code, CODES)
        check_range("strategy.grad_min", grad_min, low=0, low_open=True)
        check_that("strategy.grad_max", grad_max, grad_max > grad_min, f"> strategy.grad_min={grad_min}")
        check_range("strategy.lr", lr, low=0, low_open=True)
        self.seed, self.num_clients, self.lr, self.samples, self.eps, self.code = int(seed), num_clients, float(lr), samples, eps, code
        self.byte_code = LogByteCode.spanning(grad_min, grad_max)
        self.history: dict[int, tuple[list[int], torch.Tensor]] = {}  # server: round -> (participants, their values)
        self.synced: dict[int, int] = {}  # server: client -> the round whose theta its replica holds (1: the initial model)
        self.parameter_names: tuple[str, ...] = ()  # the tensors the directions perturb (buffers are not)
        self.current_round = 1  # server: the round being sent (set by configure_round)

    # The wire format of the values.

    def wire_dtype(self) -> torch.dtype:
        return torch.int8 if self.code == "byte" else torch.float32

    def to_wire(self, grads: Sequence[float]) -> torch.Tensor:
        values = [self.byte_code.quantize(g) for g in grads] if self.code == "byte" else list(grads)
        return torch.tensor(values, dtype=self.wire_dtype())

    def from_wire(self, values: torch.Tensor) -> list[float]:
        if self.code == "byte":
            return [self.byte_code.dequantize(int(v)) for v in values.tolist()]
        return [float(v) for v in values.tolist()]

    def direction_seed(self, server_round: int, client_id: int, index: int) -> int:
        return derive_seed(self.seed, SEED_PURPOSE, server_round, client_id, index)

    def apply_round(self, params: Tensors, server_round: int, participants: list[int], values: torch.Tensor) -> Tensors:
        """theta after round ``server_round``'s values: what every replica computes, in the same order."""
        grads = self.from_wire(values)
        if not grads:
            return params
        scale = self.lr / math.sqrt(len(grads))
        params = {n: t.clone() for n, t in params.items()}
        for position, client_id in enumerate(participants):
            for index in range(self.samples):
                g = grads[position * self.samples + index]
                if g == 0.0:
                    continue
                z = direction(params, self.direction_seed(server_round, client_id, index))
                for name in params:
                    params[name] -= (scale * g) * z[name]
        return params

    # Server side.

    def upload_shapes(self, global_state: Tensors) -> dict[str, tuple[int, ...]]:
        return {"values": (self.samples,)}

    def upload_dtypes(self, global_state: Tensors) -> dict[str, torch.dtype]:
        return {"values": self.wire_dtype()}

    def init_global(self, model: nn.Module) -> Tensors:
        self.history, self.synced = {}, {}
        self.parameter_names = tuple(name for name, _ in model.named_parameters())
        return super().init_global(model)

    def relay(self, since: int, until: int) -> Tensors:
        """Rounds ``since``..``until - 1``: one participant bitmask per round, then all their values."""
        width = (self.num_clients + 7) // 8
        masks, values = torch.zeros((until - since, width), dtype=torch.uint8), []
        for row, server_round in enumerate(range(since, until)):
            participants, round_values = self.history.get(server_round, ([], torch.zeros(0, dtype=self.wire_dtype())))
            for client_id in participants:
                masks[row, client_id // 8] |= 1 << (client_id % 8)
            values.append(round_values)
        return {PARTICIPANTS: masks, VALUES: torch.cat(values) if values else torch.zeros(0, dtype=self.wire_dtype())}

    def payload_for(self, client_id: int, global_state: Tensors) -> Tensors:
        relay = self.relay(self.synced.get(client_id, 1), self.current_round)
        return global_state if client_id not in self.synced and tensors_nbytes(global_state) < tensors_nbytes(relay) else relay

    def configure_round(self, server_round: int) -> dict[str, float | int | str]:
        self.current_round = server_round  # the round whose messages payload_for writes next
        return {}

    def aggregate(self, server_round: int, global_state: Tensors, updates: list[ClientUpdate], combine: Combine) -> Tensors:
        ordered = sorted(updates, key=lambda u: u.client_id)
        participants = [u.client_id for u in ordered]
        values = torch.cat([u.update["values"] for u in ordered])
        params = self.apply_round({n: global_state[n] for n in self.parameter_names}, server_round, participants, values)
        if not all(bool(torch.isfinite(t).all()) for t in params.values()):
            return global_state  # not recorded: every replica stays where the server is
        self.history[server_round] = (participants, values.clone())
        for client_id in participants:
            self.synced[client_id] = server_round
        return {**global_state, **params}

    # Client side.

    def replica(self, task: LocalTask) -> Tensors:
        """theta_t on this client: the model sent, or its replica brought up to date with the relayed rounds."""
        names = [n for n, _ in task.model.named_parameters()]
        if PARTICIPANTS not in task.global_state:
            return {n: task.global_state[n] for n in names}
        held = task.client_state.get(REPLICA)
        synced = task.client_state.get(SYNCED)
        params = held if held is not None else {n: p.detach().clone() for n, p in task.model.named_parameters()}
        start = int(synced["round"].item()) if synced is not None else 1
        masks, values = task.global_state[PARTICIPANTS], task.global_state[VALUES]
        first = task.round - len(masks)  # the round of the first relayed row
        offset = 0
        for row, server_round in enumerate(range(first, task.round)):
            participants = [c for c in range(self.num_clients) if int(masks[row, c // 8]) >> (c % 8) & 1]
            count = len(participants) * self.samples
            if server_round >= start:
                params = self.apply_round(params, server_round, participants, values[offset : offset + count])
            offset += count
        return params

    def local_update(self, task: LocalTask) -> LocalResult:
        params = self.replica(task)
        loss_fn = model_loss(task.model)
        losses, grads = [], []
        batches = task.batches(epochs=math.ceil(self.samples * task.batch_size / max(len(task.y), 1)) + 1)
        for index in range(self.samples):
            z = direction(params, self.direction_seed(task.round, task.client_id, index))
            loss, grad = projected_gradient(loss_fn, params, next(batches), z, self.eps)
            losses.append(loss)
            grads.append(grad)
        task.client_state.put(REPLICA, params)
        task.client_state.put(SYNCED, {"round": torch.tensor([task.round])})
        return LocalResult({"values": self.to_wire(grads)}, len(task.y), {"train_loss": sum(losses) / len(losses)})
