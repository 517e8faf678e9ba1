"""Run a composed config end to end: the shared helper of the strategy tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fedsim.simulation import simulate
from tests.conftest import make_cfg


def run_rounds(out_dir: Path, *overrides: str) -> list[dict[str, Any]]:
    """Run ``make_cfg(*overrides)`` into ``out_dir``; returns the per-round records."""
    simulate(make_cfg(*overrides), out_dir, progress=False)
    return [json.loads(line) for line in (out_dir / "rounds.jsonl").read_text().splitlines()]
