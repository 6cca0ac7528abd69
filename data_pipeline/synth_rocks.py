"""Rocks for the realistic style: scattering on the ground, shading, cast shadows and labels.

Rocks are scattered uniformly over the ground area in view with power-law sizes, so distant rocks
are smaller and denser on screen. A rock is a random convex polyhedron (a box cut by random planes),
seen from the camera's height so near rocks show their tops: a polygonal outline with flat, angular
faces, as in the Kaggle renders, cut at the ground-contact line (partly buried). Boulders (the large
rocks) are rounder (many shallow cuts), taller and mostly lighter, and come as near as 2.5 m, as in the
renders: that look is what tells the two classes apart there. Labelling follows the
Kaggle masks: "large" by physical radius; small rocks only near the camera and only from a few pixels
on screen. Near rocks below that label size are not drawn (the regolith texture stands for them):
look-alike unlabelled pebbles among the labelled rocks stopped the sim2real recipe from learning small
rocks (README). Beyond the small-rock range the field goes on out to 40 m as unlabelled pebbles, drawn
and shaded like any rock but labelled ground, as the real masks leave the pebble-strewn far ground: the
model learns that a rock-like speck far off is not a rock (fewer false rocks on the real renders).
Rocks are drawn one by one, far to near, each casting its shadow first.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from data_pipeline.synth_noise import fractal_texture, sample_bilinear, slopes

if TYPE_CHECKING:
    from data_pipeline.synth_realistic import View

GROUND, SKY, SMALL_ROCK, LARGE_ROCK = 0, 1, 2, 3
LABEL_MIN_RADIUS_PX = 16.0  # smaller rocks on screen (at 720 px width) are unlabelled: the Kaggle
# masks label few, blob-sized small rocks (median ~0.2 % of the frame, ~8 per frame), not specks
LARGE_ROCK_RADIUS_M = 0.5  # physical radius from which a rock counts as "large"
SMALL_ROCK_FAR_M = 10.0  # small rocks are labelled only this near: in the real masks they
# vanish with distance (2 of 348 lie near the horizon) while large rocks are labelled to the horizon
PEBBLE_FAR_M = 40.0  # beyond SMALL_ROCK_FAR_M the field goes on to here as pebbles drawn but labelled ground
PEBBLE_MIN_PX = 4.0  # smallest pebble drawn, radius px at 720 px width (smaller ones: regolith texture)
MIN_ROCK_RADIUS_M = 0.03  # smallest field rock scattered
FIELD_DENSITY = 25.0  # median field rocks >= MIN_ROCK_RADIUS_M per m^2 (some fields rockier): ~1.5x the
# real masks' labelled small rocks per frame, more to learn from in a short training run
FIELD_ALPHA = (2.5, 3.5)  # cumulative size distribution N(>r) ~ r^-alpha: steep, so labelled small rocks have
# the real masks' sizes on screen (median and 90th percentile area); a shallower law made a tail of near
# rocks 4x too big that held most of the small-rock pixels
MAX_ROCK_RADIUS_M = 1.8
BOULDER_NEAR_M = 2.5  # boulders from this depth: a near one can fill a third of a real render
BOULDER_FAR_M = 30.0  # boulders (large rocks) stay within this depth
BOULDERS_PER_SCENE = 12.0  # median of the expected count (before culling the ones out of view)
FACETS = 16  # random plane cuts per small rock: its faces and polygonal outline
CUT_DEPTH = (0.6, 1.0)  # distance of a cut from the rock's centre
BOULDER_FACETS = 48  # boulders in the renders are rounded, not angular: many shallow cuts
BOULDER_CUT_DEPTH = (0.85, 1.0)
BOULDER_ALBEDO = (1.0, 1.35)  # and mostly lighter than the regolith and the small rocks
BOX = 1.2  # the bounding box's faces: rarely cut deeper than the random ones
BOUNCE = (0.05, 0.4)  # light reflected off the sunlit regolith onto every face: the real renders' shadowed
# faces are lit (per frame, rock pixels' 25th percentile 0.74 x the ground's median; ours 0.41 with 5-20 %,
# 0.65 with this; tests/data_pipeline/test_synth_rocks.py)
SHADOW_LENGTH_SCALE = 0.5  # the real renders' cast shadows are short: the ground right around a rock is
# dark in 3 % of its pixels (ours 15 % at the geometric length of a rock as tall as its bounding box)


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
    labelled: np.ndarray  # False for a pebble: drawn like a rock, labelled ground

    def take(self, keep: np.ndarray) -> "Rocks":
        return Rocks(*(getattr(self, f)[keep] for f in self.__dataclass_fields__))


def scatter_rocks(rng: np.random.Generator, view: View) -> Rocks:
    """The rocks in view: a field of small rocks plus a few boulders, with their screen shapes; the field's
    unlabelled far pebbles among them (labelled False).

    The Kaggle masks hold ~2 large rocks per frame but dozens of small ones: the field's power law
    stops below the large-rock size, and boulders are a separate, sparse population.
    """
    near = view.focal * view.cam_height / max(view.height - float(view.horizon.min()), 1.0)
    half_width = view.width / 2 / view.focal * 1.15  # lateral extent per metre of depth, with margin
    # field rocks are labelled within SMALL_ROCK_FAR_M; beyond, out to PEBBLE_FAR_M, they are pebbles
    density = np.exp(rng.normal(np.log(FIELD_DENSITY), 0.6))  # rocks >= MIN_ROCK_RADIUS_M per m^2
    area = half_width * max(PEBBLE_FAR_M ** 2 - near ** 2, 0)
    field_count = min(rng.poisson(density * area), 100_000)
    field = truncated_power_law(rng, rng.uniform(*FIELD_ALPHA), MIN_ROCK_RADIUS_M, LARGE_ROCK_RADIUS_M, field_count)
    boulder_count = rng.poisson(np.exp(rng.normal(np.log(BOULDERS_PER_SCENE), 0.7)))
    boulders = LARGE_ROCK_RADIUS_M * (MAX_ROCK_RADIUS_M / LARGE_ROCK_RADIUS_M) ** rng.uniform(
        0, 1, boulder_count) ** 1.5  # log-uniform, skewed towards the small end
    x, z = ground_positions(rng, near, PEBBLE_FAR_M, half_width, field_count)
    bx, bz = ground_positions(rng, max(near, BOULDER_NEAR_M), BOULDER_FAR_M, half_width, boulder_count)
    x, z, radius = np.concatenate([x, bx]), np.concatenate([z, bz]), np.concatenate([field, boulders])
    radius_px = view.focal * radius / z
    label = labelled(view, radius, z, radius_px)
    keep = label | pebbles(view, radius, z, radius_px, label)
    x, z, radius, radius_px, label = x[keep], z[keep], radius[keep], radius_px[keep], label[keep]
    return cull_and_sort(view, shape_rocks(rng, view, x, z, radius, radius_px, label))


def truncated_power_law(rng, alpha: float, low: float, high: float, count: int) -> np.ndarray:
    """Radii in [low, high) with N(>r) ~ r^-alpha (inverse-CDF sampling: no pile-up at the cap)."""
    tail = 1 - (low / high) ** alpha
    return low * (1 - rng.uniform(0, 1, count) * tail) ** (-1 / alpha)


def labelled(view: View, radius, z, radius_px) -> np.ndarray:
    """Which rocks the Kaggle masks would label: big enough on screen, and small ones only nearby."""
    big_enough = radius_px >= LABEL_MIN_RADIUS_PX * view.px_scale
    return big_enough & ((radius >= LARGE_ROCK_RADIUS_M) | (z < SMALL_ROCK_FAR_M))


def pebbles(view: View, radius, z, radius_px, label) -> np.ndarray:
    """Unlabelled field rocks drawn anyway: beyond the small-rock range and at least PEBBLE_MIN_PX on screen."""
    seen = radius_px >= PEBBLE_MIN_PX * view.px_scale
    return ~label & (radius < LARGE_ROCK_RADIUS_M) & (z >= SMALL_ROCK_FAR_M) & seen


def ground_positions(rng, near: float, far: float, half_width: float, count: int):
    """Uniform positions over the ground area in view between depths near and far."""
    z = np.sqrt(rng.uniform(near ** 2, max(far, near) ** 2, count))
    return rng.uniform(-1, 1, count) * half_width * z, z


def shape_rocks(rng, view: View, x, z, radius, radius_px, label) -> Rocks:
    n = len(z)
    col, row = view.project(x, z)
    rx = radius_px * rng.uniform(0.8, 1.35, n)
    boulder = radius >= LARGE_ROCK_RADIUS_M
    ry_top = radius_px * np.where(boulder, rng.uniform(0.75, 1.15, n), rng.uniform(0.5, 1.0, n))  # boulders stand tall
    ry_bottom = np.maximum(rx * view.cam_height / z * rng.uniform(0.7, 1.1, n), 0.6)
    # some sites have rocks darker than their regolith (the renders), some brighter (Chang'e-3)
    albedo = rng.uniform(0.8, 1.2) * rng.uniform(0.85, 1.15, n)
    albedo = np.where(boulder, albedo * rng.uniform(*BOULDER_ALBEDO, n), albedo)
    return Rocks(x, z, radius, radius_px, col, row, rx, ry_top, ry_bottom, albedo, label)


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
    paint(rng, view, scatter_rocks(rng, view), radiance, mask, instances)


def paint(rng: np.random.Generator, view: View, rocks: Rocks, radiance, mask, instances) -> None:
    """Paint `rocks` (sorted far to near), each after its cast shadow; a pebble's pixels stay ground.

    What each rock covers and how it is lit does not depend on what was painted before it, so every
    rock's pixels and every shadow are computed first, many rocks per numpy call (~250 rocks per scene,
    most a few pixels wide: one call each was most of their cost); only the painting goes rock by rock.
    """
    shadow_level = rng.uniform(0.03, 0.2)  # no atmosphere: shadows are lit only by the regolith
    grain = slopes(fractal_texture(rng, 128, 2.2))
    grain = grain / grain.std()
    large = rocks.radius >= LARGE_ROCK_RADIUS_M
    polyhedra = list(random_polyhedra(rng, len(rocks.z)))
    boulders = random_polyhedra(rng, int(large.sum()), BOULDER_FACETS, BOULDER_CUT_DEPTH)
    for i, planes in zip(np.flatnonzero(large), boulders):
        polyhedra[i] = planes
    bounce = rng.uniform(*BOUNCE)
    faces = rock_faces(view, rocks, polyhedra, grain, bounce)
    shadows = shadow_regions(view, rocks)
    for i in range(len(rocks.z)):
        if shadows[i] is not None:
            window, dark = shadows[i]
            radiance[window][dark] *= shadow_level
        if faces[i] is not None:
            window, inside, shade = faces[i]
            radiance[window][inside] = shade
            mask[window][inside] = GROUND if not rocks.labelled[i] else LARGE_ROCK if large[i] else SMALL_ROCK
            instances[window][inside] = i + 1 if large[i] else 0


def window_of(view: View, left, right, top, bottom) -> tuple[slice, slice] | None:
    c0, c1 = max(int(np.floor(left)), 0), min(int(np.ceil(right)) + 1, view.width)
    r0, r1 = max(int(np.floor(top)), 0), min(int(np.ceil(bottom)) + 1, view.height)
    return (slice(r0, r1), slice(c0, c1)) if c0 < c1 and r0 < r1 else None


@dataclass(frozen=True)
class WindowPixels:
    """Every pixel of several screen windows as flat arrays, window by window, row-major within each."""
    owner: np.ndarray  # which window (index into the list given) each pixel belongs to
    rows: np.ndarray  # int64 pixel row and column
    cols: np.ndarray
    counts: np.ndarray  # pixels per window
    shapes: list[tuple[int, int]]  # (rows, columns) per window

    @staticmethod
    def of(windows: list[tuple[slice, slice]]) -> "WindowPixels":
        r0, r1, c0, c1 = (np.array([getattr(w[axis], end) for w in windows], np.int64)
                          for axis, end in ((0, "start"), (0, "stop"), (1, "start"), (1, "stop")))
        widths = c1 - c0
        counts = (r1 - r0) * widths
        owner = np.repeat(np.arange(len(windows)), counts)
        k = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)  # index within the window
        return WindowPixels(owner, r0[owner] + k // widths[owner], c0[owner] + k % widths[owner], counts,
                            [window_shape(w) for w in windows])

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-pixel values back into one array per window, shaped as the window."""
        parts = np.split(values, np.cumsum(self.counts)[:-1])
        return [part.reshape(shape) for part, shape in zip(parts, self.shapes)]


def window_shape(window: tuple[slice, slice]) -> tuple[int, int]:
    return window[0].stop - window[0].start, window[1].stop - window[1].start


def pixel_batches(members: list[int], windows: list, budget: int) -> list[list[int]]:
    """`members` in consecutive groups of at most `budget` window pixels (a bigger window alone): bounds
    the memory of the (pixels x planes) arrays."""
    batches, current, size = [], [], 0
    for i in members:
        rows, cols = window_shape(windows[i])
        area = rows * cols
        if current and size + area > budget:
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += area
    return batches + [current] if current else batches


# ---------------------------------------------------------------- shape and shading of the rocks

PIXEL_PLANE_BUDGET = 1 << 20  # pixels x planes per batch of rocks: ~8 MB per float64 array
ONE_AT_A_TIME_PX = 256  # a rock with this many window pixels is ray-cast on its own, not gathered per pixel


def random_polyhedra(rng: np.random.Generator, count: int, facets: int = FACETS,
                     cut_depth: tuple[float, float] = CUT_DEPTH) -> np.ndarray:
    """(count, facets + 6, 4) planes (normal x, y, z, offset): each rock is the convex polyhedron
    inside all of its planes, so its outline is a polygon and its faces are flat, as in the renders.

    Random cuts give the faces (deep ones: angular; many shallow ones: rounded); six box faces at
    distance BOX keep every rock bounded.
    """
    normals = rng.standard_normal((count, facets, 3))
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    cuts = np.concatenate([normals, rng.uniform(*cut_depth, (count, facets, 1))], axis=-1)
    box = np.concatenate([np.concatenate([np.eye(3), -np.eye(3)]), np.full((6, 1), BOX)], axis=-1)
    return np.concatenate([cuts, np.broadcast_to(box, (count, 6, 4))], axis=1).astype(np.float32)


def polyhedra_hit(planes: np.ndarray, depression: np.ndarray, owner: np.ndarray, u: np.ndarray, w: np.ndarray):
    """(inside, normal of the face seen) for view rays through rock-local (u, w), one per pixel.

    planes: (rocks, planes, 4), each rock seen from above by its `depression` (radians: near rocks show
    their tops); owner: the rock of each pixel, in ascending order. A ray enters through the last
    camera-facing plane it crosses and leaves through the first one facing away: it hits the rock where
    it enters before it leaves. (The six box faces give every rock planes of both kinds.)
    """
    world, offset = planes[..., :3], planes[..., 3]
    c, s = np.cos(depression)[:, None], np.sin(depression)[:, None]  # float64: the rays' depths are too
    normal_x = world[..., 0].astype(np.float64)
    normal_y = world[..., 1] * c + world[..., 2] * s
    normal_z = world[..., 2] * c - world[..., 1] * s
    nz = np.where(np.abs(normal_z) < 1e-3, 1e-3, normal_z)
    # adding 0 leaves a depth as it is, adding -inf / inf takes a plane of the other kind out of the max / min
    enter_bias, leave_bias = np.where(normal_z < 0, 0.0, -np.inf), np.where(normal_z < 0, np.inf, 0.0)
    inside, entered_through = np.empty(len(owner), bool), np.empty(len(owner), np.int64)
    starts = np.searchsorted(owner, np.arange(len(planes) + 1))
    big = np.flatnonzero(np.diff(starts) >= ONE_AT_A_TIME_PX)  # per-pixel gathers would cost more than a call
    small = np.ones(len(owner), bool)
    for r in big:
        pixels = slice(starts[r], starts[r + 1])
        small[pixels] = False
        inside[pixels], entered_through[pixels] = rays_through(
            offset[r], normal_x[r], normal_y[r], nz[r], enter_bias[r], leave_bias[r], u[pixels], w[pixels])
    k = owner[small]
    inside[small], entered_through[small] = rays_through(
        offset[k], normal_x[k], normal_y[k], nz[k], enter_bias[k], leave_bias[k], u[small], w[small])
    return inside, world[owner, entered_through]


def rays_through(offset, normal_x, normal_y, nz, enter_bias, leave_bias, u, w):
    """(inside, index of the plane entered through) of rays (u, w) against planes given per ray (N x P)
    or shared by all (P). In place: the (rays x planes) float64 depths are most of a scene's work."""
    depth = np.multiply.outer(u, normal_x) if normal_x.ndim == 1 else u[:, None] * normal_x
    np.subtract(offset, depth, out=depth)  # where each ray crosses each plane
    depth -= np.multiply.outer(w, normal_y) if normal_y.ndim == 1 else w[:, None] * normal_y
    depth /= nz
    entered_through = (depth + enter_bias).argmax(-1)
    enter = np.take_along_axis(depth, entered_through[:, None], -1)[:, 0]
    depth += leave_bias
    return enter < depth.min(-1), entered_through


def polyhedron_hit(planes: np.ndarray, u: np.ndarray, w: np.ndarray, depression: float):
    """polyhedra_hit for one rock's planes (P x 4) over arrays u, w of any shape."""
    inside, normal = polyhedra_hit(planes[None], np.array([depression], np.float64),
                                   np.zeros(u.size, np.int64), u.ravel(), w.ravel())
    return inside.reshape(u.shape), normal.reshape(*u.shape, 3)


def facet_shade(view: View, albedo: np.ndarray, bounce: float, normal: np.ndarray, bump: np.ndarray) -> np.ndarray:
    """Radiance of flat rock faces (normals N x 3, camera frame; albedo per face) with a little surface grain."""
    n = normal + np.concatenate([bump, np.zeros_like(bump[:, :1])], axis=-1)
    sx, sy, sz = view.sun
    cos_incidence = (n[:, 0] * sx + n[:, 1] * sy + n[:, 2] * sz) / np.linalg.norm(n, axis=-1)
    return (albedo * (bounce + np.maximum(cos_incidence, 0) ** 0.8)).astype(np.float32)


def rock_window(view: View, rocks: Rocks, i: int) -> tuple[slice, slice] | None:
    col, row, rx = float(rocks.col[i]), float(rocks.row[i]), float(rocks.rx[i])
    return window_of(view, col - rx, col + rx, row - float(rocks.ry_top[i]), row + float(rocks.ry_bottom[i]))


def rock_faces(view: View, rocks: Rocks, polyhedra: list[np.ndarray], grain: np.ndarray, bounce: float) -> list:
    """Per rock: (window, inside mask, radiance of the inside pixels), or None off screen.

    Rocks are batched by their number of planes (small rocks and boulders have different counts)."""
    windows = [rock_window(view, rocks, i) for i in range(len(rocks.z))]
    faces: list = [None] * len(rocks.z)
    for planes_count in sorted({len(p) for p in polyhedra}):
        members = [i for i, w in enumerate(windows) if w is not None and len(polyhedra[i]) == planes_count]
        for batch in pixel_batches(members, windows, PIXEL_PLANE_BUDGET // planes_count):
            batch_windows = [windows[i] for i in batch]
            inside, shade, pixels = shade_rocks(view, rocks, np.array(batch), batch_windows,
                                                np.stack([polyhedra[i] for i in batch]), grain, bounce)
            lit_counts = np.add.reduceat(inside, np.cumsum(pixels.counts) - pixels.counts)  # inside pixels per rock
            for i, window, covered, lit in zip(batch, batch_windows, pixels.split(inside),
                                               np.split(shade, np.cumsum(lit_counts)[:-1])):
                faces[i] = (window, covered, lit)
    return faces


def shade_rocks(view: View, rocks: Rocks, which: np.ndarray, windows: list, planes: np.ndarray,
                grain: np.ndarray, bounce: float):
    """(inside per window pixel, radiance per inside pixel, the WindowPixels) of the rocks `which`."""
    pixels = WindowPixels.of(windows)
    k = pixels.owner
    # per-rock scalars in float32: float32 pixel arithmetic takes a Python float as float32 too (same pixels)
    col, row, rx, top, bottom = (a[which].astype(np.float32) for a in (rocks.col, rocks.row, rocks.rx,
                                                                       rocks.ry_top, rocks.ry_bottom))
    rows = pixels.rows.astype(np.float32) + 0.5
    cols = pixels.cols.astype(np.float32) + 0.5
    u = (cols - col[k]) / rx[k]
    w = (row[k] - rows) / np.where(rows < row[k], top[k], bottom[k])  # up is positive
    depression = np.array([np.arctan2(view.cam_height, z) for z in rocks.z[which]], np.float64)
    inside, normal = polyhedra_hit(planes, depression, k, u, w)
    u, w, normal, k = u[inside], w[inside], normal[inside], k[inside]  # shade only what the rocks cover
    offset = ((rocks.x[which] + rocks.z[which]) * 37).astype(np.float32)[k]  # each rock: another part of the grain
    fine = np.maximum(8.0, rocks.rx[which] / 3).astype(np.float32)[k]  # big, near rocks: grain down to a few px
    bump = sample_bilinear(grain, u * fine - offset, w * fine + offset) * 0.15
    mottle = 1 + 0.1 * bump[:, 0] / 0.15  # albedo varies over the surface as well
    albedo = rocks.albedo[which].astype(np.float32)[k]
    return inside, facet_shade(view, albedo, bounce, normal, bump) * mottle, pixels


# ---------------------------------------------------------------- cast shadows

def shadow_direction(view: View) -> np.ndarray:
    """Unit ground direction (x, z) in which shadows fall: away from the sun."""
    sx, _, sz = view.sun
    return -np.array([sx, sz]) / max(np.hypot(sx, sz), 1e-6)


def shadow_length(view: View, rock_height) -> np.ndarray:
    sx, sy, sz = view.sun
    return rock_height * np.hypot(sx, sz) / sy * SHADOW_LENGTH_SCALE


def shadow_lengths(view: View, rocks: Rocks) -> np.ndarray:
    """Length of every rock's shadow strip on the ground, m (capped for a sun at the horizon)."""
    return np.minimum(shadow_length(view, height_m(rocks)), 40 * rocks.radius)


def shadow_regions(view: View, rocks: Rocks) -> list:
    """Per rock: (window, the pixels of it in the rock's cast shadow), or None off screen."""
    windows = shadow_windows(view, rocks)
    members = [i for i, w in enumerate(windows) if w is not None]
    regions: list = [None] * len(rocks.z)
    for batch in pixel_batches(members, windows, PIXEL_PLANE_BUDGET):
        batch_windows = [windows[i] for i in batch]
        for i, window, dark in zip(batch, batch_windows, shadow_masks(view, rocks, np.array(batch), batch_windows)):
            regions[i] = (window, dark)
    return regions


def shadow_windows(view: View, rocks: Rocks) -> list:
    """Per rock: the screen rectangle holding its shadow strip and footprint (and the rock above its foot)."""
    direction, length = shadow_direction(view), shadow_lengths(view, rocks)
    radius = rocks.radius[:, None]
    side = np.array([-direction[1], direction[0]]) * radius
    centre = np.stack([rocks.x, rocks.z], -1)
    ends = (centre - direction * radius, centre + direction * np.maximum(length, rocks.radius)[:, None])
    polygons = np.stack([ends[0] + side, ends[1] + side, ends[1] - side, ends[0] - side], 1)
    # only ground nearer than the bottom row's is off screen; a strip reaching behind the camera would
    # project through z ~ 0 to nonsense columns and cut the window (a straight-edged shadow), so clip it
    nearest = float(view.focal * view.cam_height / max(view.height - float(view.horizon.min()), 1.0))
    z_min = 0.9 * nearest
    clipped = polygons[:, :, 1].min(1) < z_min  # few: most strips lie wholly in front of the camera
    windows = [None] * len(polygons)
    for i, window in zip(np.flatnonzero(~clipped), screen_windows(view, polygons[~clipped], rocks.ry_top[~clipped])):
        windows[i] = window
    for i in np.flatnonzero(clipped):
        polygon = clip_near(polygons[i], z_min)
        windows[i] = screen_windows(view, polygon[None], rocks.ry_top[i:i + 1])[0] if len(polygon) else None
    return windows


def screen_windows(view: View, polygons: np.ndarray, rock_top: np.ndarray) -> list:
    """The screen rectangles of ground polygons ((count, n, 2) x, z), each reaching rock_top px above it."""
    cols = view.width / 2 + view.focal * polygons[..., 0] / polygons[..., 1]
    left = np.clip(cols.min(1) - 1, 0, view.width - 1).astype(np.int64)
    right = np.clip(cols.max(1) + 1, 0, view.width - 1).astype(np.int64)
    # the ground's rows hang from a wavy horizon: take its extremes over the strip's columns, not at its corners
    spans = np.stack([left, right + 1], 1).ravel()
    horizon = np.append(view.horizon, view.horizon[-1])  # a column past the last: a span may end there
    horizon_min, horizon_max = np.minimum.reduceat(horizon, spans)[::2], np.maximum.reduceat(horizon, spans)[::2]
    below = view.focal * view.cam_height / polygons[..., 1]
    return [window_of(view, c0 - 1, c1 + 1, h0 + b0 - top - 1, h1 + b1 + 1) for c0, c1, h0, h1, b0, b1, top
            in zip(cols.min(1), cols.max(1), horizon_min, horizon_max, below.min(1), below.max(1), rock_top)]


def clip_near(polygon: np.ndarray, z_min: float) -> np.ndarray:
    """The part of a convex ground polygon ((n, 2) x, z vertices in order) with z >= z_min."""
    if polygon[:, 1].min() >= z_min:  # nothing to clip (most strips)
        return polygon
    kept = []
    for a, b in zip(polygon, np.roll(polygon, -1, axis=0)):
        if a[1] >= z_min:
            kept.append(a)
        if (a[1] >= z_min) != (b[1] >= z_min):  # the edge crosses z = z_min
            t = (z_min - a[1]) / (b[1] - a[1])
            kept.append(a + t * (b - a))
    return np.array(kept).reshape(-1, 2)


def shadow_masks(view: View, rocks: Rocks, which: np.ndarray, windows: list) -> list[np.ndarray]:
    """For each rock of `which`, which pixels of its window lie in its shadow strip or footprint."""
    pixels = WindowPixels.of(windows)
    k, rows, cols = pixels.owner, pixels.rows, pixels.cols
    direction = shadow_direction(view)
    radius, length = rocks.radius[which][k], shadow_lengths(view, rocks)[which][k]
    depth = view.depth(rows, cols)
    rel_x, rel_z = view.lateral(cols, depth) - rocks.x[which][k], depth - rocks.z[which][k]
    along = rel_x * direction[0] + rel_z * direction[1]
    across = np.abs(rel_x * direction[1] - rel_z * direction[0])
    taper = radius * (1 - 0.5 * along / np.maximum(length, 1e-6))
    in_strip = (along >= 0) & (along <= length) & (across <= taper)
    # the whole footprint disc is darkened, so a rock lit from behind the camera gets a dark rim at its
    # foot, like the contact shadows of the real renders; lighting its sunward half lowered the sim2real
    # real-render mIoU on two seeds (0.533 -> 0.521, 0.528 -> 0.506; README)
    footprint = rel_x * rel_x + rel_z * rel_z <= radius * radius
    on_ground = rows + 0.5 > view.horizon[cols]
    return pixels.split((in_strip | footprint) & on_ground)
