"""Shared helpers for the index tests: a small clustered corpus with known exact neighbours."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def clustered(n: int, dim: int, seed: int = 0, clusters: int = 40) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (like sentence embeddings, not iid noise)."""
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(clusters, dim))
    x = c[rng.integers(0, clusters, n)] + 0.6 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def write_corpus(
    dirpath: Path, n: int, dim: int, seed: int = 0, fmt: str = "jsonl"
) -> tuple[Path, Path, np.ndarray]:
    """``passages.<fmt>`` with ids ``p<i>`` and matching ``emb.npy``; returns paths + vectors."""
    x = clustered(n, dim, seed)
    dirpath.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        p = dirpath / "passages.jsonl"
        with open(p, "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(
                    json.dumps(
                        {"id": f"p{i}", "title": f"Title {i}", "text": f"passage number {i}"}
                    )
                    + "\n"
                )
    else:
        p = dirpath / "passages.tsv"
        with open(p, "w", encoding="utf-8") as f:
            f.write("id\ttext\ttitle\n")
            for i in range(n):
                f.write(f"p{i}\tpassage number {i}\tTitle {i}\n")
    e = dirpath / "emb.npy"
    np.save(e, x)
    return p, e, x


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ x.T
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(s, order, 1)


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth)]))
