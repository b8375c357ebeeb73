"""A character-level transformer language model trained on the Python standard library's own source files.

    hes train --config examples/charlm.yaml

`stdlib_text` reads the standard library's top-level .py files (sorted by name; every 10th file is test, every
10th after that dev), maps each character to its ASCII code (anything else to 0) and cuts the text into
sequences of seq_len + 1 characters: x the first seq_len, y the same shifted by one. The loss is cross-entropy
over every position (logits N x T x 128 against N x T targets); the accuracy is per character.
`transformer` is a GPT-style decoder: 2 blocks of causal self-attention and an MLP, d = 96 (254,720 parameters).
"""
from __future__ import annotations

import sysconfig
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 128  # ASCII; other characters are 0


def _encode(text: str) -> np.ndarray:
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    return np.where(codes < VOCAB, codes, 0).astype(np.int64)


def _sequences(files: list[Path], seq_len: int, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """At most `limit` characters of the files, in order, as (x, y) sequences of seq_len."""
    parts, n = [], 0
    for f in files:
        text = f.read_text(encoding="utf-8", errors="replace")[:limit - n]
        parts.append(_encode(text))
        n += len(text)
        if n >= limit:
            break
    codes = np.concatenate(parts)
    rows = len(codes) // (seq_len + 1)
    chunks = codes[:rows * (seq_len + 1)].reshape(rows, seq_len + 1)
    return np.ascontiguousarray(chunks[:, :-1]), np.ascontiguousarray(chunks[:, 1:])


def stdlib_text(seq_len: int = 64, train_chars: int = 200_000, eval_chars: int = 40_000) -> dict[str, np.ndarray]:
    """data.factory: train, dev and test sequences from disjoint files of the standard library."""
    files = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    if len(files) < 20:
        raise FileNotFoundError(f"the standard library's sources are not in {sysconfig.get_paths()['stdlib']}")
    test, dev = files[0::10], files[5::10]
    train = [f for i, f in enumerate(files) if i % 5 != 0]
    out = {}
    for name, part, limit in (("train", train, train_chars), ("dev", dev, eval_chars), ("test", test, eval_chars)):
        out[f"x_{name}"], out[f"y_{name}"] = _sequences(part, seq_len, limit)
    return out


class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.qkv, self.proj = nn.LayerNorm(d), nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.norm2, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (n, heads, t, d / heads)
        x = x + self.proj(att.transpose(1, 2).reshape(n, t, d))
        return x + self.down(F.gelu(self.up(self.norm2(x))))


class CharTransformer(nn.Module):
    def __init__(self, d: int = 96, heads: int = 4, layers: int = 2, seq_len: int = 64) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d)
        self.position = nn.Parameter(torch.randn(seq_len, d) * 0.02)
        self.blocks = nn.Sequential(*(Block(d, heads) for _ in range(layers)))
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, VOCAB)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position[:x.shape[1]]
        return self.head(self.norm(self.blocks(h)))  # logits (n, t, VOCAB)


def transformer(d: int = 96, heads: int = 4, layers: int = 2, seq_len: int = 64) -> nn.Module:
    """model.factory: the decoder; seq_len must be at least data.kwargs.seq_len."""
    return CharTransformer(d, heads, layers, seq_len)
