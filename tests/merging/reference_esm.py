"""Literal float64 reference of ESM (Essential Subspace Merging), written directly from /work/shared/SPEC_ESM.md.

This module is the ground truth the fast implementation is tested against. It is deliberately naive: plain numpy,
float64, one statement per line of the spec (section numbers E2 ... E7 in the comments), no batching, no caching, no
shortcuts. It is never the fast path and never imports anything from ``tsvmerge``.

The "SVD fallback" class uses TSV-M exactly as SPEC.md §3 (Procrustes): per-task thin SVD, k = floor(min(m, n) / T),
U's side by side, S's concatenated, V's side by side, polar factors (P Rᵀ) of both, polar(U) diag(S) polar(V)ᵀ.
"""

from __future__ import annotations

import math
import re
from typing import Callable

import numpy as np

# E2: the ESD keys of the published open_clip layout (visual resblocks only; the text tower is deleted).
_ESD_KEY = re.compile(
    r"^(model\.)?visual\.transformer\.resblocks\.\d+\.(attn\.in_proj_weight|mlp\.c_fc\.weight|mlp\.c_proj\.weight)$"
)

# E6: the four resblock weight types rescaled by their norms (substring match on the key).
RESCALED_TYPES = ("attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

EIG_EXPONENT = 0.15  # E4 step 2
NORM_POWER = 2  # E4 steps 3-5, E6
SCALE = 2.0  # E4 step 6


def key_class(key: str, shape: tuple) -> str:
    """E2: "esd" | "svd" | "average" for a floating entry of the given shape."""
    ndim = len(tuple(shape))
    if ndim == 2 and "text_projection" not in key and _ESD_KEY.match(key):
        return "esd"
    if ndim == 2 and "text_projection" not in key:
        return "svd"
    return "average"


def polar(a: np.ndarray) -> np.ndarray:
    """polar(A) = P Rᵀ from the thin SVD A = P diag(s) Rᵀ."""
    p, _, rt = np.linalg.svd(np.asarray(a, dtype=np.float64), full_matrices=False)
    return p @ rt


def mean_singular_value(a: np.ndarray) -> float:
    """s̄(A): the mean of A's min(rows, cols) singular values."""
    s = np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False)
    assert s.shape[0] == min(a.shape)
    return float(np.mean(s))


# ----------------------------------------------------------------------------------------------------------- E3
def esd(x: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """E3: uncentered PCA of ΔO = X ΔWᵀ.

    x: [N, n_in] (all tokens of all samples as rows), delta: ΔW [m, n_in].
    Returns Q [m, m] (eigenvectors as columns, padded with unit vectors e_{r+1..m} when r = min(N, m) < m) and
    λ [m] (σ² / (N − 1), padded with 0), both ordered by λ descending (stable: SVD order, padding last).
    """
    x = np.asarray(x, dtype=np.float64)
    delta = np.asarray(delta, dtype=np.float64)
    n_rows = x.shape[0]
    m = delta.shape[0]
    d_o = x @ delta.T  # [N, m]
    _, sigma, bt = np.linalg.svd(d_o, full_matrices=False)  # no centering
    r = min(n_rows, m)
    assert sigma.shape[0] == r
    q = bt.T  # [m, r], columns b_1 ... b_r
    lam = sigma**2 / (n_rows - 1)
    if r < m:
        eye = np.eye(m)
        q = np.concatenate([q, eye[:, r:m]], axis=1)  # e_{r+1} ... e_m (not orthogonalized)
        lam = np.concatenate([lam, np.zeros(m - r)])
    order = np.argsort(-lam, kind="stable")
    return q[:, order], lam[order]


# ----------------------------------------------------------------------------------------------------------- E4
def esm_merge_key_details(deltas: list[np.ndarray], Qs: list[np.ndarray], lams: list[np.ndarray]) -> dict:
    """E4 for one ESD key, returning the result and every intermediate (for the worked-example checks)."""
    deltas = [np.asarray(d, dtype=np.float64) for d in deltas]
    Qs = [np.asarray(q, dtype=np.float64) for q in Qs]
    lams = [np.asarray(lam, dtype=np.float64) for lam in lams]
    T = len(deltas)
    m, n = deltas[0].shape
    k = m // T  # from the ROW count
    if k == 0:
        raise ValueError(f"ESM: k = {m} // {T} = 0")
    for i, d in enumerate(deltas):
        if not np.any(d != 0):
            raise ValueError(f"ESM: task {i} has an all-zero delta on an ESD key")

    nus, ws, Us, Vts = [], [], [], []
    for i in range(T):
        V = Qs[i].T @ deltas[i]  # step 1: all m rows
        nu = float(np.linalg.norm(V, "fro"))
        p = lams[i][:k] ** EIG_EXPONENT  # step 2: top k only
        w = p / np.mean(p)
        U_i = Qs[i][:, :k] @ np.diag(w)  # step 3
        Vt_i = nu**NORM_POWER * (np.diag(w) @ V[:k, :])
        nus.append(nu)
        ws.append(w)
        Us.append(U_i)
        Vts.append(Vt_i)

    U_hat = np.concatenate(Us, axis=1)  # step 4: [m, Tk]
    nu_bar = float(np.mean(nus))
    V_hat = np.concatenate(Vts, axis=0) / nu_bar**NORM_POWER  # [Tk, n]
    gamma = np.linalg.norm(V_hat, axis=0)  # step 5: column norms, length n
    gamma_bar = float(np.mean(gamma))
    V_hat_scaled = V_hat @ np.diag((gamma / gamma_bar) ** NORM_POWER)
    s_u = mean_singular_value(U_hat)  # step 6
    s_v = mean_singular_value(V_hat_scaled)
    result = SCALE * s_u * s_v * (polar(U_hat) @ polar(V_hat_scaled))
    return {
        "k": k,
        "nu": np.array(nus),
        "w": ws,
        "U_hat": U_hat,
        "V_hat": V_hat,
        "gamma": gamma,
        "V_hat_scaled": V_hat_scaled,
        "s_bar_U": s_u,
        "s_bar_V": s_v,
        "result": result,
    }


def esm_merge_key(deltas: list[np.ndarray], Qs: list[np.ndarray], lams: list[np.ndarray]) -> np.ndarray:
    """E4: τMT[key] = 2 · s̄(Û) · s̄(V̂) · polar(Û) · polar(V̂)."""
    return esm_merge_key_details(deltas, Qs, lams)["result"]


# ----------------------------------------------------------------------------------------------------------- E5
def tsvm_merge_key(deltas: list[np.ndarray]) -> np.ndarray:
    """SPEC.md §3 TSVM (Procrustes) for one 2-D entry. Zero tasks are not skipped: their SVD (s = 0) is concatenated."""
    deltas = [np.asarray(d, dtype=np.float64) for d in deltas]
    T = len(deltas)
    m, n = deltas[0].shape
    k = min(m, n) // T
    if k == 0:
        raise ValueError(f"TSVM: k = min({m}, {n}) // {T} = 0")
    Us, ss, Vs = [], [], []
    for d in deltas:
        u, s, vt = np.linalg.svd(d, full_matrices=False)
        Us.append(u[:, :k])
        ss.append(s[:k])
        Vs.append(vt[:k, :].T)
    U_hat = np.concatenate(Us, axis=1)
    s_hat = np.concatenate(ss)
    V_hat = np.concatenate(Vs, axis=1)
    return polar(U_hat) @ np.diag(s_hat) @ polar(V_hat).T


def mean_of_tasks(values: list[np.ndarray]) -> np.ndarray:
    """E5 averaged class: the plain element-wise mean over tasks."""
    return np.mean(np.stack([np.asarray(v, dtype=np.float64) for v in values]), axis=0)


# ----------------------------------------------------------------------------------------------------------- E6
def rescale_layers(tau: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """E6: τ ← τ · (‖τ‖_F / μ_t)² for the four resblock weight types; norms taken before any rescaling."""
    pre = {key: float(np.linalg.norm(value)) for key, value in tau.items()}
    out = dict(tau)
    for t in RESCALED_TYPES:
        keys = [key for key in tau if t in key]
        if not keys:
            continue
        mu = float(np.mean([pre[key] for key in keys]))
        if mu == 0.0:  # every entry of that type is zero: nothing to rescale (0 stays 0)
            continue
        for key in keys:
            out[key] = tau[key] * (pre[key] / mu) ** NORM_POWER
    return out


def esm_merge_before_rescaling(
    task_vectors: list[dict[str, np.ndarray]], activations: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """E2 + E3/E4 + E5: τMT before E6. Non-floating entries are skipped (θ0 kept)."""
    tau = {}
    for key, first in task_vectors[0].items():
        first = np.asarray(first)
        if not np.issubdtype(first.dtype, np.floating):
            continue
        values = [np.asarray(tv[key], dtype=np.float64) for tv in task_vectors]
        cls = key_class(key, first.shape)
        if cls == "esd":
            Qs, lams = [], []
            for i, delta in enumerate(values):
                q, lam = esd(activations[i][key], delta)
                Qs.append(q)
                lams.append(lam)
            tau[key] = esm_merge_key(values, Qs, lams)
        elif cls == "svd":
            tau[key] = tsvm_merge_key(values)
        else:
            tau[key] = mean_of_tasks(values)
    return tau


def esm_merge(
    task_vectors: list[dict[str, np.ndarray]], activations: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The whole τMT (E2, E4, E5, E6). activations[i][key] = X rows [N, n_in] of task i for each ESD key."""
    return rescale_layers(esm_merge_before_rescaling(task_vectors, activations))


# ----------------------------------------------------------------------------------------------------------- E7
def esm_merged_model(theta0: dict[str, np.ndarray], tau: dict[str, np.ndarray], alpha: float) -> dict[str, np.ndarray]:
    """E7 partial α: θ0 + α·τMT on ESD keys, θ0 + 1·τMT on every other floating entry, θ0 elsewhere."""
    out = {}
    for key, value in theta0.items():
        value = np.asarray(value)
        if key in tau and np.issubdtype(value.dtype, np.floating):
            coef = alpha if key_class(key, value.shape) == "esd" else 1.0
            out[key] = value.astype(np.float64) + coef * np.asarray(tau[key], dtype=np.float64)
        else:
            out[key] = value.copy()
    return out


def golden_section(
    f: Callable[[float], float],
    g: Callable[[float], float],
    a: float = 0.0,
    b: float = 2.0,
    tol: float = 0.01,
    max_iter: int = 15,
) -> tuple[list[float], float]:
    """E7 golden-section search on f (search metric); choice = first strict maximum of g (choice metric).

    Returns the evaluated points in evaluation order and the chosen α. No point is evaluated twice.
    """
    gr = (math.sqrt(5.0) - 1.0) / 2.0
    c = b - gr * (b - a)
    d = a + gr * (b - a)
    points = [c, d]
    fc = f(c)
    fd = f(d)
    for _ in range(max_iter):
        if abs(b - a) < tol:
            break
        if fc > fd:  # strict
            b = d
            d, fd = c, fc
            c = b - gr * (b - a)
            fc = f(c)
            points.append(c)
        else:  # ties included
            a = c
            c, fc = d, fd
            d = a + gr * (b - a)
            fd = f(d)
            points.append(d)
    best_alpha, best_value = None, -math.inf
    for p in points:  # in evaluation order; first strict maximum
        value = g(p)
        if best_alpha is None or value > best_value:
            best_alpha, best_value = p, value
    return points, best_alpha


def sample_indices(n_split: int, n: int, seed: int) -> np.ndarray:
    """E3: numpy.random.RandomState(seed).choice(n_split, size=min(n, n_split), replace=False)."""
    return np.random.RandomState(seed).choice(n_split, size=min(n, n_split), replace=False)
