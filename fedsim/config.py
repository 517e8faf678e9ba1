"""Checks on the resolved config, run before any work: one clear line per problem."""

from __future__ import annotations

import math
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

from fedsim.dp import DPConfig
from fedsim.environment import Config


class ConfigError(ValueError):
    """A config field holds a value fedsim cannot run with."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _integer(cfg: Config, key: str, low: int, high: int | None = None, where: str = "") -> None:
    value = cfg[key]
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low and (high is None or value <= high)
    if not ok:
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{where}{key}={value!r}: must be an integer {bound}")


def _positive(cfg: Config, key: str, where: str = "", allow_zero: bool = False) -> None:
    value = cfg[key]
    if not _number(value) or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{where}{key}={value!r}: must be a finite number {'>=' if allow_zero else '>'} 0")


def validate(cfg: Config) -> None:
    """Raise :class:`ConfigError` naming the first bad field and its valid range."""
    _integer(cfg, "rounds", 1)
    _integer(cfg, "num_clients", 1)
    num_clients = cfg["num_clients"]
    value = cfg["clients_per_round"]
    if not (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= num_clients):
        raise ConfigError(f"clients_per_round={value!r}: must be an integer in [1, num_clients={num_clients}]")
    _integer(cfg, "local_epochs", 1)
    _integer(cfg, "batch_size", 1)
    _integer(cfg, "seed", 0)
    _positive(cfg, "lr")
    if cfg.get("max_update_norm") is not None:
        _positive(cfg, "max_update_norm")
    if cfg.get("client_timeout_s") is not None:
        _positive(cfg, "client_timeout_s")
    _integer(cfg, "min_clients", 1, cfg["clients_per_round"], where="")
    _integer(cfg, "checkpoint_every", 0)
    resume = cfg["resume"]
    if not (isinstance(resume, bool) or (isinstance(resume, str) and Path(resume).is_dir())):
        raise ConfigError(f"resume={resume!r}: must be true, false or an existing run folder")
    if not re.fullmatch(r"cpu|auto|cuda(:\d+)?", str(cfg["device"])):
        raise ConfigError(f"device={cfg['device']!r}: valid: cpu, cuda, cuda:N, auto")
    partition = cfg["partition"]
    if "alpha" in partition:
        _positive(partition, "alpha", "partition.")
    if "classes_per_client" in partition:
        _integer(partition, "classes_per_client", 1, where="partition.")
    for tracker, value in (cfg.get("tracking") or {}).items():
        if tracker in ("tensorboard", "mlflow") and not isinstance(value, bool):
            raise ConfigError(f"tracking.{tracker}={value!r}: must be true or false")
    if cfg.get("dp") is not None:
        _dp(cfg)
    backend = cfg["backend"]
    _integer(backend, "client_threads", 1, where="backend.")
    if backend["name"] == "ray":
        _positive(backend, "client_cpus", "backend.")
        _positive(backend, "client_gpus", "backend.", allow_zero=True)


def _dp(cfg: Config) -> None:
    """The ``dp`` node's ranges, and DP asked of a strategy that does not run DP-SGD."""
    try:
        dp = DPConfig(**cfg["dp"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if dp.enabled and "dp" not in cfg["strategy"]:
        raise ConfigError(
            f"dp.noise_multiplier={dp.noise_multiplier}, dp.epsilon={dp.epsilon}: strategy "
            f"{cfg['strategy'].get('_target_')} does not run DP-SGD; use one that takes the dp settings "
            "(strategy=lora, strategy=ffa_lora)"
        )


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
