"""Literal float64 reference of RegMean, written directly from /work/shared/SPEC_REGMEAN.md.

This module is the ground truth the fast implementation is tested against. It is deliberately naive: plain numpy,
float64, one statement per line of the spec (R2 ... R4), task-vector route (R4.3), float64 linear solve (R4.4). It is
never the fast path and never imports anything from ``tsvmerge``.
"""

from __future__ import annotations

import math
import re

import numpy as np

# R2: the four per-block weights of every visual resblock (open_clip layout of SPEC.md §1).
_REGMEAN_KEY = re.compile(
    r"^(model\.)?visual\.transformer\.resblocks\.\d+\."
    r"(attn\.in_proj_weight|attn\.out_proj\.weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$"
)

DEFAULT_RATIO = 0.95  # reduce_non_diagonal_ratio: the factor KEPT on the off-diagonal entries


def key_class(key: str, shape: tuple) -> str:
    """R2: "regmean" for the four per-block visual resblock weights, "average" for every other floating entry."""
    if len(tuple(shape)) == 2 and _REGMEAN_KEY.match(key):
        return "regmean"
    return "average"


def regmean_keys(keys) -> list[str]:
    """R2: the RegMean keys among ``keys`` (names only), in the given order."""
    return [key for key in keys if _REGMEAN_KEY.match(key)]


def gram(x_rows: np.ndarray) -> np.ndarray:
    """R3: G = XᵀX / rows, X reshaped to [rows, n_in] (all tokens of all images as rows)."""
    x = np.asarray(x_rows, dtype=np.float64)
    x = x.reshape(-1, x.shape[-1])
    return x.T @ x / x.shape[0]


def reduce_gram(G: np.ndarray, a: float) -> np.ndarray:
    """R4.1: G̃ = a·G + (1 − a)·Diag(G)."""
    G = np.asarray(G, dtype=np.float64)
    return a * G + (1.0 - a) * np.diag(np.diag(G))


def regmean_merge_key(deltas: list[np.ndarray], grams: list[np.ndarray], a: float) -> np.ndarray:
    """R4.2/R4.3: τ* = (Σ τi G̃i)(Σ G̃i)⁻¹ via a float64 solve of the transposed system; singular → ValueError."""
    deltas = [np.asarray(d, dtype=np.float64) for d in deltas]
    reduced = [reduce_gram(G, a) for G in grams]
    S = np.zeros_like(reduced[0])
    P = np.zeros_like(deltas[0])
    for tau_i, G_i in zip(deltas, reduced):
        S = S + G_i
        P = P + tau_i @ G_i
    if np.any(np.diag(S) == 0):  # a zero diagonal entry means a zero row/column: exactly singular
        raise ValueError("RegMean: the sum of the reduced Grams is singular (an input feature is 0 in every task)")
    if np.linalg.matrix_rank(S) < S.shape[0]:  # rank-deficient up to round-off (e.g. a = 1 and too few rows)
        raise ValueError("RegMean: the sum of the reduced Grams is singular (rank-deficient)")
    try:
        # τ* S = P  ⇔  Sᵀ τ*ᵀ = Pᵀ
        return np.linalg.solve(S.T, P.T).T
    except np.linalg.LinAlgError as exc:
        raise ValueError(f"RegMean: the sum of the reduced Grams is singular ({exc})") from exc


def regmean_merge(
    task_vectors: list[dict[str, np.ndarray]], grams: list[dict[str, np.ndarray]], a: float = DEFAULT_RATIO
) -> dict[str, np.ndarray]:
    """R4: the whole τ*. RegMean keys: closed form with grams[i][key]; every other floating entry: mean τ.

    Non-floating entries are skipped (θ0 kept). T = 1 returns τ1 exactly (R7: "θ1 exactly, may short-cut").
    """
    out = {}
    for key, first in task_vectors[0].items():
        first = np.asarray(first)
        if not np.issubdtype(first.dtype, np.floating):
            continue
        values = [np.asarray(tv[key], dtype=np.float64) for tv in task_vectors]
        if len(values) == 1:
            out[key] = values[0].copy()
        elif key_class(key, first.shape) == "regmean":
            out[key] = regmean_merge_key(values, [g[key] for g in grams], a)
        else:
            out[key] = np.mean(np.stack(values), axis=0)
    return out


def attention_context(x: np.ndarray, w_in: np.ndarray, b_in: np.ndarray, heads: int) -> np.ndarray:
    """R2 / R8.11: the out_proj input. x [B, L, w] batch-first, w_in [3w, w], b_in [3w] → context [B, L, w].

    q|k|v = x W_inᵀ + b_in (q the first w columns), head h = columns h·d … (h+1)·d − 1 with d = w / heads,
    context_h = softmax(q_h k_hᵀ / √d) v_h (no mask), heads concatenated in order.
    """
    x = np.asarray(x, dtype=np.float64)
    w_in = np.asarray(w_in, dtype=np.float64)
    b_in = np.asarray(b_in, dtype=np.float64)
    width = x.shape[-1]
    assert width % heads == 0
    d = width // heads
    qkv = x @ w_in.T + b_in  # [B, L, 3w]
    q = qkv[..., 0:width]
    k = qkv[..., width : 2 * width]
    v = qkv[..., 2 * width : 3 * width]
    contexts = []
    for h in range(heads):
        cols = slice(h * d, (h + 1) * d)
        scores = q[..., cols] @ np.swapaxes(k[..., cols], -1, -2) / math.sqrt(d)  # [B, L, L]
        scores = scores - scores.max(axis=-1, keepdims=True)
        weights = np.exp(scores)
        weights = weights / weights.sum(axis=-1, keepdims=True)
        contexts.append(weights @ v[..., cols])
    return np.concatenate(contexts, axis=-1)
