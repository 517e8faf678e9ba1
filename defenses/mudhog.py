"""MUD-HoG: multi-dimensional update histories of gradients, kept per client on the server."""

from __future__ import annotations

from collections import Counter, defaultdict, deque
from typing import Any

import numpy as np
import torch
from sklearn.cluster import DBSCAN, KMeans

from fedsim.attack import BENIGN, UNRELIABLE
from fedsim.defense import Defense, Verdict
from fedsim.params import check_choice, check_range
from fedsim.strategy import ClientUpdate, Combine, uniform_mean

SIGN_FLIP, ADDITIVE_NOISE, TARGETED = "sign_flip", "additive_noise", "targeted"


def largest_gap_split(values: list[float]) -> float:
    """The midpoint of the largest gap between consecutive sorted values (0.0 for fewer than two)."""
    ordered = sorted(values)
    gaps = [(b - a, a + (b - a) / 2) for a, b in zip(ordered, ordered[1:])]
    return max(gaps)[1] if gaps else 0.0


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


class MudHog(Defense):
    """MUD-HoG (Nguyen et al., "Federated Learning with Multi-Dimensional Update Histories of
    Gradients against Poisoning Attacks", ESORICS 2022; reference LabSAINT/MUD-HoG_Federated_Learning).

    Per client the server keeps a long HoG (sum of all its updates) and a short HoG (mean of its
    last ``short_window`` updates: ``short_window_mode=paper``, the paper's moving window;
    ``official`` reproduces the reference code, whose deque keeps appending the same dict so the
    short HoG freezes at the mean of the client's first ``short_window`` updates). After ``tau0`` plain rounds, each round: (1) sign-flip suspects have a short
    HoG with negative cosine to the median short HoG of the not-confirmed clients (the paper;
    ``sign_flip_history=long`` uses the long HoGs instead, which stay separated once the model
    converges and honest short HoGs shrink towards noise); (2) additive-
    noise suspects are DBSCAN outliers among the remaining short HoGs whose distance to the main
    cluster's median lies above the largest gap; (3) targeted suspects are the minority of a
    KMeans(2) split of the remaining long HoGs; (4) suspicion is confirmed after ``confirm_rounds``
    consecutive suspicious rounds (twice that for targeted) and cleared after two clean ones;
    a client keeps the type it was first confirmed as; (5) unreliable clients have a short-HoG cosine to the median of the rest below the largest gap
    for more than ``confirm_rounds`` rounds (a decaying counter). The kept updates are those of
    clients neither confirmed malicious nor suspected this round (unreliable clients are kept, as
    in the paper); the paper combines them with the unweighted mean (``mean=uniform``, the
    default); ``mean=strategy`` keeps the strategy's own combine (FedAvg's weighted mean).
    """

    def __init__(
        self,
        tau0: int = 3,
        short_window: int = 3,
        confirm_rounds: int = 2,
        dbscan_eps: float = 0.5,
        dbscan_min_samples: int = 5,
        sign_flip_history: str = "short",
        mean: str = "uniform",
        short_window_mode: str = "paper",
    ) -> None:
        check_choice("defense.short_window_mode", short_window_mode, ("paper", "official"))
        for field, value, low in (
            ("tau0", tau0, 0),
            ("short_window", short_window, 1),
            ("confirm_rounds", confirm_rounds, 1),
            ("dbscan_min_samples", dbscan_min_samples, 1),
        ):
            check_range(f"defense.{field}", value, low=low, integer=True)
        check_choice("defense.sign_flip_history", sign_flip_history, ("short", "long"))
        check_range("defense.dbscan_eps", dbscan_eps, low=0, low_open=True)
        check_choice("defense.mean", mean, ("uniform", "strategy"))
        self.mean = mean
        self.tau0, self.short_window, self.confirm_rounds = tau0, short_window, confirm_rounds
        self.dbscan_eps, self.dbscan_min_samples = dbscan_eps, dbscan_min_samples
        self.sign_flip_history, self.short_window_mode = sign_flip_history, short_window_mode
        self.long: dict[int, np.ndarray] = {}
        self.recent: dict[int, deque[np.ndarray]] = {}
        self.suspicion: defaultdict[int, int] = defaultdict(int)  # consecutive suspicious rounds
        self.unreliable_count: defaultdict[int, int] = defaultdict(int)
        self.confirmed: dict[int, str] = {}  # client -> the attack type it was first confirmed as
        self.unreliable: set[int] = set()

    # Histories.

    def record(self, updates: list[ClientUpdate]) -> None:
        """Add this round's updates to the long and short histories."""
        for u in updates:
            flat = torch.cat([v.detach().flatten().double().cpu() for v in u.update.values()]).numpy()
            self.long[u.client_id] = self.long.get(u.client_id, 0.0) + flat
            window = self.recent.setdefault(u.client_id, deque(maxlen=self.short_window))
            if self.short_window_mode == "paper" or len(window) < self.short_window:  # official: frozen once full
                window.append(flat)

    def short_hog(self, client_id: int) -> np.ndarray:
        """Mean of the client's last ``short_window`` updates."""
        return np.mean(np.stack(self.recent[client_id]), axis=0)

    @property
    def malicious(self) -> set[int]:
        return set(self.confirmed)

    def confirmed_as(self, kind: str) -> set[int]:
        return {c for c, k in self.confirmed.items() if k == kind}

    # Detection steps.

    def sign_flip_suspects(self, hogs: dict[int, np.ndarray]) -> set[int]:
        reference = [v for c, v in hogs.items() if c not in self.malicious] or list(hogs.values())
        median = np.median(np.stack(reference), axis=0)
        return {c for c, v in hogs.items() if cosine(median, v) < 0}

    def noise_suspects(self, short: dict[int, np.ndarray]) -> set[int]:
        ids = list(short)
        if len(ids) < 2:
            return set()
        values = np.stack([short[c] for c in ids])
        labels = DBSCAN(eps=self.dbscan_eps, min_samples=self.dbscan_min_samples).fit(values).labels_
        clusters = Counter(label for label in labels if label != -1)
        if not clusters:
            return set()
        main = clusters.most_common(1)[0][0]
        centre = np.median(values[labels == main], axis=0)
        distance = {c: float(np.linalg.norm(short[c] - centre)) for c, label in zip(ids, labels) if label != main}
        split = largest_gap_split(list(distance.values()))
        outliers = {c for c, label in zip(ids, labels) if label == -1}
        return {c for c, d in distance.items() if d > split and c in outliers}

    @staticmethod
    def targeted_suspects(long: dict[int, np.ndarray]) -> set[int]:
        ids = list(long)
        if len(ids) < 2:
            return set()
        labels = KMeans(n_clusters=2, random_state=0, n_init=10).fit(np.stack([long[c] for c in ids])).labels_
        minority = 0 if (labels == 1).sum() > (labels == 0).sum() else 1
        return {c for c, label in zip(ids, labels) if label == minority}

    def unreliable_suspects(self, short: dict[int, np.ndarray]) -> set[int]:
        if len(short) < 2:
            return set()
        median = np.median(np.stack(list(short.values())), axis=0)
        similarity = {c: cosine(median, v) for c, v in short.items()}
        split = largest_gap_split(list(similarity.values()))
        return {c for c, s in similarity.items() if s < split}

    def confirm(self, present: list[int], suspects: dict[str, set[int]]) -> None:
        """Update the consecutive-suspicion counters and the confirmed sets (reference: add_mal_id)."""
        anyone = set().union(*suspects.values())
        for c in present:
            if c in anyone:
                self.suspicion[c] += 1
                for kind in (SIGN_FLIP, ADDITIVE_NOISE):
                    if self.suspicion[c] >= self.confirm_rounds and c in suspects[kind]:
                        self.confirmed.setdefault(c, kind)
                if self.suspicion[c] >= 2 * self.confirm_rounds and c in suspects[TARGETED]:
                    self.confirmed.setdefault(c, TARGETED)
            elif self.suspicion[c] == 0:
                self.confirmed.pop(c, None)
            else:
                self.suspicion[c] = 0

    def track_unreliable(self, present: list[int], suspects: set[int]) -> None:
        for c in present:
            if c in suspects:
                self.unreliable_count[c] += 1
                if self.unreliable_count[c] > self.confirm_rounds:
                    self.unreliable.add(c)
            elif self.unreliable_count[c] > 0:
                self.unreliable_count[c] -= 1
            if self.unreliable_count[c] == 0:
                self.unreliable.discard(c)

    # The defense hook.

    def screen(self, server_round: int, updates: list[ClientUpdate]) -> Verdict:
        self.record(updates)
        present = [u.client_id for u in updates]
        excluded: set[int] = set()
        if server_round > self.tau0:
            short = {c: self.short_hog(c) for c in present}
            flips = self.sign_flip_suspects(short if self.sign_flip_history == "short" else {c: self.long[c] for c in present})
            rest = {c: v for c, v in short.items() if c not in flips | self.confirmed_as(SIGN_FLIP)}
            noise = self.noise_suspects(rest)
            long = {c: self.long[c] for c in rest if c not in noise | self.confirmed_as(ADDITIVE_NOISE)}
            targeted = self.targeted_suspects(long)
            self.confirm(present, {SIGN_FLIP: flips, ADDITIVE_NOISE: noise, TARGETED: targeted})
            honest = {c: v for c, v in rest.items() if c not in self.malicious}
            self.track_unreliable(present, self.unreliable_suspects(honest))
            excluded = self.malicious | flips | noise | targeted
        keep = [u.client_id not in excluded for u in updates]
        return Verdict(keep=keep, labels=[self.label(c) for c in present])

    def combiner(self) -> Combine | None:
        """The paper's unweighted mean of the kept updates (``mean=uniform``), or the strategy's own (``mean=strategy``)."""
        return uniform_mean if self.mean == "uniform" else None

    def label(self, client_id: int) -> str:
        """The client's confirmed type: an attack type, unreliable or benign."""
        if client_id in self.confirmed:
            return self.confirmed[client_id]
        return UNRELIABLE if client_id in self.unreliable else BENIGN

    # Checkpointing: the histories and counters survive a save/restore (tensors and plain types only,
    # so torch.load(weights_only=True) accepts them).

    def state_dict(self) -> dict[str, Any]:
        return {
            "long": {c: torch.from_numpy(v.copy()) for c, v in self.long.items()},
            "recent": {c: [torch.from_numpy(v.copy()) for v in w] for c, w in self.recent.items()},
            "suspicion": dict(self.suspicion),
            "unreliable_count": dict(self.unreliable_count),
            "confirmed": dict(self.confirmed),
            "unreliable": sorted(self.unreliable),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.long = {int(c): np.asarray(v, dtype=np.float64) for c, v in state["long"].items()}
        self.recent = {
            int(c): deque((np.asarray(v, dtype=np.float64) for v in w), maxlen=self.short_window)
            for c, w in state["recent"].items()
        }
        self.suspicion = defaultdict(int, {int(c): n for c, n in state["suspicion"].items()})
        self.unreliable_count = defaultdict(int, {int(c): n for c, n in state["unreliable_count"].items()})
        self.confirmed = {int(c): k for c, k in state["confirmed"].items()}
        self.unreliable = set(state["unreliable"])
