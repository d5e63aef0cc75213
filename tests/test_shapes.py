"""Tests of the procedural shapes dataset against independent geometric and statistical facts."""

import colorsys
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dbae_core.data import ATTRIBUTE_NAMES, FACTOR_NAMES, SHAPE_NAMES, ShapesDataset, shapes

# Values fixed by the dataset's specification (not read back from the module).
SCALE_LO, SCALE_HI = 0.15, 0.35
HUE_HI = 0.8
PERIOD_DEG = {"square": 90.0, "ellipse": 180.0, "triangle": 120.0, "star": 72.0, "heart": 360.0}


def _rgb(hue: float, saturation: float, value: float) -> torch.Tensor:
    """Colour in [-1, 1] from the standard library's HSV conversion."""
    return torch.tensor(colorsys.hsv_to_rgb(hue, saturation, value), dtype=torch.float32) * 2 - 1


def _coverage(image: torch.Tensor, fg_hue: float, bg_hue: float) -> torch.Tensor:
    """Foreground fraction per pixel, recovered from an image whose colours are known."""
    fg = _rgb(fg_hue, shapes.FG_SATURATION, shapes.FG_VALUE)
    bg = _rgb(bg_hue, shapes.BG_SATURATION, shapes.BG_VALUE)
    c = int((fg - bg).abs().argmax())
    return (image[c] - bg[c]) / (fg[c] - bg[c])


def test_names():
    assert FACTOR_NAMES == ("shape", "scale", "rotation_cos", "rotation_sin", "x", "y", "fg_hue", "bg_hue")
    assert SHAPE_NAMES == ("square", "ellipse", "triangle", "star", "heart")
    assert ATTRIBUTE_NAMES[:5] == tuple(f"is_{s}" for s in SHAPE_NAMES)
    assert set(ATTRIBUTE_NAMES[5:]) == {"large", "left", "top", "warm_fg", "warm_bg"}


def test_deterministic_single_batch_shuffled_and_fresh_instance():
    ds = ShapesDataset(size=32, length=500, seed=5)
    idx = list(range(40, 104))
    batch = ds.render(idx)
    perm = np.random.default_rng(1).permutation(idx)
    shuffled = ShapesDataset(size=32, length=500, seed=5).__getitems__(list(perm))
    for pos, i in enumerate(perm):
        single = ds[int(i)]
        for k in range(3):
            assert torch.equal(single[k], batch[k][i - 40])
            assert torch.equal(shuffled[pos][k], batch[k][i - 40])
    assert torch.equal(ds.render(torch.tensor(idx))[0], batch[0])
    assert torch.equal(ds.factors(idx), batch[1])


def test_deterministic_across_worker_processes():
    ds = ShapesDataset(size=16, length=64, seed=2)
    loader = DataLoader(ds, batch_size=8, num_workers=2, multiprocessing_context="fork")
    images = torch.cat([b[0] for b in loader])
    assert torch.equal(images, ds.render(range(64))[0])


def test_seed_and_split_change_the_stream():
    idx = range(32)
    base = ShapesDataset(size=32, seed=0).render(idx)
    for other in (ShapesDataset(size=32, seed=1), ShapesDataset(size=32, seed=0, split="test")):
        imgs, fac, _ = other.render(idx)
        assert all(not torch.equal(a, b) for a, b in zip(imgs, base[0]))
        assert (fac[:, 1] != base[1][:, 1]).all()


@pytest.mark.parametrize("size", [16, 32, 64, 256])
def test_image_shape_and_range(size):
    ds = ShapesDataset(size=size, length=100)
    n = 4 if size == 256 else 32
    images, factors, attributes = ds.render(range(n))
    assert images.shape == (n, 3, size, size) and images.dtype == torch.float32
    assert images.min() >= -1 and images.max() <= 1
    assert factors.shape == (n, 8) and attributes.shape == (n, len(ATTRIBUTE_NAMES))
    image, _, _ = ds[n - 1]
    assert image.shape == (3, size, size)
    # Each image shows two clearly different colours (foreground visible on background).
    spread = images.flatten(2).amax(2) - images.flatten(2).amin(2)
    assert (spread.amax(1) > 0.3).all()


def test_factor_ranges_and_attribute_definitions():
    f = ShapesDataset(length=3000, seed=3).factors(range(3000)).double()
    shape, scale, c, s, x, y, fg, bg = f.T
    assert torch.equal(shape, shape.round()) and set(shape.long().tolist()) == set(range(5))
    assert ((scale >= SCALE_LO) & (scale <= SCALE_HI)).all()
    assert torch.allclose(c**2 + s**2, torch.ones_like(c), atol=1e-5)
    for pos in (x, y):
        assert ((pos >= 0) & (pos <= 1)).all()
        assert ((pos - scale >= -0.1) & (pos + scale <= 1.1)).all()  # mostly in frame
    for hue in (fg, bg):
        assert ((hue >= 0) & (hue < HUE_HI)).all() and hue.max() > 0.75 and hue.min() < 0.05
    expected = torch.stack(
        [shape == k for k in range(5)]
        + [scale > (SCALE_LO + SCALE_HI) / 2, x < 0.5, y < 0.5, fg < HUE_HI / 2, bg < HUE_HI / 2], 1
    ).float()
    attributes = shapes.factors_to_attributes(f)
    assert set(attributes.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(attributes, expected)
    assert ((expected.mean(0) > 0.1) & (expected.mean(0) < 0.9)).all()
    _, f2, a2 = ShapesDataset(length=3000, seed=3).render(range(50))
    assert torch.equal(a2, expected[:50])


@pytest.mark.parametrize(
    "shape, area",
    [
        ("square", lambda r: 2 * r * r),  # circumradius r: side r*sqrt(2)
        ("ellipse", lambda r: math.pi * r * 0.6 * r),
        ("triangle", lambda r: 3 * math.sqrt(3) / 4 * r * r),
        ("star", lambda r: 5 * r * (r * math.cos(0.4 * math.pi) / math.cos(0.2 * math.pi)) * math.sin(0.2 * math.pi)),
    ],
)
def test_shape_area_from_first_principles(shape, area):
    size, k = 64, SHAPE_NAMES.index(shape)
    for r, theta, cx in [(0.3, 0.0, 0.5), (0.2, 0.37, 0.43)]:
        f = shapes.make_factors(k, r, theta, cx, 0.55, 0.1, 0.6)
        cov = _coverage(shapes.render_factors(f[None], size)[0], 0.1, 0.6)
        assert cov.mean().item() == pytest.approx(area(r), rel=0.03)


def test_axis_aligned_square_coverage():
    side, size = 21.0, 64
    lo, hi = 20.3, 20.3 + side
    verts = torch.tensor([[[lo, lo], [hi, lo], [hi, hi], [lo, hi]]])
    cov = shapes.polygon_coverage(verts, size)[0]
    assert cov.mean().item() == pytest.approx(side**2 / size**2, rel=0.02)
    assert cov[30, 30] == 1 and cov[0, 0] == 0 and cov[20, 30] == pytest.approx(0.7, abs=1e-4)


@pytest.mark.parametrize("k", range(5))
def test_centre_is_foreground_and_corner_is_background(k):
    size, fg_hue, bg_hue = 64, 0.55, 0.2
    img = shapes.render_factors(shapes.make_factors(k, SCALE_LO, 0.5, 0.5, 0.5, fg_hue, bg_hue)[None], size)[0]
    fg = _rgb(fg_hue, shapes.FG_SATURATION, shapes.FG_VALUE)
    bg = _rgb(bg_hue, shapes.BG_SATURATION, shapes.BG_VALUE)
    assert torch.allclose(img[:, size // 2, size // 2], fg, atol=1e-5)
    assert torch.allclose(img[:, 0, 0], bg, atol=1e-5) and torch.allclose(img[:, -1, -1], bg, atol=1e-5)
    assert fg.max() > bg.max() + 0.5  # bright foreground on a darker background


def test_square_rotation_by_90_degrees_is_identical():
    size, r, theta = 64, 0.3, 0.4
    f1 = shapes.make_factors(0, r, theta, 0.5, 0.5, 0.3, 0.7)
    f2 = shapes.make_factors(0, r, theta + math.pi / 2, 0.5, 0.5, 0.3, 0.7)
    assert torch.allclose(f1, f2, atol=1e-6)
    img = shapes.render_factors(torch.stack([f1, f2]), size)
    assert (img[0] - img[1]).abs().max() <= 1e-5
    # Independently rotated corner lists (centre 32, half side r*sqrt(2)/2*64) give the same picture.
    half = r * size / math.sqrt(2)
    corners = torch.tensor([[-half, -half], [half, -half], [half, half], [-half, half]], dtype=torch.float64)
    colours = torch.stack([_rgb(0.3, shapes.FG_SATURATION, shapes.FG_VALUE)] * 2)
    backs = torch.stack([_rgb(0.7, shapes.BG_SATURATION, shapes.BG_VALUE)] * 2)
    polys = []
    for angle in (theta, theta + math.pi / 2):
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
        polys.append(corners @ rot.T + size / 2)
    direct = shapes.render_polygons(torch.stack(polys).float(), colours, backs, size)
    assert (direct[0] - direct[1]).abs().max() <= 1e-5
    assert (direct[0] - img[0]).abs().max() <= 1e-3


@pytest.mark.parametrize("name", SHAPE_NAMES)
def test_rotation_is_well_posed_for_every_shape(name):
    k, period = SHAPE_NAMES.index(name), math.radians(PERIOD_DEG[name])
    angles = (0.2, 0.2 + period, 0.2 + period / 2)
    fs = torch.stack([shapes.make_factors(k, 0.3, a, 0.5, 0.5, 0.1, 0.5) for a in angles])
    assert torch.allclose(fs[0], fs[1], atol=1e-5)
    img = shapes.render_factors(fs, 64)
    assert (img[0] - img[1]).abs().max() <= 1e-4
    assert (img[0] - img[2]).abs().max() > 0.5  # half a period is a visibly different pose


def test_correlation_controls_scale_x_dependence_only():
    def corr(a, b):
        return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])

    idx = range(4000)
    f0 = ShapesDataset(length=4000, correlation=0.0).factors(idx)
    f8 = ShapesDataset(length=4000, correlation=0.8).factors(idx)
    assert abs(corr(f0[:, 1], f0[:, 4])) < 0.06
    assert corr(f8[:, 1], f8[:, 4]) > 0.5
    for f in (f0, f8):
        assert abs(corr(f[:, 6], f[:, 7])) < 0.06
        assert abs(corr(f[:, 1], f[:, 5])) < 0.06
        assert abs(corr(f[:, 4], f[:, 5])) < 0.06
    a8 = shapes.factors_to_attributes(f8)
    large, left = ATTRIBUTE_NAMES.index("large"), ATTRIBUTE_NAMES.index("left")
    assert corr(a8[:, large], a8[:, left]) < -0.5


def test_dataloader_batches():
    ds = ShapesDataset(size=32, length=200)
    loader = DataLoader(ds, batch_size=64, num_workers=0, shuffle=False)
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [64, 64, 64, 8]
    images, factors, attributes = batches[0]
    assert images.shape == (64, 3, 32, 32) and factors.shape == (64, 8) and attributes.shape == (64, 10)
    assert images.dtype == factors.dtype == attributes.dtype == torch.float32
    assert torch.equal(images, ds.render(range(64))[0])


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"size": 4}, "size"),
        ({"size": 32.0}, "size"),
        ({"length": 0}, "length"),
        ({"seed": -1}, "seed"),
        ({"correlation": 1.5}, "correlation"),
        ({"correlation": -0.1}, "correlation"),
        ({"split": "val"}, "split"),
    ],
)
def test_invalid_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ShapesDataset(**kwargs)


def test_index_out_of_range():
    ds = ShapesDataset(length=10)
    with pytest.raises(IndexError):
        ds.render([10])
    assert torch.equal(ds[-1][1], ds[9][1])
