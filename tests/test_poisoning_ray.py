"""The one Ray end-to-end run for the poisoning family: mixed attack + MUD-HoG, equal to inline."""

from __future__ import annotations

import json

from fedsim.engine.simulation import simulate
from poisoning_helpers import make_cfg


def test_mixed_attack_with_mudhog_on_ray_matches_inline(tmp_path):
    overrides = ["rounds=2", "num_clients=6", "clients_per_round=6", "attack=mixed", "attack.fraction=0.17",
                 "defense=mudhog", "defense.tau0=1", "defense.confirm_rounds=1", "defense.dbscan_min_samples=2"]
    ray = simulate(make_cfg(*overrides, "backend=ray", "backend.num_cpus=2"), tmp_path / "ray", progress=False)
    inline = simulate(make_cfg(*overrides), tmp_path / "inline", progress=False)
    assert ray["final_test_acc"] == inline["final_test_acc"]
    records = [json.loads(line) for line in (tmp_path / "ray" / "rounds.jsonl").read_text().splitlines()]
    kinds = {m["kind"] for m in records[-1]["clients"].values()}
    assert kinds == {"benign", "sign_flip", "additive_noise", "label_flip", "multi_label_flip", "unreliable"}
    assert "label_flip/attack_success_rate" in records[-1]
    assert records[-1]["detection"]["by_kind"]["sign_flip"]["flagged"] == 1  # confirmed after one suspicious round
    assert records[-1]["clients"][next(c for c, m in records[-1]["clients"].items() if m["kind"] == "sign_flip")][
        "label"] == "sign_flip"
