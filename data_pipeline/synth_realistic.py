"""The "realistic" style: a rover-height pinhole camera over fractal regolith with rocks and craters.

Geometry (all in metres, camera frame: x right, y up, z forward; the camera looks along +z):
a ground point at depth z and lateral offset x projects to column cx + f*x/z and to f*h/z rows below
the horizon line, where h is the camera height. The horizon is a per-column curve (hills, tilt from
roll or slope); rows above it are sky, and it may lie above the frame (looking down a slope: no sky).
Every ground pixel is therefore mapped back to a ground coordinate, and textures are sampled there, so
regolith detail, craters and rocks shrink and crowd with distance as in a real perspective view.

Lighting: one low sun (6-46 degrees elevation) with no atmosphere, so unlit faces and cast shadows are
nearly black. In the grey half of the scenes (the Kaggle renders' look) rock highlights roll off just
above the brightest regolith, as in the renders; the warm half (the Chang'e-3 photos' look) keeps bright
rocks, as the photos have. Labels follow the Kaggle convention observed in its masks: a rock is "large" by its
physical size (so distant large rocks near the horizon are blue although small on screen), and rocks
smaller than a few pixels on screen are left to the regolith texture (synth_rocks.py says why).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from data_pipeline import synth_rocks
from data_pipeline.synth_noise import (fractal_line, fractal_texture, sample_bilinear, sample_nearest,
                                       slopes)

SKY = 1
KAGGLE_WIDTH = 720  # pixel-sized constants below are tuned at this width and scale with the image
TEXTURE_SIZE = 128  # texels per side of every noise texture (a power of two: lookups wrap with "&")
LOW_RES = 4  # smooth ground terms are computed on a 4x coarser grid, then upsampled (image only)


@dataclass(frozen=True)
class View:
    """Camera and sun of one scene."""
    height: int  # image rows
    width: int  # image columns
    focal: float  # focal length, pixels
    cam_height: float  # camera height above the ground, metres
    horizon: np.ndarray  # (width,) float32 row of the horizon in each column; < 0 means no sky there
    sun: tuple[float, float, float]  # unit vector towards the sun, camera frame (python floats keep
    # float32 arrays float32: numpy scalars would promote them to float64)
    px_scale: float  # width / 720

    def depth(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Ground depth (m) seen at pixel centres; pixels at or above the horizon get a far depth."""
        below = np.maximum(rows + 0.5 - self.horizon[cols], 0.5)
        return (self.focal * self.cam_height / below).astype(np.float32)

    def lateral(self, cols: np.ndarray, depth: np.ndarray) -> np.ndarray:
        """Lateral ground offset (m) of pixel columns at the given depth."""
        return ((cols + 0.5 - self.width / 2) * depth / self.focal).astype(np.float32)

    def project(self, x: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ground point (x, z) in metres -> (column, row) on screen (z clamped just in front of us)."""
        z = np.maximum(z, 0.05)
        col = self.width / 2 + self.focal * x / z
        horizon = self.horizon[np.clip(col, 0, self.width - 1).astype(np.int64)]
        return col, horizon + self.focal * self.cam_height / z


def render(rng: np.random.Generator, height: int, width: int):
    """One realistic scene: (image uint8 HxWx3, mask uint8 HxW, large-rock instance map int32 HxW)."""
    view = sample_view(rng, height, width)
    radiance = render_ground(rng, view)
    mask = sky_mask(view).astype(np.uint8) * SKY
    instances = np.zeros((height, width), dtype=np.int32)
    synth_rocks.draw(rng, view, radiance, mask, instances)
    image = finish(rng, radiance, mask == SKY, mask > SKY, view.px_scale)
    return image, mask, instances


def sample_view(rng: np.random.Generator, height: int, width: int) -> View:
    hfov = np.radians(rng.uniform(45, 80))
    focal = width / (2 * np.tan(hfov / 2))
    elevation = np.radians(6 + 40 * rng.beta(1.5, 2.5))  # mostly low sun: long shadows
    # azimuth from the viewing direction; mostly from the side or behind, as in the Kaggle renders
    azimuth = np.radians(rng.uniform(50, 310) if rng.random() < 0.9 else rng.uniform(-50, 50))
    sun = (float(np.cos(elevation) * np.sin(azimuth)), float(np.sin(elevation)),
           float(np.cos(elevation) * np.cos(azimuth)))
    return View(height, width, float(focal), float(rng.uniform(1.0, 2.2)),
                sample_horizon(rng, height, width), sun, width / KAGGLE_WIDTH)


def sample_horizon(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Per-column horizon row: base level, tilt, a large hill and fractal skyline roughness."""
    if rng.random() < 0.25:  # camera pitched down (most Chang'e-3 photos) or down a slope: the horizon lies above the frame
        base = -rng.uniform(0.05, 0.8) * height
    else:
        base = rng.beta(1.8, 7.0) * height  # ~19 % sky on average, as in the Kaggle masks
    x = np.linspace(-0.5, 0.5, width, dtype=np.float32)
    tilt = rng.normal(0, 0.12) * height * x
    hill_centre, hill_width = rng.uniform(-0.6, 0.6), rng.uniform(0.2, 1.2)
    hill = -rng.normal(0.02, 0.07) * height * np.exp(-((x - hill_centre) / hill_width) ** 2)
    rolling = rng.uniform(0.0, 0.04) * height * fractal_line(rng, width, 2.6)
    skyline = rng.uniform(0.0, 0.004) * height * fractal_line(rng, width, 1.6)
    return (base + tilt + hill + rolling + skyline).astype(np.float32)


def sky_mask(view: View) -> np.ndarray:
    rows = np.arange(view.height, dtype=np.float32)[:, None]
    return rows + 0.5 < view.horizon[None, :]


# ---------------------------------------------------------------- ground

def render_ground(rng: np.random.Generator, view: View) -> np.ndarray:
    """Linear radiance of the regolith, HxW float32: coarse relief (with craters) + fine grain."""
    coarse_slope, albedo = coarse_terms(rng, view)
    rows = np.arange(view.height)[:, None]
    cols = np.arange(view.width)[None, :]
    depth = view.depth(rows, cols)
    lateral = view.lateral(cols, depth)
    fine_slope = fine_terms(rng, view, depth, lateral)
    slope_x = coarse_slope[0] + fine_slope[..., 0]
    slope_z = coarse_slope[1] + fine_slope[..., 1]
    return lit_radiance(view, slope_x, slope_z, albedo)


def lit_radiance(view: View, slope_x: np.ndarray, slope_z: np.ndarray, albedo) -> np.ndarray:
    """Albedo x (ambient + softened Lambert) for a surface with height slopes dh/dx, dh/dz."""
    sx, sy, sz = view.sun
    cos_incidence = (sy - slope_x * sx - slope_z * sz) / np.sqrt(1 + slope_x ** 2 + slope_z ** 2)
    # the exponent softens Lambert: the regolith scatters back more evenly than a matte wall
    return (albedo * (0.02 + np.maximum(cos_incidence, 0) ** 0.6)).astype(np.float32)


def mip_weight(texel_m: float, depth: np.ndarray, view: View) -> np.ndarray:
    """Fade a texture octave where its texels get smaller than a pixel's ground footprint."""
    footprint = depth / view.focal * np.sqrt(depth / view.cam_height)
    return np.minimum(1.0, texel_m / footprint)


def coarse_terms(rng: np.random.Generator, view: View):
    """Smooth relief slopes (2, H, W) and albedo (H, W), computed on a coarse grid and upsampled."""
    small_h, small_w = -(-view.height // LOW_RES), -(-view.width // LOW_RES)
    rows = (np.arange(small_h)[:, None] + 0.5) * LOW_RES - 0.5
    cols = np.clip((np.arange(small_w)[None, :] + 0.5) * LOW_RES - 0.5, 0, view.width - 1).astype(int)
    depth = view.depth(rows, cols)
    lateral = view.lateral(cols, depth)
    slope = np.zeros((2, small_h, small_w), dtype=np.float32)
    roughness = rng.uniform(0.05, 0.4)
    for tile_m, amplitude in ((0.8, 0.1), (3.0, 0.07), (14.0, 0.1), (60.0, 0.14)):
        texture = terrain_texture(rng)
        lookup = sample_bilinear(texture, *texel_coords(rng, lateral, depth, tile_m))
        # relief fades with distance too: at grazing angles it would only show as aliased streaks
        weight = mip_weight(tile_m / TEXTURE_SIZE, depth, view) * amplitude * roughness / (1 + depth / 300)
        slope += np.moveaxis(lookup, -1, 0) * weight
    albedo = regolith_albedo(rng, lateral, depth)
    size = (view.width, view.height)
    upsample = lambda a: np.asarray(Image.fromarray(a.astype(np.float32), "F").resize(size, Image.BILINEAR))
    return np.stack([upsample(slope[0]), upsample(slope[1])]), upsample(albedo)


def regolith_albedo(rng: np.random.Generator, lateral: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Patchy albedo: darker and brighter regolith at two scales."""
    texture = fractal_texture(rng, TEXTURE_SIZE, 3.0)
    albedo = np.ones_like(depth)
    for tile_m, contrast in ((8.0, rng.uniform(0.02, 0.08)), (50.0, rng.uniform(0.02, 0.1))):
        albedo += contrast * sample_bilinear(texture, *texel_coords(rng, lateral, depth, tile_m))
    return np.clip(albedo, 0.5, 1.5)


def texel_coords(rng: np.random.Generator, lateral, depth, tile_m: float):
    """Ground (x, z) in metres -> texel coordinates of a texture tiling every tile_m metres."""
    scale = TEXTURE_SIZE / tile_m
    offset_u, offset_v = (float(o) for o in rng.uniform(0, TEXTURE_SIZE, 2))
    return lateral * scale + offset_u, depth * scale + offset_v


def terrain_texture(rng: np.random.Generator) -> np.ndarray:
    """Slopes (N x N x 2, unit std) of a fractal height field with a few craters stamped in."""
    height = fractal_texture(rng, TEXTURE_SIZE, rng.uniform(2.6, 3.4))
    height_slope_std = slopes(height).std()
    for _ in range(rng.poisson(2.5)):
        stamp_crater(rng, height, height_slope_std)
    slope = slopes(height)
    return (slope / slope.std()).astype(np.float32)


def stamp_crater(rng: np.random.Generator, height: np.ndarray, slope_std: float) -> None:
    """Add a bowl with a raised rim to a periodic height field, in place."""
    n = height.shape[0]
    radius = rng.uniform(3, n / 5)
    depth = rng.uniform(1.5, 4.0) * slope_std * radius / 2  # wall slope a few times the noise slope
    centre = rng.uniform(0, n, 2)
    span = np.arange(-int(radius * 2), int(radius * 2) + 1)
    rows, cols = (int(centre[1]) + span) % n, (int(centre[0]) + span) % n
    r = np.hypot(span[:, None], span[None, :]) / radius
    profile = np.where(r < 1, r * r - 1, 0) + 0.25 * np.exp(-((r - 1) / 0.3) ** 2)
    height[np.ix_(rows, cols)] += depth * profile


def fine_terms(rng: np.random.Generator, view: View, depth, lateral) -> np.ndarray:
    """Full-resolution grain (H x W x 2 slopes): nearest lookups, faded where they would alias."""
    texture = slopes(fractal_texture(rng, TEXTURE_SIZE, 2.0))
    texture = texture / texture.std()
    grain = np.zeros(depth.shape + (2,), dtype=np.float32)
    for tile_m, amplitude in ((0.15, 0.15),):
        weight = np.maximum(mip_weight(tile_m / TEXTURE_SIZE, depth, view), 0.3) * amplitude
        grain += sample_nearest(texture, *texel_coords(rng, lateral, depth, tile_m)) * weight[..., None]
    return grain


# ---------------------------------------------------------------- camera response

def finish(rng: np.random.Generator, radiance: np.ndarray, sky: np.ndarray, rock: np.ndarray,
           px_scale: float) -> np.ndarray:
    """Exposure, gamma, sky, sensor noise, colour tint and lens blur -> HxWx3 uint8."""
    ground = radiance[~sky]
    reference = float(np.percentile(ground[:: max(ground.size // 4000, 1)], 60)) if ground.size else 1.0
    image = radiance * (rng.uniform(0.45, 0.7) / max(reference, 1e-6))
    image = soft_clip(image) ** rng.uniform(0.8, 1.3)
    grey = rng.random() < 0.5
    if grey:  # the renders' rocks are hardly brighter than the brightest regolith (photos' rocks are)
        image[rock] = cap_highlights(image[rock], image[~sky & ~rock], rng.uniform(1.0, 1.2))
    image[sky] = rng.uniform(0.0, 0.03)
    image += rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(0.002, 0.025)
    tint = [float(t) * 255 for t in camera_tint(rng, grey)]
    rgb = np.stack([np.clip(image * t + 0.5, 0, 255).astype(np.uint8) for t in tint], axis=-1)
    radius = rng.uniform(0.0, 1.1) * px_scale
    if radius < 0.2:
        return rgb
    return np.asarray(Image.fromarray(rgb, "RGB").filter(ImageFilter.GaussianBlur(radius)))


def cap_highlights(rock: np.ndarray, ground: np.ndarray, headroom: float) -> np.ndarray:
    """Roll rock values off towards headroom x the ground's 95th percentile (from 85 % of that ceiling)."""
    if not rock.size or not ground.size:
        return rock
    ceiling = headroom * float(np.percentile(ground[:: max(ground.size // 4000, 1)], 95))
    knee = 0.85 * ceiling
    return np.minimum(rock, knee) + (ceiling - knee) * np.tanh(np.maximum(rock - knee, 0) / (ceiling - knee))


def soft_clip(image: np.ndarray, knee: float = 0.75) -> np.ndarray:
    """Identity below the knee, then a smooth roll-off to 1: lit rocks keep some shading."""
    over = np.maximum(image - knee, 0) / (1 - knee)
    return np.clip(np.minimum(image, knee) + (1 - knee) * np.tanh(over), 0, 1)


def camera_tint(rng: np.random.Generator, grey: bool) -> np.ndarray:
    """Grey like the Kaggle renders, or warm grey-brown like the Chang'e-3 photos."""
    if grey:
        return 1 + rng.normal(0, 0.01, 3)
    return np.array([1.0, rng.uniform(0.93, 0.985), rng.uniform(0.8, 0.94)]) * rng.uniform(0.95, 1.1)
