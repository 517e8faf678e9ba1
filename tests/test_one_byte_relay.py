"""One-byte SPSA as the paper's protocol: replicas identical to the server's model, bytes both ways
exactly one per (client, projected gradient) plus the relay's bitmask, no model after joining."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from conftest import make_config, metrics_only
from fedsim.state import Tensors
from fedsim.strategies.one_byte_relay import OneByteRelay

RELAY = ("strategy=one_byte_spsa", "model.hidden=[]", "lr=0.01", "num_clients=5", "clients_per_round=3", "rounds=6")
SAMPLES = 4


class WatchedRelay(OneByteRelay):
    """The protocol, recording (inline) every client's theta_t and the server's theta at each round's start."""

    server: ClassVar[dict[int, Tensors]] = {}
    clients: ClassVar[dict[tuple[int, int], Tensors]] = {}

    def aggregate(self, server_round, global_state, updates, combine):
        type(self).server[server_round] = {n: global_state[n].clone() for n in self.parameter_names}
        return super().aggregate(server_round, global_state, updates, combine)

    def replica(self, task):
        params = super().replica(task)
        type(self).clients[(task.round, task.client_id)] = {n: t.clone() for n, t in params.items()}
        return params


def test_every_replica_equals_the_servers_model_bit_for_bit(run_sim) -> None:
    WatchedRelay.server.clear(), WatchedRelay.clients.clear()
    _, records, _ = run_sim(*RELAY, "strategy._target_=tests.test_one_byte_relay.WatchedRelay")
    watched = __import__("tests.test_one_byte_relay", fromlist=["WatchedRelay"]).WatchedRelay
    assert len(watched.clients) == 6 * 3 and len(watched.server) == 6
    for (server_round, client_id), replica in watched.clients.items():
        server = watched.server[server_round]
        assert all(torch.equal(replica[n], server[n]) for n in server), (server_round, client_id)
    assert records[-1]["test_loss"] < records[0]["test_loss"]


def test_bytes_are_one_per_projected_gradient_up_and_the_relay_down(run_sim) -> None:
    _, records, _ = run_sim(*RELAY)
    synced: dict[int, int] = {}
    history: dict[int, int] = {}  # round -> participants aggregated
    for record in records:
        server_round, sampled = record["round"], [int(c) for c in record["clients"]]
        assert record["clients_sampled"] == len(sampled) == 3 and not record["rejected"]
        assert record["bytes_up"] == 3 * SAMPLES  # the values only: one byte each
        expected_down = 0
        for client_id in sampled:  # every round since the client's replica: 1 bitmask byte + its participants' bytes
            since = synced.get(client_id, 1)
            expected_down += sum(1 + history.get(r, 0) * SAMPLES for r in range(since, server_round))
        assert record["bytes_down"] == expected_down, server_round  # never the model: the relay is smaller here
        history[server_round] = len(sampled)
        for client_id in sampled:
            synced[client_id] = server_round


def test_a_client_joining_late_gets_the_model_once_when_it_is_smaller_than_the_history() -> None:
    strategy = OneByteRelay(seed=0, num_clients=4, lr=0.01, samples=500)
    model = torch.nn.Linear(3, 2)
    state = strategy.init_global(model)
    for server_round in (1, 2):
        strategy.configure_round(server_round)
        strategy.history[server_round] = ([0], torch.ones(500, dtype=torch.int8))
        strategy.synced[0] = server_round
    strategy.configure_round(3)
    assert strategy.payload_for(1, state) is state  # 2 x 501 relayed bytes > 32 model bytes: the model
    relay = strategy.payload_for(0, state)  # client 0 holds theta_2: one round's bitmask and values
    assert relay["relay.participants"].tolist() == [[1]] and relay["relay.values"].shape == (500,)


def test_float32_code_is_the_same_protocol_at_four_bytes_a_value(run_sim) -> None:
    _, byte, _ = run_sim(*RELAY)
    _, floats, _ = run_sim(*RELAY, "strategy.code=float32")
    assert [r["bytes_up"] for r in floats] == [4 * r["bytes_up"] for r in byte]
    assert abs(floats[-1]["test_acc"] - byte[-1]["test_acc"]) < 0.1


def test_ray_gives_the_inline_numbers(run_sim) -> None:
    _, inline, _ = run_sim(*RELAY)
    _, ray, _ = run_sim(*RELAY, "backend=ray", "backend.num_cpus=2")
    assert metrics_only(ray) == metrics_only(inline)


def test_bad_parameters_name_the_field() -> None:
    with pytest.raises(ValueError, match="strategy.code='int4'"):
        OneByteRelay(seed=0, num_clients=2, lr=0.1, code="int4")
    with pytest.raises(ValueError, match="strategy.samples=0"):
        OneByteRelay(seed=0, num_clients=2, lr=0.1, samples=0)
    with pytest.raises(ValueError, match="defense._target_"):
        from fedsim.engine.context import build_components

        build_components(make_config("strategy=one_byte_spsa", "defense=median"))
