"""The privacy-observer hook: called after decoding with the run folder, never changing training."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import metrics_only

from fedsim.privacy import PrivacyAttack


class FolderProbe(PrivacyAttack):
    """Writes one file per observed round into the run folder and reports how many updates it saw."""

    def observe(self, server_round, global_state, updates, env, out_dir: Path) -> dict[str, Any]:
        (out_dir / f"observed_{server_round}.txt").write_text(str(len(updates)))
        return {"privacy": {"updates_seen": len(updates)}}


def test_privacy_observer_gets_run_folder_and_leaves_training_alone(run_sim):
    _, plain, _ = run_sim()
    _, probed, out = run_sim(f"privacy_attack._target_={__name__}.FolderProbe")
    assert (out / "observed_1.txt").read_text() == "4" and (out / "observed_2.txt").exists()
    assert [r["privacy"]["updates_seen"] for r in probed] == [4, 4]
    strip = [{k: v for k, v in r.items() if k != "privacy"} for r in probed]
    assert metrics_only(strip) == metrics_only(plain)
