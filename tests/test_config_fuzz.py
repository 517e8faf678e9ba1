"""A fuzz of malformed configs: each ends in exactly one ``fedsim: error: <field>=...`` line naming the
field at fault (exit code 2, no traceback, no round run), and well-formed neighbours run to the end.

The CLI runs in-process (Hydra's entry point, as ``python -m fedsim`` calls it) to keep 60+ cases fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import cli_in_process

BASE = ["dataset=digits", "rounds=1", "backend=inline", "progress=false", "num_clients=10"]

BAD = [  # (overrides, the field the one-line error must name first)
    (["dataset=cifar10"], "dataset.root"),
    (["dataset=mnist"], "dataset.root"),
    (["dataset=fashion_mnist"], "dataset.root"),
    (["dataset=mnist", "dataset.root=/no/such/folder"], "mnist"),
    (["model.hidden=0"], "model.hidden"),
    (["model.hidden=[-3]"], "model.hidden"),
    (["model.hidden=[0]"], "model.hidden"),
    (["model.hidden=abc"], "model.hidden"),
    (["model=cnn", "dataset=chatbot_topics"], "model"),
    (["model=cnn", "model.channels=[4,4,4,4]"], "model.channels"),
    (["model=cnn", "model.hidden=0"], "model.hidden"),
    (["hydra.run.dir=AFILE/sub"], "hydra.run.dir"),
    (["lr=1e308"], "lr"),
    (["lr=0"], "lr"),
    (["lr=nan"], "lr"),
    (["strategy=fedprox", "strategy.mu=nan"], "strategy.mu"),
    (["strategy=fedprox", "strategy.mu=-1"], "strategy.mu"),
    (["attack=label_flip", "attack.count=20"], "attack.count"),
    (["attack=label_flip", "attack.count=99"], "attack.count"),
    (["attack=label_flip", "attack.count=-1"], "attack.count"),
    (["attack=label_flip", "attack.fraction=1.5"], "attack.fraction"),
    (["attack=sign_flip", "attack.count=2.5"], "attack.count"),
    (["defense=bulyan", "clients_per_round=4"], "defense.num_malicious"),
    (["defense=krum", "clients_per_round=2"], "defense.num_malicious"),
    (["defense=multi_krum", "defense.num_selected=20"], "defense.num_selected"),
    (["defense=trimmed_mean", "defense.beta=0.7"], "defense.beta"),
    (["+strategy.my_arg=3"], "strategy.my_arg"),
    (["strategy._target_=no.such.Strategy"], "strategy._target_"),
    (["privacy_attack=dlg"], "privacy_attack.max_images"),
    (["privacy_attack=idlg", "privacy_attack.labels=guess"], "privacy_attack.labels"),
    (["rounds=0"], "rounds"),
    (["num_clients=0"], "num_clients"),
    (["clients_per_round=0"], "clients_per_round"),
    (["batch_size=0"], "batch_size"),
    (["local_epochs=-1"], "local_epochs"),
    (["seed=-1"], "seed"),
    (["seed=1.5"], "seed"),
    (["device=tpu"], "device"),
    (["max_update_norm=-1"], "max_update_norm"),
    (["client_timeout_s=-5"], "client_timeout_s"),
    (["min_clients=11"], "min_clients"),
    (["max_weight_share=0"], "max_weight_share"),
    (["max_weight_share=2"], "max_weight_share"),
    (["max_client_state_mb=0"], "max_client_state_mb"),
    (["partition=dirichlet", "partition.alpha=-1"], "partition.alpha"),
    (["partition=shards", "partition.classes_per_client=0"], "partition.classes_per_client"),
    (["compression=dgc", "compression.sparsity=1"], "compression.sparsity"),
    (["compression=spsa_one_byte", "compression.eps=0"], "compression.eps"),
    (["strategy=fedspeed", "strategy.alpha=2"], "strategy.alpha"),
    (["strategy=monna", "defense=median"], "defense._target_"),
    (["optimizer=adam", "optimizer.betas=[1.5,0.9]"], "optimizer.betas"),
    (["optimizer.momentum=-0.5"], "optimizer.momentum"),
    (["backend.client_threads=0"], "backend.client_threads"),
    (["checkpoint_every=abc"], "checkpoint_every"),
    (["resume=/no/such/run"], "resume"),
    (["tracking.mlflow=yes"], "tracking.mlflow"),
    (["strategy=hyperfl", "strategy.head=nope"], "strategy.head"),
    (["dp.noise_multiplier=1.0"], "dp.noise_multiplier"),
    (["strategy=fedspeed", "strategy.rhoo=1"], "strategy.rhoo"),
    (["defense=mudhog", "defense.sign_flip_history=sometimes"], "defense.sign_flip_history"),
]


GOOD = [  # near misses that are valid and must run: exit 0, no traceback
    ["attack=label_flip", "attack.count=3"],  # count overrides the fraction the config file sets
    ["defense=krum", "defense.num_malicious=3", "clients_per_round=10"],
    ["max_weight_share=0.2", "partition=dirichlet", "partition.alpha=0.3"],
    ["model.hidden=[]", "lr=1000"],
    ["privacy_attack=dlg", "num_clients=200", "clients_per_round=2", "privacy_attack.max_images=8", "privacy_attack.iterations=2"],
]


def run_cli(args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(exit code, stderr) of ``python -m fedsim BASE + args`` with the run folder in ``tmp_path``."""
    (tmp_path / "afile").write_text("")
    args = [a.replace("AFILE", str(tmp_path / "afile")) for a in args]
    run_dir = [] if any(a.startswith("hydra.run.dir") for a in args) else [f"hydra.run.dir={tmp_path / 'run'}"]
    return cli_in_process([*BASE, *args, *run_dir], tmp_path, monkeypatch)[::2]


@pytest.mark.parametrize(("args", "field"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_a_malformed_config_is_one_line_naming_its_field(args: list[str], field: str, tmp_path: Path, monkeypatch) -> None:
    code, stderr = run_cli(args, tmp_path, monkeypatch)
    lines = stderr.strip().splitlines()
    assert code == 2, stderr
    assert len(lines) == 1 and lines[0].startswith(f"fedsim: error: {field}"), stderr
    assert "Error(" not in lines[0]  # no exception repr wrapped into the message
    assert not list(tmp_path.rglob("rounds.jsonl"))


def test_the_fuzz_covers_forty_configs() -> None:
    assert len(BAD) >= 40


@pytest.mark.parametrize("args", GOOD, ids=[" ".join(a) for a in GOOD])
def test_a_valid_neighbour_runs(args: list[str], tmp_path: Path, monkeypatch) -> None:
    code, stderr = run_cli(args, tmp_path, monkeypatch)
    assert code == 0 and "Traceback" not in stderr, stderr
    assert (tmp_path / "run" / "rounds.jsonl").read_text().count("\n") == 1
