"""Rocks for the realistic style: scattering on the ground, shading, cast shadows and labels.

Rocks are scattered uniformly over the ground area in view with power-law sizes, so distant rocks
are smaller and denser on screen. Each is an irregular, partly buried dome: its outline is an ellipse
wobbled by a few angular harmonics, cut at the ground-contact line, with a foreshortened footprint
below it. Labelling follows the Kaggle masks: "large" by physical radius, and rocks smaller than a
few pixels on screen ("pebbles") stay unlabelled. Pebbles, the vast majority, are drawn all at once
with small vectorised stamps; labelled rocks one by one, far to near, each casting its shadow first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data_pipeline.synth_noise import fractal_texture, sample_bilinear, slopes

if TYPE_CHECKING:
    from data_pipeline.synth_realistic import View

GROUND, SKY, SMALL_ROCK, LARGE_ROCK = 0, 1, 2, 3
LABEL_MIN_RADIUS_PX = 14.0  # smaller rocks on screen (at 720 px width) stay unlabelled: the Kaggle
# masks label few, blob-sized small rocks (median ~0.2 % of the frame, ~8 per frame), not specks
DRAW_MIN_RADIUS_PX = 0.7  # smaller ones are left to the regolith texture
LARGE_ROCK_RADIUS_M = 0.5  # physical radius from which a rock counts as "large"
MIN_ROCK_RADIUS_M = 0.03  # smallest rock scattered
MAX_ROCK_RADIUS_M = 1.8
ROCK_FAR_M = 90.0  # no rocks are scattered beyond this depth
BOULDER_FAR_M = 40.0  # boulders (large rocks) stay within this depth
BOULDERS_PER_SCENE = 4.0  # median of the expected count (before culling the ones out of view)
HARMONIC_ORDERS = np.array([2, 3, 5, 7])  # outline wobble: low orders give lumpy, high orders jagged
HARMONIC_MAX = np.array([0.15, 0.1, 0.06, 0.04])
PEBBLE_SHADOW_MAX = 1.5  # pebble shadows are capped at this many radii (their stamp stays small)


@dataclass(frozen=True)
class Rocks:
    """Rocks as parallel arrays (one entry per rock), sorted far to near: the painting order."""
    x: np.ndarray  # lateral ground position, m
    z: np.ndarray  # depth, m
    radius: np.ndarray  # physical radius, m
    radius_px: np.ndarray  # apparent radius, px
    col: np.ndarray  # screen position of the ground-contact centre, px
    row: np.ndarray
    rx: np.ndarray  # half-width on screen, px
    ry_top: np.ndarray  # visible height above the contact point, px (low: partly buried)
    ry_bottom: np.ndarray  # foreshortened half-depth of the footprint, px
    albedo: np.ndarray  # brightness relative to the regolith; overlaps it, so no colour rule works
    wobble: np.ndarray  # (n, 4) harmonic amplitudes of the outline
    phase: np.ndarray  # (n, 4) harmonic phases

    def take(self, keep: np.ndarray) -> "Rocks":
        return Rocks(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def scatter_rocks(rng: np.random.Generator, view: View) -> Rocks:
    """A field of small rocks plus a few boulders, big enough to draw, with their screen shapes.

    The Kaggle masks hold ~2 large rocks per frame but dozens of small ones: the field's power law
    stops below the large-rock size, and boulders are a separate, sparse population.
    """
    near = view.focal * view.cam_height / max(view.height - float(view.horizon.min()), 1.0)
    half_width = view.width / 2 / view.focal * 1.15  # lateral extent per metre of depth, with margin
    density = np.exp(rng.normal(np.log(2.5), 0.6))  # field rocks >= 3 cm per m^2; some fields rockier
    area = half_width * max(ROCK_FAR_M ** 2 - near ** 2, 0)
    field_count = min(rng.poisson(density * area), 100_000)
    alpha = rng.uniform(1.9, 2.5)  # cumulative size distribution N(>r) ~ r^-alpha
    field = np.minimum(MIN_ROCK_RADIUS_M * rng.uniform(0, 1, field_count) ** (-1 / alpha),
                       LARGE_ROCK_RADIUS_M * 0.999)
    boulder_count = rng.poisson(np.exp(rng.normal(np.log(BOULDERS_PER_SCENE), 0.7)))
    boulders = LARGE_ROCK_RADIUS_M * (MAX_ROCK_RADIUS_M / LARGE_ROCK_RADIUS_M) ** rng.uniform(
        0, 1, boulder_count) ** 1.5  # log-uniform, skewed towards the small end
    x, z = ground_positions(rng, near, ROCK_FAR_M, half_width, field_count)
    bx, bz = ground_positions(rng, near, BOULDER_FAR_M, half_width, boulder_count)
    x, z, radius = np.concatenate([x, bx]), np.concatenate([z, bz]), np.concatenate([field, boulders])
    radius_px = view.focal * radius / z
    keep = radius_px >= DRAW_MIN_RADIUS_PX * view.px_scale
    x, z, radius, radius_px = x[keep], z[keep], radius[keep], radius_px[keep]
    return cull_and_sort(view, shape_rocks(rng, view, x, z, radius, radius_px))


def ground_positions(rng, near: float, far: float, half_width: float, count: int):
    """Uniform positions over the ground area in view between depths near and far."""
    z = np.sqrt(rng.uniform(near ** 2, max(far, near) ** 2, count))
    return rng.uniform(-1, 1, count) * half_width * z, z


def shape_rocks(rng, view: View, x, z, radius, radius_px) -> Rocks:
    n = len(z)
    col, row = view.project(x, z)
    rx = radius_px * rng.uniform(0.8, 1.35, n)
    ry_top = radius_px * rng.uniform(0.5, 1.0, n)
    ry_bottom = np.maximum(rx * view.cam_height / z * rng.uniform(0.7, 1.1, n), 0.6)
    wobble = rng.uniform(0, 1, (n, 4)) * HARMONIC_MAX
    phase = rng.uniform(0, 2 * np.pi, (n, 4))
    albedo = rng.uniform(0.9, 1.7, n)
    return Rocks(x, z, radius, radius_px, col, row, rx, ry_top, ry_bottom, albedo, wobble, phase)


def cull_and_sort(view: View, rocks: Rocks) -> Rocks:
    visible = ((rocks.col + rocks.rx >= 0) & (rocks.col - rocks.rx < view.width)
               & (rocks.row - rocks.ry_top < view.height))
    rocks = rocks.take(visible)
    return rocks.take(np.argsort(-rocks.z, kind="stable"))


def height_m(rocks: Rocks) -> np.ndarray:
    """How far each rock sticks out of the ground, m."""
    return rocks.radius * rocks.ry_top / rocks.radius_px


def draw(rng: np.random.Generator, view: View, radiance, mask, instances) -> None:
    """Scatter rocks and paint them into radiance (HxW float32), mask and the large-rock instances."""
    rocks = scatter_rocks(rng, view)
    shadow_level = rng.uniform(0.03, 0.2)  # no atmosphere: shadows are lit only by the regolith
    label_min = LABEL_MIN_RADIUS_PX * view.px_scale
    labelled = rocks.radius_px >= label_min
    for low, high in ((0, label_min / 3), (label_min / 3, label_min * 0.6), (label_min * 0.6, label_min)):
        bucket = (rocks.radius_px >= low) & (rocks.radius_px < high)
        draw_pebbles(view, rocks.take(bucket), high, shadow_level, radiance, mask)
    facets = slopes(fractal_texture(rng, 128, 2.2))
    facets = facets / facets.std()
    big = rocks.take(labelled)
    large = big.radius >= LARGE_ROCK_RADIUS_M
    for i in range(len(big.z)):
        cast_shadow(view, big, i, shadow_level, radiance)
        window, inside, shade = rock_pixels(view, big, i, facets)
        radiance[window][inside] = shade
        mask[window][inside] = LARGE_ROCK if large[i] else SMALL_ROCK
        instances[window][inside] = i + 1 if large[i] else 0


# ---------------------------------------------------------------- shape and shading of one rock

def outline(rocks: Rocks, i, u: np.ndarray, w: np.ndarray):
    """(normalised radius^2, edge radius) of pixels at rock-local (u, w); inside where < 1."""
    theta = np.arctan2(w, u)[..., None]
    wobble = rocks.wobble[i].astype(np.float32) * np.cos(HARMONIC_ORDERS * theta + rocks.phase[i].astype(np.float32))
    edge = 1 + wobble.sum(-1)
    return (u * u + w * w) / (edge * edge), edge


def dome_shade(view: View, rocks: Rocks, i, u, w, rho2, edge, bump=None) -> np.ndarray:
    """Radiance of a dome facing the camera, lit by the low sun, optionally with facet bumps."""
    nx, ny = u / edge, w / edge
    if bump is not None:
        nx, ny = nx + bump[..., 0], ny + bump[..., 1]
    nz = -np.sqrt(np.maximum(1 - rho2, 0))  # towards the camera
    sx, sy, sz = view.sun
    cos_incidence = (nx * sx + ny * sy + nz * sz) / np.sqrt(nx * nx + ny * ny + nz * nz + 1e-12)
    # faces turned away from the sun still get light reflected off the sunlit regolith around them
    bounce = 0.05 + 0.05 * np.abs(ny) / np.sqrt(nx * nx + ny * ny + nz * nz + 1e-12)
    return (rocks.albedo[i] * (bounce + np.maximum(cos_incidence, 0) ** 0.8)).astype(np.float32)


def rock_pixels(view: View, rocks: Rocks, i: int, facets: np.ndarray):
    """(window, inside mask, radiance of the inside pixels) of labelled rock i."""
    col, row, rx, top, bottom = (float(a[i]) for a in (rocks.col, rocks.row, rocks.rx, rocks.ry_top,
                                                        rocks.ry_bottom))
    window = window_of(view, col - 1.5 * rx, col + 1.5 * rx, row - 1.5 * top, row + 1.5 * bottom)
    if window is None:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), bool), np.zeros(0, np.float32)
    rows = np.arange(window[0].start, window[0].stop, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(window[1].start, window[1].stop, dtype=np.float32)[None, :] + 0.5
    u = (cols - col) / rx
    w = (row - rows) / np.where(rows < row, top, bottom).astype(np.float32)  # up is positive
    rho2, edge = outline(rocks, i, u, w)
    inside = rho2 < 1
    u, w = (a[inside] for a in np.broadcast_arrays(u, w))
    rho2, edge = rho2[inside], edge[inside]  # shade only what the rock covers
    offset = float(rocks.x[i] + rocks.z[i]) * 37  # each rock shows another part of the facet texture
    fine = max(8.0, rx / 3)  # big, near rocks get facets and cracks down to a few pixels
    bump = (sample_bilinear(facets, u * 3 + offset, w * 3 - offset) * 0.4
            + sample_bilinear(facets, u * fine - offset, w * fine + offset) * 0.25)
    mottle = 1 + 0.12 * bump[:, 0]  # albedo varies over the surface as well
    return window, inside, dome_shade(view, rocks, i, u, w, rho2, edge, bump) * mottle


def window_of(view: View, left, right, top, bottom) -> tuple[slice, slice] | None:
    c0, c1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)) + 1, view.width)
    r0, r1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)) + 1, view.height)
    return (slice(r0, r1), slice(c0, c1)) if c0 < c1 and r0 < r1 else None


def shadow_direction(view: View) -> np.ndarray:
    """Unit ground direction (x, z) in which shadows fall: away from the sun."""
    sx, _, sz = view.sun
    return -np.array([sx, sz]) / max(np.hypot(sx, sz), 1e-6)


def shadow_length(view: View, rock_height) -> np.ndarray:
    sx, sy, sz = view.sun
    return rock_height * np.hypot(sx, sz) / sy


def cast_shadow(view: View, rocks: Rocks, i: int, level: float, radiance: np.ndarray) -> None:
    """Darken the ground behind rock i, away from the sun: a tapering strip in ground coordinates."""
    direction = shadow_direction(view)
    radius = rocks.radius[i]
    length = min(float(shadow_length(view, height_m(rocks)[i])), 40 * radius)
    centre = np.array([rocks.x[i], rocks.z[i]])
    side = np.array([-direction[1], direction[0]]) * radius
    ends = (centre - direction * radius, centre + direction * length)
    corners = np.stack([end + sign * side for end in ends for sign in (1, -1)])
    cols, rows = view.project(corners[:, 0], corners[:, 1])
    window = window_of(view, cols.min(), cols.max(), rows.min() - rocks.ry_top[i], rows.max())
    if window is None:
        return
    rows = np.arange(window[0].start, window[0].stop)[:, None]
    cols = np.arange(window[1].start, window[1].stop)[None, :]
    depth = view.depth(rows, cols)
    rel_x, rel_z = view.lateral(cols, depth) - centre[0], depth - centre[1]
    along = rel_x * direction[0] + rel_z * direction[1]
    across = np.abs(rel_x * direction[1] - rel_z * direction[0])
    taper = radius * (1 - 0.5 * along / max(length, 1e-6))
    in_strip = (along >= 0) & (along <= length) & (across <= taper)
    footprint = rel_x * rel_x + rel_z * rel_z <= radius * radius
    on_ground = rows + 0.5 > view.horizon[cols]
    radiance[window][(in_strip | footprint) & on_ground] *= level


# ---------------------------------------------------------------- pebbles, all at once

def draw_pebbles(view: View, pebbles: Rocks, max_radius_px: float, shadow_level: float, radiance,
                 mask) -> None:
    """Stamp unlabelled rocks: a shadow streak first, then the lit dome (far ones first).

    Every stamp is a square big enough for the widest outline plus the longest (capped) shadow;
    shading is computed only for the pixels a pebble covers.
    """
    if len(pebbles.z) == 0:
        return
    half = int(np.ceil(max_radius_px * (1.4 + PEBBLE_SHADOW_MAX)))
    offsets = np.arange(-half, half + 1, dtype=np.float32)
    col, row = pebbles.col.astype(np.float32)[:, None, None], pebbles.row.astype(np.float32)[:, None, None]
    rows = np.floor(row) + offsets[None, :, None]  # n x K x 1
    cols = np.floor(col) + offsets[None, None, :]  # n x 1 x K
    u = (cols + 0.5 - col) / pebbles.rx.astype(np.float32)[:, None, None]
    w = (row - rows - 0.5) / np.where(rows + 0.5 >= row, pebbles.ry_bottom[:, None, None],
                                      pebbles.ry_top[:, None, None]).astype(np.float32)
    u, w = np.broadcast_arrays(u, w)
    rho2 = u * u + w * w  # a few pixels across: an outline wobble would not show
    rows, cols = np.broadcast_arrays(rows.astype(np.int32), cols.astype(np.int32))
    on_image = (rows >= 0) & (rows < view.height) & (cols >= 0) & (cols < view.width)
    on_ground = rows + 0.5 > view.horizon[np.clip(cols, 0, view.width - 1)]
    shadow = pebble_shadow(view, pebbles, rows, cols) & on_image & on_ground & (rho2 >= 1)
    radiance[rows[shadow], cols[shadow]] *= shadow_level
    inside = (rho2 < 1) & on_image
    which = np.broadcast_to(np.arange(len(pebbles.z))[:, None, None], inside.shape)[inside]
    shade = dome_shade(view, pebbles, which, u[inside], w[inside], rho2[inside], 1.0)
    # fancy assignment keeps the last write of a repeated pixel: the nearer pebble, as sorted
    radiance[rows[inside], cols[inside]] = shade
    mask[rows[inside], cols[inside]] = GROUND


def pebble_shadow(view: View, pebbles: Rocks, rows, cols) -> np.ndarray:
    """Stamp pixels within a pebble's radius of the segment its (capped) shadow covers, on screen."""
    direction = shadow_direction(view)
    length = np.minimum(shadow_length(view, height_m(pebbles)), PEBBLE_SHADOW_MAX * pebbles.radius)
    end_col, end_row = view.project(pebbles.x + direction[0] * length, pebbles.z + direction[1] * length)
    as_stamp = lambda a: np.asarray(a, dtype=np.float32)[:, None, None]
    seg_c, seg_r = as_stamp(end_col - pebbles.col), as_stamp(end_row - pebbles.row)
    rel_c = cols + np.float32(0.5) - as_stamp(pebbles.col)
    rel_r = rows + np.float32(0.5) - as_stamp(pebbles.row)
    t = np.clip((rel_c * seg_c + rel_r * seg_r) / (seg_c ** 2 + seg_r ** 2 + 1e-6), 0, 1)
    dist_c, dist_r = rel_c - t * seg_c, rel_r - t * seg_r
    spread_r = as_stamp(np.maximum(pebbles.ry_bottom, 0.6))
    return (dist_c / as_stamp(pebbles.rx)) ** 2 + (dist_r / spread_r) ** 2 < 1
