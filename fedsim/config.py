"""Checks on the resolved config, run before any work: one clear line per problem."""

from __future__ import annotations

import os
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from fedsim.engine.context import Config
from fedsim.params import check_choice, check_range, check_that
from fedsim.training import OptimizerConfig


MAX_LR = 1000  # far above any useful step size; beyond it float32 arithmetic overflows (lr=1e308)


def validate(cfg: Config) -> None:
    """Raise :class:`ParamError` naming the first bad root field and its valid range.

    Components check their own arguments when they are built (:mod:`fedsim.params`), which
    the CLI does next, still before any work.
    """
    check_range("rounds", cfg["rounds"], low=1, integer=True)
    check_range("num_clients", cfg["num_clients"], low=1, integer=True)
    check_range("clients_per_round", cfg["clients_per_round"], 1, cfg["num_clients"], integer=True)
    check_range("local_epochs", cfg["local_epochs"], low=1, integer=True)
    if cfg.get("local_steps") is not None:
        check_range("local_steps", cfg["local_steps"], low=1, integer=True)
    check_range("batch_size", cfg["batch_size"], low=1, integer=True)
    check_range("seed", cfg["seed"], low=0, integer=True)
    check_range("lr", cfg["lr"], 0, MAX_LR, low_open=True)
    for key in ("max_update_norm", "client_timeout_s"):
        if cfg.get(key) is not None:
            check_range(key, cfg[key], low=0, low_open=True)
    if cfg.get("max_weight_share") is not None:
        check_range("max_weight_share", cfg["max_weight_share"], 0, 1, low_open=True)
    check_range("max_client_state_mb", cfg["max_client_state_mb"], low=0, low_open=True)
    if cfg.get("client_state_memory_mb") is not None:
        check_range("client_state_memory_mb", cfg["client_state_memory_mb"], low=0)
    check_range("min_clients", cfg["min_clients"], 1, cfg["clients_per_round"], integer=True)
    check_range("checkpoint_every", cfg["checkpoint_every"], low=0, integer=True)
    resume = cfg["resume"]
    check_that("resume", resume, isinstance(resume, bool) or resume == "auto" or (isinstance(resume, str) and Path(resume).is_dir()),
               "true, false, auto (continue if a checkpoint exists, else start fresh) or an existing run folder")
    check_that("device", cfg["device"], bool(re.fullmatch(r"cpu|auto|cuda(:\d+)?", str(cfg["device"]))), "one of cpu, cuda, cuda:N, auto")
    for tracker, value in (cfg.get("tracking") or {}).items():
        if tracker in ("tensorboard", "mlflow"):
            check_that(f"tracking.{tracker}", value, isinstance(value, bool), "true or false")
    dp = cfg.get("dp") or {}
    if (dp.get("noise_multiplier") or 0) > 0 or dp.get("epsilon") is not None:
        check_that("dp.noise_multiplier", dp.get("noise_multiplier"), "dp" in cfg["strategy"],
                   f"0 with dp.epsilon=null: strategy {cfg['strategy'].get('_target_')} does not run DP-SGD; "
                   "use one that takes the dp settings (strategy=lora, strategy=ffa_lora)")
    OptimizerConfig(**cfg["optimizer"])  # checks its own fields
    backend = cfg["backend"]
    check_range("backend.client_threads", backend["client_threads"], low=1, integer=True)
    check_that("backend.vectorize", backend.get("vectorize", False), isinstance(backend.get("vectorize", False), bool), "true or false")
    if backend.get("vectorize"):
        check_that("backend.vectorize", True, cfg.get("client_timeout_s") is None,
                   "false with client_timeout_s set: a vectorised cohort trains its clients together, so no client can be timed alone")
    if backend["name"] == "ray":
        check_choice("backend.transport", backend.get("transport", "actors"), ("actors", "flower"))
        check_range("backend.client_cpus", backend["client_cpus"], low=0, low_open=True)
        check_range("backend.client_gpus", backend["client_gpus"], low=0)


def group_options() -> dict[str, list[str]]:
    """The catalogue: each config group and the options its YAML files offer."""
    root = files("fedsim.conf")
    return {
        group.name: sorted(f.name[:-5] for f in group.iterdir() if f.name.endswith(".yaml"))
        for group in root.iterdir()
        if group.is_dir() and not group.name.startswith(("_", "."))
    }


def _load_yaml(*parts: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    node = OmegaConf.create(files("fedsim.conf").joinpath(*parts).read_text())
    return OmegaConf.to_container(node) or {}


def unknown_key(overrides: list[str]) -> str | None:
    """A one-line error for a ``key=value`` override naming no config field, else None.

    Checked against the root config and, for ``group.key``, the option of the group the
    overrides select (or the default one). ``+key`` (appending), ``hydra.*`` and flags are
    left to Hydra; so are runs that extend the search path with configs of their own.
    """
    if any(a.startswith(("--config-dir", "-cd", "hydra.searchpath")) for a in overrides):
        return None
    root, catalogue = _load_yaml("config.yaml"), group_options()
    chosen = {k: v for d in root.pop("defaults", []) if isinstance(d, dict) for k, v in d.items()}
    root.pop("hydra", None)
    chosen.update(m.groups() for a in overrides if (m := re.fullmatch(r"([A-Za-z_]\w*)=([\w.\-]+)", a)))
    for arg in overrides:
        match = re.fullmatch(r"([A-Za-z_][\w.]*)=.*", arg, flags=re.DOTALL)
        if not match or match.group(1).startswith("hydra") or match.group(1) in catalogue:
            continue
        path = match.group(1).split(".")
        group = path[0] if path[0] in catalogue and len(path) > 1 else None
        node: Any = _load_yaml(group, f"{chosen[group]}.yaml") if group and chosen.get(group) in catalogue[group] else root
        if group and node is root:
            continue  # a group option Hydra will report (e.g. a user's own)
        for depth, part in enumerate(path[1:] if group else path):
            if not isinstance(node, dict) or part not in node:
                where = f"{group}={chosen[group]}" if group else "the root config"
                valid = ", ".join(sorted(node)) if isinstance(node, dict) else "none (not a mapping)"
                return f"{match.group(1)}: unknown key in {where}; valid keys here: {valid} (use +{match.group(1)}=... to add one)"
            node = node[part]
    return None


def output_dir_problem(overrides: list[str]) -> str | None:
    """A one-line error when the run folder (``hydra.run.dir``/``hydra.sweep.dir``, default under the
    working directory) cannot be created: a file on its path, or no write permission."""
    given = {m.group(1): m.group(2) for a in overrides if (m := re.fullmatch(r"(hydra\.(?:run|sweep)\.dir)=(.+)", a))}
    for field, folder in given.items():
        if "${" in folder:
            continue  # interpolated (a timestamp...): Hydra resolves it
        path = Path(folder).expanduser().absolute()
        existing = next(p for p in (path, *path.parents) if p.exists())
        if not existing.is_dir():
            return f"{field}={folder}: cannot be created, {existing} is a file; choose a folder path"
        try:  # Hydra creates it next anyway; creating it here turns its traceback into one line
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            return f"{field}={folder}: cannot be created ({exc.strerror}); choose a writable folder"
    if not given and not os.access(Path.cwd(), os.W_OK | os.X_OK):
        return f"hydra.run.dir=outputs/...: the working directory {Path.cwd()} is not writable; set hydra.run.dir to a writable folder"
    return None


def unknown_group_option(overrides: list[str]) -> str | None:
    """A one-line error for a ``group=option`` override naming no known option, else None.

    Overrides that extend the search path (``--config-dir``, ``hydra.searchpath``) are
    left to Hydra, since the user may bring options of their own.
    """
    if any(a.startswith(("--config-dir", "-cd", "hydra.searchpath")) for a in overrides):
        return None
    catalogue = group_options()
    for arg in overrides:
        match = re.fullmatch(r"\+?([A-Za-z_]\w*)=([\w,.\-]+)", arg)
        if not match or match.group(1) not in catalogue:
            continue
        group, options = match.group(1), catalogue[match.group(1)]
        for choice in match.group(2).split(","):
            if choice not in options and choice != "null":
                return f"{group}={choice}: unknown option; valid {group} options: {', '.join(options)}"
    return None

