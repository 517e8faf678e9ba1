"""The privacy-observer hook: called after decoding with the run folder, never changing training."""

from __future__ import annotations


from conftest import metrics_only

from typing import ClassVar

from fedsim.privacy import Observation, PrivacyAttack, ServerView


class FolderProbe(PrivacyAttack):
    """Writes one file per observed round into the run folder and reports how many updates it saw."""

    seen: ClassVar[list[int]] = []

    def observe(self, view: ServerView) -> Observation:
        type(self).seen.append(len(view.updates))
        return Observation(notes={u.client_id: {"seen": view.round} for u in view.updates})


def test_privacy_observer_gets_run_folder_and_leaves_training_alone(run_sim):
    _, plain, _ = run_sim()
    _, probed, out = run_sim(f"privacy_attack._target_={__name__}.FolderProbe")
    assert FolderProbe.seen[-2:] == [4, 4]
    assert [r["privacy"]["clients"]["0"]["seen"] for r in probed] == [1, 2]
    strip = [{k: v for k, v in r.items() if k != "privacy"} for r in probed]
    assert metrics_only(strip) == metrics_only(plain)
