"""Detection scoring against three true roles and per-attack-type counts."""

from __future__ import annotations

from fedsim.engine.detection import detection_scores


def test_scores_malicious_unreliable_and_kinds():
    roles = ["benign", "malicious", "malicious", "unreliable", "benign"]
    kinds = ["benign", "sign_flip", "label_flip", "unreliable", "benign"]
    labels = ["benign", "sign_flip", "benign", "unreliable", "targeted"]
    d = detection_scores(roles, kinds, labels)
    assert (d["tp"], d["fp"], d["fn"]) == (1, 1, 1)  # "sign_flip" and "targeted" both count as malicious
    assert d["precision"] == 0.5 and d["recall"] == 0.5
    assert d["unreliable"]["precision"] == 1.0 and d["unreliable"]["recall"] == 1.0
    assert d["by_kind"]["sign_flip"] == {"clients": 1, "flagged": 1, "flagged_share": 1.0}
    assert d["by_kind"]["label_flip"]["flagged"] == 0
    assert d["by_kind"]["benign"]["flagged"] == 1
    assert d["confusion"]["benign"] == {"benign": 1, "targeted": 1}


def test_undefined_precision_and_recall_are_none():
    d = detection_scores(["benign"] * 3, ["benign"] * 3, ["benign"] * 3)
    assert d["precision"] is None and d["recall"] is None
