"""Tileable fractal noise and fast texture lookups for the scene generator (numpy only).

Textures are small (N x N, N a power of two) and periodic, so a lookup at any ground coordinate wraps;
the renderer samples the same texture at several scales to get detail at several scales cheaply.
"""
from __future__ import annotations

import numpy as np


def fractal_texture(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """n x n float32 periodic noise with power spectrum ~ 1/k^beta, zero mean, unit std.

    beta ~ 2 is rough regolith, ~3 smooth rolling terrain.
    """
    white = rng.standard_normal((n, n))
    ky = np.fft.fftfreq(n)[:, None]
    kx = np.fft.rfftfreq(n)[None, :]
    k2 = kx * kx + ky * ky
    k2[0, 0] = np.inf  # no DC component: the texture has zero mean
    spectrum = np.fft.rfft2(white) * k2 ** (-beta / 4)  # amplitude ~ k^(-beta/2)
    field = np.fft.irfft2(spectrum, s=(n, n))
    return (field / field.std()).astype(np.float32)


def fractal_line(rng: np.random.Generator, n: int, beta: float) -> np.ndarray:
    """1-D noise of length n with spectrum ~ 1/k^beta, zero mean, unit std (horizon profiles)."""
    k = np.fft.rfftfreq(2 * n)  # twice as long, then cropped: the ends need not match
    k[0] = np.inf
    spectrum = np.fft.rfft(rng.standard_normal(2 * n)) * k ** (-beta / 2)
    line = np.fft.irfft(spectrum, n=2 * n)[:n]
    line = line - line.mean()
    return (line / max(line.std(), 1e-9)).astype(np.float32)


def slopes(height: np.ndarray) -> np.ndarray:
    """n x n x 2 central differences (d/dx, d/dy) of a periodic height field, per texel."""
    dx = (np.roll(height, -1, axis=1) - np.roll(height, 1, axis=1)) * 0.5
    dy = (np.roll(height, -1, axis=0) - np.roll(height, 1, axis=0)) * 0.5
    return np.stack([dx, dy], axis=-1)


def sample_nearest(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Look up texture (n x n [x C]) at texel coordinates (u = column, v = row), wrapping."""
    mask = texture.shape[0] - 1  # n is a power of two: "& mask" is a cheap modulo, also for negatives
    return texture[v.astype(np.int32) & mask, u.astype(np.int32) & mask]


def sample_bilinear(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear lookup with wrapping; for coarse octaves, where texels are larger than pixels."""
    mask = texture.shape[0] - 1
    u0, v0 = np.floor(u), np.floor(v)
    fu, fv = (u - u0).astype(np.float32), (v - v0).astype(np.float32)
    if texture.ndim == 3:
        fu, fv = fu[..., None], fv[..., None]
    i0, j0 = u0.astype(np.int32) & mask, v0.astype(np.int32) & mask
    i1, j1 = (i0 + 1) & mask, (j0 + 1) & mask
    top = texture[j0, i0] * (1 - fu) + texture[j0, i1] * fu
    bottom = texture[j1, i0] * (1 - fu) + texture[j1, i1] * fu
    return top * (1 - fv) + bottom * fv
