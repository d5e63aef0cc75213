"""Procedural "shapes" dataset with known generative factors (offline training data and disentanglement ground truth).

Every item is a function of ``(seed, split, index)`` only: per-item randomness comes from a counter-based
splitmix64 hash evaluated for a whole batch of indices at once, and images are rasterised with an
anti-aliased signed-distance test against polygons, vectorised over batch x pixels x edges.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

SHAPE_NAMES = ("square", "ellipse", "triangle", "star", "heart")
FACTOR_NAMES = ("shape", "scale", "rotation_cos", "rotation_sin", "x", "y", "fg_hue", "bg_hue")
ATTRIBUTE_NAMES = tuple(f"is_{name}" for name in SHAPE_NAMES) + ("large", "left", "top", "warm_fg", "warm_bg")

#: Rotational symmetry period of each shape, in radians (square 90, ellipse 180, triangle 120, star 72, heart 360 deg).
SYMMETRY_PERIODS = tuple(2.0 * math.pi / k for k in (4, 2, 3, 5, 1))
#: Circumradius of the shape as a fraction of the image side.
SCALE_RANGE = (0.15, 0.35)
#: Range of the shape centre (x: column, y: row, both as fractions of the image side; y grows downwards).
POSITION_RANGE = (0.3, 0.7)
#: Hues cover [0, 0.8) of the colour circle, so that no two distinct hues look alike (red wraps around).
HUE_RANGE = (0.0, 0.8)
FG_SATURATION, FG_VALUE = 0.9, 1.0
BG_SATURATION, BG_VALUE = 0.4, 0.35
ELLIPSE_AXIS_RATIO = 0.6

_SPLITS = {"train": 0, "test": 1}
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Hash slots: one independent uniform per slot and item.
_SLOT_SHAPE, _SLOT_SCALE, _SLOT_ROT, _SLOT_X, _SLOT_Y, _SLOT_FG, _SLOT_BG, _SLOT_COUPLE = range(8)
_N_SLOTS = 8
# Target element count of one chunk's work tensors; bounds memory at large sizes (~16 MiB per float tensor).
_CHUNK_ELEMENTS = 1 << 22


def _unit_polygon(name: str) -> np.ndarray:
    """Vertices (E, 2) of a shape centred at the origin with circumradius 1, in image coordinates (y down)."""
    if name == "square":
        ang = np.pi / 4 + np.arange(4) * np.pi / 2  # axis-aligned at zero rotation
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if name == "ellipse":
        ang = np.arange(48) * 2 * np.pi / 48
        return np.stack([np.cos(ang), ELLIPSE_AXIS_RATIO * np.sin(ang)], axis=1)
    if name == "triangle":
        ang = -np.pi / 2 + np.arange(3) * 2 * np.pi / 3  # apex up
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if name == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        radius = np.where(np.arange(10) % 2 == 0, 1.0, math.cos(2 * math.pi / 5) / math.cos(math.pi / 5))
        return np.stack([radius * np.cos(ang), radius * np.sin(ang)], axis=1)
    if name == "heart":
        t = np.arange(48) * 2 * np.pi / 48
        up = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        pts = np.stack([16 * np.sin(t) ** 3, -up], axis=1)
        pts -= (pts.max(0) + pts.min(0)) / 2  # centre of the bounding box is the rotation centre
        return pts / np.sqrt((pts**2).sum(1)).max()
    raise ValueError(f"shape name {name!r} is not one of {SHAPE_NAMES}")


_POLYGONS = tuple(_unit_polygon(name) for name in SHAPE_NAMES)


def shape_polygon(shape: int) -> np.ndarray:
    """Unit polygon (E, 2) of shape class ``shape`` (circumradius 1, centred, unrotated); for tests and plots."""
    return _POLYGONS[int(shape)].copy()


def _splitmix64(z: np.ndarray) -> np.ndarray:
    """Vectorised splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z + np.uint64(_GOLDEN)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _uniforms(seed: int, split_id: int, indices: np.ndarray) -> np.ndarray:
    """Independent uniforms in [0, 1), shape (B, _N_SLOTS), a pure function of (seed, split, index, slot)."""
    key = _splitmix64(np.array([seed & _MASK64], dtype=np.uint64))
    key = _splitmix64(key + np.uint64(split_id))
    item = _splitmix64(key + indices.astype(np.uint64))
    bits = _splitmix64(item[:, None] + np.arange(_N_SLOTS, dtype=np.uint64)[None, :])
    return (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53


def sample_factors(seed: int, split_id: int, indices: np.ndarray, correlation: float = 0.0) -> np.ndarray:
    """Ground-truth factors (B, 8) in ``FACTOR_NAMES`` order for the given item indices (float64)."""
    u = _uniforms(seed, split_id, indices)
    shape = np.minimum(np.floor(u[:, _SLOT_SHAPE] * len(SHAPE_NAMES)), len(SHAPE_NAMES) - 1)
    phase = 2 * np.pi * u[:, _SLOT_ROT]  # theta = u * period, encoded on the unit circle as 2*pi*theta/period
    u_x = np.where(u[:, _SLOT_COUPLE] < correlation, u[:, _SLOT_SCALE], u[:, _SLOT_X])
    lerp = lambda rng, v: rng[0] + (rng[1] - rng[0]) * v  # noqa: E731
    return np.stack([shape, lerp(SCALE_RANGE, u[:, _SLOT_SCALE]), np.cos(phase), np.sin(phase),
                     lerp(POSITION_RANGE, u_x), lerp(POSITION_RANGE, u[:, _SLOT_Y]),
                     lerp(HUE_RANGE, u[:, _SLOT_FG]), lerp(HUE_RANGE, u[:, _SLOT_BG])], axis=1)


def make_factors(shape: int, scale: float, theta: float, x: float, y: float, fg_hue: float,
                 bg_hue: float) -> torch.Tensor:
    """Factor vector (8,) for a shape rotated by ``theta`` radians; angles equal modulo the symmetry period agree."""
    phase = 2 * math.pi * theta / SYMMETRY_PERIODS[int(shape)]
    return torch.tensor([shape, scale, math.cos(phase), math.sin(phase), x, y, fg_hue, bg_hue], dtype=torch.float32)


def factors_to_attributes(factors: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Binary attributes (B, 10) in ``ATTRIBUTE_NAMES`` order derived from factors (B, 8): the single definition."""
    f = torch.as_tensor(factors, dtype=torch.float64)
    shape = f[:, 0].round().long()
    onehot = torch.nn.functional.one_hot(shape.clamp(0, len(SHAPE_NAMES) - 1), len(SHAPE_NAMES)).to(torch.float64)
    mid = lambda rng: (rng[0] + rng[1]) / 2  # noqa: E731
    derived = torch.stack([f[:, 1] > mid(SCALE_RANGE), f[:, 4] < 0.5, f[:, 5] < 0.5,
                           f[:, 6] < mid(HUE_RANGE), f[:, 7] < mid(HUE_RANGE)], dim=1).to(torch.float64)
    return torch.cat([onehot, derived], dim=1).to(torch.float32)


def _hsv_to_rgb(h: np.ndarray, s: float, v: float) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1], (B,) -> (B, 3)."""
    k = (np.array([5.0, 3.0, 1.0])[None, :] + h[:, None] * 6.0) % 6.0
    return v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)


def _coverage_chunk(a: torch.Tensor, size: int) -> torch.Tensor:
    """Coverage (n, S, S) of polygons ``a`` (n, E, 2) in pixel units; pixel (i, j) has centre (j + 0.5, i + 0.5)."""
    n, n_edges, _ = a.shape
    b = torch.roll(a, -1, dims=1)
    ax, ay, bx, by = a[..., 0], a[..., 1], b[..., 0], b[..., 1]  # (n, E)
    ex, ey = bx - ax, by - ay
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    # Inside test: crossing number of the ray from each pixel centre towards +x (half-open rule on y spans).
    cy = centres[None, :, None]
    spans = (ay[:, None] > cy) != (by[:, None] > cy)  # (n, H, E)
    safe_ey = torch.where(spans, ey[:, None], torch.ones_like(spans, dtype=torch.float32))
    x_cross = torch.where(spans, ax[:, None] + (cy - ay[:, None]) * ex[:, None] / safe_ey, -math.inf)
    # Pixel j is at or right of crossing x iff x <= j + 0.5 iff j >= ceil(x - 0.5) (exact in float64): histogram the
    # crossings by that first pixel, and a running sum along the row counts the crossings left of each pixel.
    first = (x_cross.double() - 0.5).ceil_().clamp_(0, size).long()
    first = torch.where(spans, first, size).reshape(n * size, n_edges)
    hist = torch.zeros(n * size, size + 1, dtype=torch.int32)
    hist.scatter_add_(1, first, torch.ones_like(first, dtype=torch.int32))
    passed = hist[:, :size].cumsum(dim=1, dtype=torch.int32)
    total = spans.sum(dim=-1, dtype=torch.int32).reshape(n * size, 1)
    inside = ((total - passed) & 1).bool()  # odd number of crossings strictly right of the pixel centre
    # Distance to the boundary only matters within 0.5 px of it, so each edge is evaluated on a local window of
    # pixels around its bounding box and the per-pixel minimum is taken by scatter (exact: min is order-free).
    # Windows are clipped to, then shifted inside, the frame: any extra value is a true distance to some edge, so the
    # minimum stays exact and no pixel index ever leaves the frame.
    lo_x = (torch.minimum(ax, bx) - 1.0).floor().clamp_(0, size - 1)
    lo_y = (torch.minimum(ay, by) - 1.0).floor().clamp_(0, size - 1)
    hi_x, hi_y = torch.maximum(ax, bx).floor().clamp_(0, size - 1), torch.maximum(ay, by).floor().clamp_(0, size - 1)
    win = int(torch.maximum(hi_x - lo_x, hi_y - lo_y).max().item()) + 1
    lo_x, lo_y = lo_x.clamp_(max=size - win), lo_y.clamp_(max=size - win)
    k = torch.arange(win, dtype=torch.float32)
    cols, rows = lo_x[..., None] + k, lo_y[..., None] + k  # (n, E, win) integer-valued
    wx = (cols + 0.5 - ax[..., None])[:, :, None, :]  # (n, E, 1, win)
    wy = (rows + 0.5 - ay[..., None])[:, :, :, None]  # (n, E, win, 1)
    inv_len2 = 1.0 / (ex * ex + ey * ey).clamp_min(1e-12)
    exn, eyn = (ex * inv_len2)[..., None, None], (ey * inv_len2)[..., None, None]
    ex4, ey4 = ex[..., None, None], ey[..., None, None]
    t = (wx * exn + wy * eyn).clamp_(0.0, 1.0)  # projection onto the segment
    dx = ex4 * t
    torch.sub(wx, dx, out=dx)
    t.mul_(ey4)
    torch.sub(wy, t, out=t)
    dist2 = dx.mul_(dx).add_(t.mul_(t))  # (n, E, win, win)
    row_start = (torch.arange(n)[:, None, None] * size + rows.long()) * size  # (n, E, win)
    flat = row_start[..., :, None] + cols.long()[..., None, :]
    best = torch.full((n * size * size,), math.inf)
    best.scatter_reduce_(0, flat.reshape(-1), dist2.reshape(-1), reduce="amin")
    # Pixels 0.5 px or more from the boundary are fully in or out; the rest get 0.5 -/+ distance.
    dist = best.clamp_(max=0.25).sqrt_().reshape(n, size, size)
    return torch.where(inside.reshape(n, size, size), 0.5 + dist, 0.5 - dist)


def polygon_coverage(vertices: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased coverage (B, S, S) = clamp(0.5 - signed_distance_px, 0, 1) of polygons (B, E, 2) in pixel units."""
    vertices = torch.as_tensor(vertices, dtype=torch.float32)
    n, n_edges, _ = vertices.shape
    edge_span = (torch.roll(vertices, -1, dims=1) - vertices).abs().amax().item() if n else 0.0
    per_item = size * size + size * n_edges + n_edges * (min(edge_span, size) + 3) ** 2  # elements per work tensor
    step = max(1, int(_CHUNK_ELEMENTS // per_item))
    coverage = torch.empty(n, size, size)
    for lo in range(0, n, step):
        coverage[lo:lo + step] = _coverage_chunk(vertices[lo:lo + step], size)
    return coverage


def _compose(coverage: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, S, S) = coverage * fg + (1 - coverage) * bg for colours (B, 3)."""
    fg, bg = torch.as_tensor(fg, dtype=torch.float32), torch.as_tensor(bg, dtype=torch.float32)
    return (coverage[:, None] * (fg - bg)[:, :, None, None]).add_(bg[:, :, None, None]).clamp_(-1.0, 1.0)


def render_polygons(vertices: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, size: int) -> torch.Tensor:
    """Anti-aliased fill of polygons (B, E, 2) in pixel units (x right, y down) with colours (B, 3) -> (B, 3, S, S)."""
    return _compose(polygon_coverage(vertices, size), fg, bg)


def render_factors(factors: torch.Tensor | np.ndarray, size: int) -> torch.Tensor:
    """Images (B, 3, S, S) in [-1, 1] for factor rows (B, 8) in ``FACTOR_NAMES`` order."""
    f = np.asarray(torch.as_tensor(factors, dtype=torch.float64).reshape(-1, len(FACTOR_NAMES)))
    shapes = np.clip(np.rint(f[:, 0]).astype(np.int64), 0, len(SHAPE_NAMES) - 1)
    periods = np.asarray(SYMMETRY_PERIODS)[shapes]
    theta = np.arctan2(f[:, 3], f[:, 2]) * periods / (2 * np.pi)
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    fg = torch.from_numpy(2.0 * _hsv_to_rgb(f[:, 6], FG_SATURATION, FG_VALUE) - 1.0).float()
    bg = torch.from_numpy(2.0 * _hsv_to_rgb(f[:, 7], BG_SATURATION, BG_VALUE) - 1.0).float()
    coverage = torch.zeros(len(f), size, size)
    for k, poly in enumerate(_POLYGONS):
        rows = np.nonzero(shapes == k)[0]
        if rows.size == 0:
            continue
        px, py = poly[None, :, 0], poly[None, :, 1]
        c, s, r = cos_t[rows, None], sin_t[rows, None], f[rows, 1:2] * size
        verts = np.stack([f[rows, 4:5] * size + r * (c * px - s * py), f[rows, 5:6] * size + r * (s * px + c * py)], -1)
        coverage.index_copy_(0, torch.from_numpy(rows), polygon_coverage(torch.from_numpy(verts), size))
    return _compose(coverage, fg, bg)


def _check(name: str, value, ok: bool, allowed: str) -> None:
    """Raise a one-line ValueError naming the argument, its value and what is allowed."""
    if not ok:
        raise ValueError(f"{name}={value!r} is invalid: expected {allowed}")


def _is_int(value) -> bool:
    """True for Python/numpy integers, excluding bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class ShapesDataset(Dataset):
    """Procedural shapes with ground-truth factors: items are ``(image, factors, attributes)``.

    ``image`` is float32 (3, size, size) in [-1, 1]; ``factors`` float32 (8,) in ``FACTOR_NAMES`` order (shape is the
    class index); ``attributes`` float32 (10,) of 0/1 in ``ATTRIBUTE_NAMES`` order (see ``factors_to_attributes``).
    Items depend only on ``(seed, split, index)``. ``correlation`` = rho in [0, 1]: with probability rho per item,
    x's underlying uniform is set equal to the scale's uniform (corr(scale, x) = rho, so ``large`` goes with right,
    i.e. against ``left``); every other factor, and x itself at rho = 0, is independent. Changing rho changes only x.
    """

    def __init__(self, size: int = 32, length: int = 50_000, seed: int = 0, correlation: float = 0.0,
                 split: str = "train") -> None:
        _check("size", size, _is_int(size) and size >= 8, "an int >= 8")
        _check("length", length, _is_int(length) and length >= 1, "an int >= 1")
        _check("seed", seed, _is_int(seed) and 0 <= seed <= _MASK64, "an int in [0, 2**64)")
        _check("correlation", correlation, isinstance(correlation, (int, float, np.floating))
               and not isinstance(correlation, bool) and 0.0 <= correlation <= 1.0, "a float in [0, 1]")
        _check("split", split, split in _SPLITS, f"one of {tuple(_SPLITS)}")
        self.size, self.length, self.seed = int(size), int(length), int(seed)
        self.correlation, self.split = float(correlation), split
        logger.debug("created %r", self)

    def __len__(self) -> int:
        return self.length

    def _indices(self, indices) -> np.ndarray:
        idx = np.asarray(torch.as_tensor(indices).cpu() if torch.is_tensor(indices) else indices).reshape(-1)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        idx = np.where(idx < 0, idx + self.length, idx)
        if idx.size and (idx.min() < 0 or idx.max() >= self.length):
            raise IndexError(f"index out of range for ShapesDataset of length {self.length}")
        return idx

    def factors(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor:
        """Factors (B, 8) float32 of the given indices, without rendering (for metrics and probes)."""
        idx = self._indices(indices)
        return torch.from_numpy(sample_factors(self.seed, _SPLITS[self.split], idx, self.correlation)).float()

    def render(self, indices: Sequence[int] | np.ndarray | torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Batched, vectorised items: images (B, 3, S, S), factors (B, 8), attributes (B, 10)."""
        factors = self.factors(indices)
        return render_factors(factors, self.size), factors, factors_to_attributes(factors)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not _is_int(index):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        images, factors, attributes = self.render([index])
        return images[0], factors[0], attributes[0]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Batched fetch used by torch DataLoader; returns one tuple per index."""
        images, factors, attributes = self.render(list(indices))
        return [(images[i], factors[i], attributes[i]) for i in range(len(factors))]

    def __repr__(self) -> str:
        return (f"ShapesDataset(size={self.size}, length={self.length}, seed={self.seed}, "
                f"correlation={self.correlation}, split={self.split!r})")
