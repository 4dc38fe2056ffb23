"""Refinable thickness models: each frame's thickness distribution as a differentiable function.

A frame sees a distribution of thicknesses (wedges, bent or stepped crystals); its intensity is
the incoherent average Σ_n w_n I(t_n) over nodes t_n [Å] with weights w_n (Σ w = 1). Every
model here maps the frames' goniometer geometry (:class:`FrameFeatures`) to nodes and weights,
``Float[Array, "frame node"]`` each, and is a frozen ``equinox.Module`` whose array leaves are
the refinable raw parameters. Thicknesses are kept inside [t_min, t_max] (:class:`Bounds`) by
a logistic map, so no step can leave the bounds.

- :class:`ConstantThickness`: one thickness for every frame.
- :class:`PerFrameThickness`: one free thickness per frame.
- :class:`PlateThickness`: a slab t₀ / |n̂_lab · ẑ| with the plate normal n̂ fixed to the
  crystal and turned with the goniometer, n̂_lab = R_axis(α) n̂₀ (n̂₀ two refinable angles).
- :class:`NeuralThickness`: the hybrid model. A small MLP of the normalised goniometer angle
  gives a Gaussian mean and width per frame, integrated by Gauss–Hermite quadrature
  (deterministic, so gradients are exact), or, with ``form="grid"``, free-form weights
  (softmax) over a fixed thickness grid, which can represent wedges, steps and bimodal frames.

:func:`fit_thickness_model` pretrains any model to per-frame target thicknesses (e.g. from a
thickness search) so that refinement starts from a sensible distribution.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, Int, PRNGKeyArray

from .errors import InputError
from .frames import axis_rotation

_HERMITE_NODES = 5

START_WIDTH = {"neural": 0.1, "neural-grid": 0.3}
"""Default ``start_width`` of each neural model: the starting standard deviation per frame as a
share of its starting thickness. The grid needs a broad start to find thickness populations far
from it (docs/benchmarks.md, "A broad starting distribution"); the Gaussian's five Hermite nodes
spread a broad one over μ ± 0.86 μ, a coarse average over intensities that oscillate with
thickness (real CsPbBr₃: R_obs frame mean 9.23 % at the start with 0.3, 6.18 % with 0.1;
docs/benchmarks.md, "Each thickness model on real CsPbBr₃")."""


class Bounds(eqx.Module):
    """Thickness bounds [Å], static."""

    t_min: float = eqx.field(static=True, converter=float)
    t_max: float = eqx.field(static=True, converter=float)

    def __check_init__(self):
        if not (0 < self.t_min < self.t_max and np.isfinite(self.t_max)):
            raise InputError(f"need 0 < thickness_min < thickness_max, got {self.t_min}, {self.t_max}",
                             source="thickness bounds")

    def to_thickness(self, raw: Array) -> Array:
        """t = t_min + (t_max − t_min) σ(raw) [Å]."""
        return self.t_min + (self.t_max - self.t_min) * jax.nn.sigmoid(raw)

    def to_raw(self, thickness) -> Array:
        """Inverse of :meth:`to_thickness` (thickness clipped just inside the bounds)."""
        span = self.t_max - self.t_min
        f = jnp.clip((jnp.asarray(thickness, dtype=float) - self.t_min) / span, 1e-6, 1 - 1e-6)
        return jnp.log(f) - jnp.log1p(-f)


class FrameFeatures(eqx.Module):
    """What a thickness model may depend on, per frame.

    Attributes:
        index: frame index within its dataset (for per-frame parameters), ``[frame]``.
        alpha: goniometer angle α [deg], ``[frame]``.
        axis: unit goniometer axis in the lab frame, ``[3]``.
    """

    index: Int[Array, " frame"]
    alpha: Float[Array, " frame"]
    axis: Float[Array, "3"]


class ConstantThickness(eqx.Module):
    """The same single thickness for every frame."""

    raw: Float[Array, ""]
    bounds: Bounds

    def __call__(self, features: FrameFeatures):
        n = features.alpha.shape[0]
        t = jnp.broadcast_to(self.bounds.to_thickness(self.raw), (n, 1))
        return t, jnp.ones_like(t)


class PerFrameThickness(eqx.Module):
    """One free thickness per frame of the dataset, ``raw[frame]``."""

    raw: Float[Array, " frames"]
    bounds: Bounds

    def __call__(self, features: FrameFeatures):
        t = self.bounds.to_thickness(self.raw[features.index])[:, None]
        return t, jnp.ones_like(t)


class PlateThickness(eqx.Module):
    """A plate of thickness t₀: path length t₀ / |n̂_lab · ẑ|, n̂_lab = R_axis(α) n̂₀.

    n̂₀ = (sin θ cos φ, sin θ sin φ, cos θ) in the lab at α = 0, θ = ``normal[0]``,
    φ = ``normal[1]`` [rad]. The path factor is capped at 1/cos 80°.
    """

    raw: Float[Array, ""]
    normal: Float[Array, "2"]
    bounds: Bounds

    def __call__(self, features: FrameFeatures):
        theta, phi = self.normal[0], self.normal[1]
        n0 = jnp.stack([jnp.sin(theta) * jnp.cos(phi), jnp.sin(theta) * jnp.sin(phi), jnp.cos(theta)])
        rotations = jax.vmap(lambda a: axis_rotation(features.axis, a))(jnp.deg2rad(features.alpha))
        cosine = jnp.abs(jnp.einsum("fij,j->fi", rotations, n0)[:, 2])
        path = 1.0 / jnp.maximum(cosine, np.cos(np.deg2rad(80.0)))
        t = jnp.clip(self.bounds.to_thickness(self.raw) * path, self.bounds.t_min, self.bounds.t_max)[:, None]
        return t, jnp.ones_like(t)


class NeuralThickness(eqx.Module):
    """An MLP of the normalised goniometer angle giving each frame's thickness distribution.

    Input x = (α − α_centre) / α_half_range ∈ [−1, 1] and the Fourier features sin, cos of
    kπx/2 for k = 1 … ``frequencies`` (1 + 2·frequencies inputs). With one pair, the refined
    network on real quartz gave runs of ten and more frames one identical distribution (its tanh
    units saturated there, so no gradient separated those frames); more frequencies let it follow
    changes over a few frames (docs/benchmarks.md). ``form="gaussian"``: two outputs, mean μ = t_min + (t_max − t_min) σ(o₀) and
    width s = width_max σ(o₁), nodes μ + √2 s x_k, weights w_k/√π (5-point Gauss–Hermite;
    nodes clipped to the bounds). ``form="grid"``: one output per node of ``grid`` [Å],
    weights softmax(o), and one more that slides the frame's nodes together by
    h·tanh(o_shift), h the grid spacing. Without the slide a frame of one thickness between two
    nodes had to be a mixture of both, whose intensities differ from those of its mean: the
    learned plate thicknesses of quartz came out up to 5 % off, in the pattern of the grid
    (docs/benchmarks.md). Thicknesses [Å].
    """

    mlp: eqx.nn.MLP
    bounds: Bounds
    alpha_centre: float = eqx.field(static=True)
    alpha_half_range: float = eqx.field(static=True)
    form: str = eqx.field(static=True)
    width_max: float = eqx.field(static=True)
    grid: tuple[float, ...] = eqx.field(static=True)
    frequencies: int = eqx.field(static=True, default=1)

    def grid_spacing(self) -> float:
        """Distance between neighbouring grid nodes [Å] (0 for a one-node grid)."""
        return (self.grid[-1] - self.grid[0]) / (len(self.grid) - 1) if len(self.grid) > 1 else 0.0

    def _inputs(self, alpha: Float[Array, " frame"]) -> Float[Array, "frame feature"]:
        x = (alpha - self.alpha_centre) / self.alpha_half_range
        phase = 0.5 * jnp.pi * x[:, None] * jnp.arange(1, self.frequencies + 1, dtype=x.dtype)[None, :]
        return jnp.concatenate([x[:, None], jnp.sin(phase), jnp.cos(phase)], axis=1)

    def slid_grid(self, features: FrameFeatures):
        """Grid form: each frame's slide tanh(o_shift) ∈ (−1, 1) [grid spacings], its nodes (the grid
        slid by that many spacings, clipped to the bounds) [Å] and their weights."""
        outputs = jax.vmap(self.mlp)(self._inputs(features.alpha))
        grid = jnp.asarray(self.grid, dtype=outputs.dtype)
        slide = jnp.tanh(outputs[:, -1])
        nodes = jnp.clip(grid[None, :] + self.grid_spacing() * slide[:, None], self.bounds.t_min, self.bounds.t_max)
        return slide, nodes, jax.nn.softmax(outputs[:, :-1], axis=1)

    def __call__(self, features: FrameFeatures):
        if self.form == "grid":
            return self.slid_grid(features)[1:]
        outputs = jax.vmap(self.mlp)(self._inputs(features.alpha))
        x, w = np.polynomial.hermite.hermgauss(_HERMITE_NODES)
        mean = self.bounds.to_thickness(outputs[:, 0])
        width = self.width_max * jax.nn.sigmoid(outputs[:, 1])
        nodes = mean[:, None] + np.sqrt(2.0) * width[:, None] * jnp.asarray(x, dtype=outputs.dtype)[None, :]
        nodes = jnp.clip(nodes, self.bounds.t_min, self.bounds.t_max)
        weights = jnp.broadcast_to(jnp.asarray(w / np.sqrt(np.pi), dtype=outputs.dtype), nodes.shape)
        return nodes, weights


ThicknessModel = ConstantThickness | PerFrameThickness | PlateThickness | NeuralThickness
MODEL_KINDS = ("constant", "perframe", "plate", "neural", "neural-grid")


def node_count(kind: str, grid_nodes: int = 24) -> int:
    """Thickness nodes per frame that a model of ``kind`` integrates over."""
    return {"neural": _HERMITE_NODES, "neural-grid": grid_nodes}.get(kind, 1)


def make_thickness_model(
    kind: str,
    alpha: Float[np.ndarray, " frame"],
    initial: Float[np.ndarray, " frame"],
    bounds: Bounds,
    *,
    key: PRNGKeyArray,
    width: int = 16,
    depth: int = 2,
    grid_nodes: int = 24,
    grid_span: float | None = 2.5,
    width_max: float | None = None,
    frequencies: int = 8,
    start_width: float | None = None,
) -> ThicknessModel:
    """A thickness model of ``kind`` (one of :data:`MODEL_KINDS`) starting near ``initial`` [Å].

    ``initial`` gives a thickness per frame (e.g. from a thickness search); the constant and
    plate models start from its median, the per-frame model from each value, and the neural
    models are pretrained to it with :func:`fit_thickness_model`. The neural-grid model's
    ``grid_nodes`` thicknesses are evenly spaced over [min(initial) / grid_span,
    max(initial) · grid_span] within the bounds (``grid_span`` None: over the whole bounds).
    ``frequencies``: Fourier features of the neural models' input (:class:`NeuralThickness`).
    ``start_width``: standard deviation of the neural models' starting distribution as a share of
    each frame's starting thickness (None: the model's :data:`START_WIDTH`).
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    initial = np.clip(np.asarray(initial, dtype=np.float64), bounds.t_min, bounds.t_max)
    median = float(np.median(initial))
    if kind == "constant":
        return ConstantThickness(bounds.to_raw(median), bounds)
    if kind == "perframe":
        return PerFrameThickness(bounds.to_raw(initial), bounds)
    if kind == "plate":
        return PlateThickness(bounds.to_raw(median), jnp.zeros(2), bounds)
    if kind not in ("neural", "neural-grid"):
        raise InputError(f"unknown thickness model {kind!r} ({', '.join(MODEL_KINDS)})", source="thickness_model")
    grid_form = kind == "neural-grid"
    if grid_span is not None and not grid_span > 1:
        raise InputError(f"must be > 1, got {grid_span}", source="grid_span")
    low, high = ((bounds.t_min, bounds.t_max) if grid_span is None else
                 (max(bounds.t_min, float(initial.min()) / grid_span), min(bounds.t_max, float(initial.max()) * grid_span)))
    grid = tuple(float(t) for t in np.linspace(low, high, grid_nodes)) if grid_form else ()
    if not (isinstance(frequencies, int) and frequencies >= 1):
        raise InputError(f"must be a positive integer, got {frequencies!r}", source="nn_frequencies")
    mlp = eqx.nn.MLP(1 + 2 * frequencies, grid_nodes + 1 if grid_form else 2, width, depth, activation=jax.nn.tanh,
                     key=key)
    half_range = max(0.5 * float(alpha.max() - alpha.min()), 1.0)
    model = NeuralThickness(mlp, bounds, float(0.5 * (alpha.max() + alpha.min())), half_range,
                            "grid" if grid_form else "gaussian",
                            float(width_max if width_max is not None else 0.25 * (bounds.t_max - bounds.t_min)),
                            grid, frequencies)
    if start_width is not None and not (np.isfinite(start_width) and start_width > 0):
        raise InputError(f"must be a positive number, got {start_width!r}", source="start_width")
    share = START_WIDTH[kind] if start_width is None else start_width
    return fit_thickness_model(model, alpha, initial, spread=share * initial)


def mean_and_width(nodes: Array, weights: Array) -> tuple[Array, Array]:
    """Mean Σ w t and standard deviation of each frame's distribution [Å]."""
    mean = jnp.sum(weights * nodes, axis=-1)
    variance = jnp.sum(weights * (nodes - mean[..., None]) ** 2, axis=-1)
    return mean, jnp.sqrt(jnp.maximum(variance, 0.0))


def fit_thickness_model(model: ThicknessModel, alpha, target, steps: int = 600, learning_rate: float = 0.02,
                        spread=None) -> ThicknessModel:
    """Pretrain ``model`` so that each frame's mean thickness matches ``target`` [Å].

    ``spread`` [Å]: one width, or one per frame (default 2 % of the bounds' span).
    Gaussian form: least squares on the mean (relative units) with a small pull of the width
    towards ``spread``. Grid form: cross-entropy to a discretised
    Gaussian of that spread around the target, and the slide of the nodes pulled to zero. Adam, ``steps`` full-batch steps, jitted.
    """
    alpha = jnp.asarray(alpha, dtype=float)
    target = jnp.asarray(target, dtype=float)
    span = model.bounds.t_max - model.bounds.t_min
    spread = jnp.broadcast_to(jnp.asarray(0.02 * span if spread is None else spread, dtype=float), target.shape)
    features = FrameFeatures(jnp.arange(alpha.shape[0]), alpha, jnp.array([1.0, 0.0, 0.0]))
    grid_form = isinstance(model, NeuralThickness) and model.form == "grid"
    if grid_form:
        grid = jnp.asarray(model.grid)
        desired = jax.nn.softmax(-0.5 * ((grid[None, :] - target[:, None]) / spread[:, None]) ** 2, axis=1)

    def loss(m):
        if grid_form:
            slide, _, weights = m.slid_grid(features)
            logw = jnp.log(jnp.maximum(weights, 1e-30))
            return -jnp.mean(jnp.sum(desired * logw, axis=1)) + jnp.mean(slide**2)
        nodes, weights = m(features)
        mean, std = mean_and_width(nodes, weights)
        return jnp.mean(((mean - target) / span) ** 2) + 0.01 * jnp.mean(((std - spread) / span) ** 2)

    params, static = eqx.partition(model, eqx.is_inexact_array)
    optimiser = optax.adam(learning_rate)

    def step(carry, _):
        p, state = carry
        grad = jax.grad(lambda q: loss(eqx.combine(q, static)))(p)
        updates, state = optimiser.update(grad, state, p)
        return (optax.apply_updates(p, updates), state), None

    @jax.jit
    def train(p):
        return jax.lax.scan(step, (p, optimiser.init(p)), None, length=steps)[0][0]

    return eqx.combine(train(params), static)
