"""Figures of merit on |F| = √I with a per-frame scale profiled out in closed form.

The published method (Klar et al. 2023 weights, also Jana2020's) fits |F| = √I:

- |Fo| = √I_o for I_o > 0; σ(|Fo|) = σ(I) / (2√I_o).
- For I_o ≤ 0, |Fo| = 0 and σ(|Fo|) = √σ(I) (the I → 0 limit of the smooth form
  σ / (√(I + σ) + √I)); the weight there is 1/σ(I), the weight the published form gives at
  I = σ/4, so such reflections count but weakly.
- w = 1 / (σ(|Fo|)² + (μ |Fo|)²), μ = 0.01.
- Model |Fc| = k √I_c per frame; the k minimising Σ w (|Fo| − k|Fc|)² is
  k = Σ w |Fo||Fc| / Σ w |Fc|² (all selected reflections of the frame).

R(obs) = Σ ||Fo| − |Fc|| / Σ |Fo| over I > 3σ(I); wR(all) = √(Σ w (|Fo| − |Fc|)² / Σ w |Fo|²);
GoF = √(Σ w (|Fo| − |Fc|)² / (N_all − N_par)). Global values sum over all frames; the
published method's R_obs and wR are means of per-frame values, given too. Pure numpy (host).
"""

from __future__ import annotations

import numpy as np
from jaxtyping import Float

MU = 0.01
"""Default μ of the weighting scheme (Klar et al. 2023)."""


def amplitudes_and_weights(
    intensity: Float[np.ndarray, " refl"], sigma: Float[np.ndarray, " refl"], mu: float = MU
) -> tuple[np.ndarray, np.ndarray]:
    """|Fo| and the weights w (see the module docstring for I ≤ 0)."""
    i = np.asarray(intensity, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    positive = i > 0
    fo = np.sqrt(np.where(positive, i, 0.0))
    sigma_f = np.where(positive, s / (2.0 * np.where(positive, fo, 1.0)), np.sqrt(s))
    return fo, 1.0 / (sigma_f**2 + (mu * fo) ** 2)


def optimal_scale(fo: np.ndarray, fc: np.ndarray, w: np.ndarray, axis: int = -1) -> np.ndarray:
    """k = Σ w Fo Fc / Σ w Fc² along ``axis`` (0 when Σ w Fc² = 0)."""
    num = np.sum(w * fo * fc, axis=axis)
    den = np.sum(w * fc * fc, axis=axis)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def weighted_residual(fo: np.ndarray, fc: np.ndarray, w: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray]:
    """(χ² = Σ w (Fo − k Fc)², k) with the optimal k, along ``axis`` (broadcasts over the rest)."""
    k = optimal_scale(fo, fc, w, axis)
    residual = fo - np.expand_dims(k, axis) * fc
    return np.sum(w * residual**2, axis=axis), k


def frame_figures(fo: np.ndarray, fc_scaled: np.ndarray, w: np.ndarray, obs: np.ndarray) -> dict:
    """R(obs), wR(all) and the sums behind them for one frame (|Fc| already scaled)."""
    diff = fo - fc_scaled
    sums = {
        "abs_obs": float(np.sum(np.abs(diff[obs]))),
        "fo_obs": float(np.sum(fo[obs])),
        "wres": float(np.sum(w * diff**2)),
        "wfo2": float(np.sum(w * fo**2)),
    }
    return {
        "R_obs": sums["abs_obs"] / sums["fo_obs"] if sums["fo_obs"] > 0 else float("nan"),
        "wR": float(np.sqrt(sums["wres"] / sums["wfo2"])) if sums["wfo2"] > 0 else float("nan"),
        "n_obs": int(np.sum(obs)),
        "n_all": int(len(fo)),
        "sums": sums,
    }


def summarise(frames: list[dict], n_parameters: int) -> dict:
    """Global (Jana-form) and per-frame-mean (published-method form) figures from frame dicts."""
    total = {key: sum(f["sums"][key] for f in frames) for key in ("abs_obs", "fo_obs", "wres", "wfo2")}
    n_obs = sum(f["n_obs"] for f in frames)
    n_all = sum(f["n_all"] for f in frames)
    dof = n_all - n_parameters
    r_frames = [f["R_obs"] for f in frames if np.isfinite(f["R_obs"])]
    wr_frames = [f["wR"] for f in frames if np.isfinite(f["wR"])]
    return {
        "R_obs": total["abs_obs"] / total["fo_obs"],
        "wR_all": float(np.sqrt(total["wres"] / total["wfo2"])),
        "GoF": float(np.sqrt(total["wres"] / dof)) if dof > 0 else float("nan"),
        "R_obs_frame_mean": float(np.mean(r_frames)),
        "wR_frame_mean": float(np.mean(wr_frames)),
        "n_obs": n_obs,
        "n_all": n_all,
        "n_parameters": int(n_parameters),
    }
