"""Text classification data as token ids, from a corpus shipped inside a PyPI package.

``chatbot_topics``: the English part of the ``chatterbot-corpus`` wheel, real dialogue
lines (questions and answers) filed by topic (trivia, emotion, coding, ai, psychology,
conversations, ...). Each unique line is one example labelled with its file's topic;
lines filed under two topics are dropped. Tokenised with the MiniLM WordPiece tokenizer
the backbone was pretrained with. The split is fixed (it never depends on the run seed).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import numpy as np
import yaml

from fedsim.models.minilm import tokenize

_SPLIT_SEED = 2017  # fixed: the subsample and the train/test split are part of the dataset


@dataclass(frozen=True)
class TextData:
    """Train/test split of a text classification dataset: token ids (N, L) int64, 0 = padding."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray  # int64 (N,)
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]

    @property
    def input_shape(self) -> tuple[int]:
        """(L,): the token-id sequence length."""
        return (int(self.x_train.shape[1]),)


def chatbot_topics(
    max_len: int = 16, min_count: int = 100, max_per_class: int = 200, test_fraction: float = 0.2
) -> TextData:
    """Topic classification of chatterbot-corpus lines: topics with >= ``min_count`` unique lines,
    at most ``max_per_class`` lines each (a fixed random subset), ``max_len`` tokens per line."""
    checks = {
        "max_len": (max_len, max_len >= 3, "an integer >= 3"),
        "min_count": (min_count, min_count >= 2, "an integer >= 2"),
        "max_per_class": (max_per_class, max_per_class >= 2, "an integer >= 2"),
        "test_fraction": (test_fraction, 0 < test_fraction < 1, "in (0, 1)"),
    }
    for key, (value, ok, rule) in checks.items():
        if not ok:
            raise ValueError(f"dataset.{key}={value}: must be {rule}")
    lines = _topic_lines()
    topics = sorted(t for t in set(lines.values()) if sum(v == t for v in lines.values()) >= min_count)
    if len(topics) < 2:
        raise ValueError(f"dataset.min_count={min_count}: leaves {len(topics)} topic(s); lower it")
    rng = np.random.default_rng(_SPLIT_SEED)
    texts, labels, test_mask = [], [], []
    for label, topic in enumerate(topics):
        chosen = [t for t, v in lines.items() if v == topic]
        chosen = [chosen[i] for i in rng.permutation(len(chosen))[:max_per_class]]
        n_test = max(1, round(len(chosen) * test_fraction))
        texts += chosen
        labels += [label] * len(chosen)
        test_mask += [True] * n_test + [False] * (len(chosen) - n_test)
    ids = tokenize(tuple(texts), max_len)
    y = np.asarray(labels, dtype=np.int64)
    test = np.asarray(test_mask)
    return TextData("chatbot_topics", ids[~test], y[~test], ids[test], y[test], len(topics), tuple(topics))


@lru_cache(maxsize=1)
def _topic_lines() -> dict[str, str]:
    """Unique English lines -> topic (the file name), in a deterministic order; ambiguous lines dropped."""
    folder = files("chatterbot_corpus") / "data" / "english"
    seen: dict[str, set[str]] = {}
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if not path.name.endswith(".yml"):
            continue
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8"))["conversations"]:
            for line in conversation:
                seen.setdefault(str(line).strip(), set()).add(path.name[:-4])
    return {text: next(iter(t)) for text, t in sorted(seen.items()) if len(t) == 1 and text}
