"""``python -m fedsim --help``: the config groups with their options and every root field with its meaning.

Generated from the packaged config tree, so it cannot drift from it: the groups are the folders of
``fedsim.conf`` (each option one YAML file, with the first comment line of that file as its summary), the
fields and their one-line meanings are the commented ``key: value  # meaning`` lines of ``config.yaml``.
Hydra's own help stays available as ``--hydra-help``.
"""

from __future__ import annotations

import re
from importlib.resources import files

from fedsim.config import group_options

FIELD = re.compile(r"^([a-z_]+):\s*(.*?)\s*#\s*(.+)$")
NESTED = re.compile(r"^  ([a-z_]+):\s*(.*?)\s*#\s*(.+)$")


def option_summary(group: str, option: str) -> str:
    """The first comment of an option's YAML file: its first comment line, or the comment on its first line."""
    for line in files("fedsim.conf").joinpath(group, f"{option}.yaml").read_text().splitlines():
        if "#" in line:
            return line.split("#", 1)[1].strip()
    return ""


def root_fields() -> list[tuple[str, str, str]]:
    """(dotted field, default, meaning) of every commented field of config.yaml outside ``defaults`` and ``hydra``."""
    out, parent = [], None
    for line in files("fedsim.conf").joinpath("config.yaml").read_text().splitlines():
        if line.startswith(("defaults:", "hydra:")):
            parent = "skip"
            continue
        top = FIELD.match(line)
        if top:
            parent = top.group(1) if not top.group(2) else None
            out.append((top.group(1), top.group(2), top.group(3)))
            continue
        if re.match(r"^[a-z_]+:", line):
            parent = "skip" if line.split(":")[0] in ("defaults", "hydra") else line.split(":")[0]
            continue
        nested = NESTED.match(line)
        if nested and parent not in (None, "skip"):
            out.append((f"{parent}.{nested.group(1)}", nested.group(2), nested.group(3)))
    return [(k, v, m) for k, v, m in out if v]  # a parent line (no value) is not a field itself


def help_text() -> str:
    lines = ["fedsim: federated-learning simulation (Flower + Ray), configured with Hydra.", "",
             "usage: python -m fedsim [group=option ...] [field=value ...] [-m for a sweep: field=a,b ...]", "",
             "Config groups (group=option; the option's fields are then group.field=value):"]
    launchers = sorted(f.name[:-5] for f in files("fedsim.conf").joinpath("hydra", "launcher").iterdir() if f.name.endswith(".yaml"))
    catalogue = {**{g: o for g, o in group_options().items() if g != "hydra"}, "hydra/launcher": launchers}
    for group, options in sorted(catalogue.items()):
        lines.append(f"  {group}:")
        lines += [f"    {option:<22} {option_summary(group, option)}".rstrip() for option in options]
    lines += ["", "Fields (field=value; default after the name):"]
    lines += [f"  {name} = {default}".ljust(36) + f" {meaning}" for name, default, meaning in root_fields()]
    lines += ["", "Examples:", "  python -m fedsim strategy=fedspeed partition=dirichlet partition.alpha=0.1 rounds=50",
              "  python -m fedsim -m attack=none,sign_flip defense=none,median,fltrust   # a sweep; then python -m fedsim.report <dir>",
              "", "Hydra's own options: python -m fedsim --hydra-help"]
    return "\n".join(lines)
