"""The software rasteriser of :mod:`cadcoder.render`: triangles to a z-buffer, segments to visible lines.

Everything works on NumPy arrays in screen space (pixel (row i, col j) is sampled at its centre
(j + 0.5, i + 0.5); larger depth is nearer the camera; empty pixels have depth -inf) and is
vectorised over all triangles or segments, so a 448-px image takes a few tens of milliseconds on one
CPU core. Image morphology (neighbourhood minimum, erosion, dilation) is ``scipy.ndimage``'s.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np
from scipy import ndimage

__all__ = [
    "rasterise",
    "vertex_normals",
    "polyline_segments",
    "silhouette_segments",
    "edge_pixels",
    "outline_pixels",
    "dilate",
]

_CROSS = ndimage.generate_binary_structure(2, 1)  # the 4-neighbourhood


def rasterise(
    xy: np.ndarray, z: np.ndarray, shade: np.ndarray, tris: np.ndarray, fids: np.ndarray, size: int,
    chunk: int = 1_000_000,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-buffer triangles (screen coords, larger z = nearer). Returns depth, face-id and shade buffers.

    Scanline rasterisation, vectorised over all triangles: every (triangle, pixel row) pair gets the
    span of pixel centres inside the triangle, so the work is proportional to the covered area (long
    thin triangles of curved faces cost no more than their pixels). Pixel (row i, col j) is sampled at
    its centre (j + 0.5, i + 0.5). Empty pixels have depth -inf and face id -1.
    """
    n_pix = size * size
    zbuf = np.full(n_pix, -np.inf)
    fbuf = np.full(n_pix, -1, dtype=np.int32)
    sbuf = np.zeros(n_pix)
    shape2 = (size, size)
    if len(tris) == 0:
        return zbuf.reshape(shape2), fbuf.reshape(shape2), sbuf.reshape(shape2)
    p = xy[tris]  # (M, 3, 2)
    det = (p[:, 1, 0] - p[:, 0, 0]) * (p[:, 2, 1] - p[:, 0, 1]) - (p[:, 2, 0] - p[:, 0, 0]) * (p[:, 1, 1] - p[:, 0, 1])
    ymin = np.maximum(np.ceil(p[:, :, 1].min(axis=1) - 0.5), 0).astype(np.int64)
    ymax = np.minimum(np.floor(p[:, :, 1].max(axis=1) - 0.5), size - 1).astype(np.int64)
    keep = (np.abs(det) > 1e-12) & (ymax >= ymin) & (p[:, :, 0].max(axis=1) >= 0) & (p[:, :, 0].min(axis=1) <= size)
    if not keep.any():
        return zbuf.reshape(shape2), fbuf.reshape(shape2), sbuf.reshape(shape2)
    tris, fids, det, p, ymin, ymax = tris[keep], fids[keep], det[keep], p[keep], ymin[keep], ymax[keep]
    # Depth and shade are affine in (x, y) over a triangle: value = a * x + b * y + c.
    inv = 1.0 / det
    e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    a1, b1 = e2[:, 1] * inv, -e2[:, 0] * inv  # barycentric l1 = a1 x + b1 y + c1
    a2, b2 = -e1[:, 1] * inv, e1[:, 0] * inv  # barycentric l2 = a2 x + b2 y + c2
    c1 = -(a1 * p[:, 0, 0] + b1 * p[:, 0, 1])
    c2 = -(a2 * p[:, 0, 0] + b2 * p[:, 0, 1])

    def affine(v: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        v0, d1, d2 = v[tris[:, 0]], v[tris[:, 1]] - v[tris[:, 0]], v[tris[:, 2]] - v[tris[:, 0]]
        return d1 * a1 + d2 * a2, d1 * b1 + d2 * b2, v0 + d1 * c1 + d2 * c2

    za, zb, zc = affine(z)
    sa, sb, sc = affine(shade)
    # One entry per (triangle, row): the x-range where the row's centre line crosses the triangle.
    h = ymax - ymin + 1
    t = np.repeat(np.arange(len(tris)), h)
    yc = (ymin[t] + (np.arange(t.size) - np.repeat(np.cumsum(h) - h, h))).astype(np.float64) + 0.5
    xl = np.full(t.size, np.inf)
    xr = np.full(t.size, -np.inf)
    for i, j in ((0, 1), (1, 2), (2, 0)):
        xa, ya, xb, yb = p[t, i, 0], p[t, i, 1], p[t, j, 0], p[t, j, 1]
        crosses = ((yc - ya) * (yc - yb) <= 0.0) & (ya != yb)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = xa + (yc - ya) * (xb - xa) / (yb - ya)
        xl = np.where(crosses, np.minimum(xl, x), xl)
        xr = np.where(crosses, np.maximum(xr, x), xr)
    # A small tolerance so that pixel centres on an edge shared by two triangles are never missed.
    x0 = np.maximum(np.ceil(xl - 0.5 - 1e-7), 0).astype(np.int64)
    x1 = np.minimum(np.floor(xr - 0.5 + 1e-7), size - 1).astype(np.int64)
    n = np.where(np.isfinite(xl) & np.isfinite(xr), np.maximum(x1 - x0 + 1, 0), 0)
    rows = np.flatnonzero(n)
    t, yc, x0, n = t[rows], yc[rows], x0[rows], n[rows]
    # Expand spans to pixels, in chunks of about `chunk` pixels to bound memory.
    cum = np.cumsum(n)
    splits = np.unique(np.searchsorted(cum, np.arange(chunk, cum[-1], chunk), side="right")) if cum.size else []
    for sel in np.split(np.arange(n.size), splits):
        if sel.size == 0:
            continue
        cnt = n[sel]
        r = np.repeat(sel, cnt)
        col = x0[r] + (np.arange(r.size) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        tt = t[r]
        x = col + 0.5
        y = yc[r]
        pix = (y - 0.5).astype(np.int64) * size + col
        depth = za[tt] * x + zb[tt] * y + zc[tt]
        np.maximum.at(zbuf, pix, depth)
        win = depth >= zbuf[pix]
        pw, tw = pix[win], tt[win]
        fbuf[pw] = fids[tw]
        sbuf[pw] = sa[tw] * x[win] + sb[tw] * y[win] + sc[tw]
    return zbuf.reshape(shape2), fbuf.reshape(shape2), sbuf.reshape(shape2)


def vertex_normals(vertices: np.ndarray, triangles: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Area-weighted vertex normals (smooth within a B-rep face, since faces share no vertices)."""
    v0, v1, v2 = vertices[triangles[:, 0]], vertices[triangles[:, 1]], vertices[triangles[:, 2]]
    fn = np.cross(v1 - v0, v2 - v0)
    vn = np.zeros_like(vertices)
    for j in range(3):
        np.add.at(vn, triangles[:, j], fn)
    vn /= np.maximum(np.linalg.norm(vn, axis=1, keepdims=True), 1e-300)
    return vn, fn


def polyline_segments(polylines: list) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends) arrays of the straight segments of a list of (K, 3) polylines."""
    parts = [p for p in polylines if len(p) > 1]
    if not parts:
        return np.zeros((0, 3)), np.zeros((0, 3))
    return np.concatenate([p[:-1] for p in parts]), np.concatenate([p[1:] for p in parts])


def silhouette_segments(vertices: np.ndarray, triangles: np.ndarray, front: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Mesh edges between a front- and a back-facing triangle of the same B-rep face (smooth silhouettes)."""
    e = np.concatenate([triangles[:, [0, 1]], triangles[:, [1, 2]], triangles[:, [2, 0]]])
    tid = np.tile(np.arange(len(triangles)), 3)
    key = np.minimum(e[:, 0], e[:, 1]) * len(vertices) + np.maximum(e[:, 0], e[:, 1])
    order = np.argsort(key, kind="stable")
    k = key[order]
    same = k[1:] == k[:-1]
    i, j = order[:-1][same], order[1:][same]
    sil = front[tid[i]] != front[tid[j]]
    seg = e[i[sil]]
    return vertices[seg[:, 0]], vertices[seg[:, 1]]


def edge_pixels(
    starts: np.ndarray, ends: np.ndarray, right: np.ndarray, up: np.ndarray, view: np.ndarray,
    centre: np.ndarray, scale: float, size: int, zbuf: np.ndarray, tol: float,
) -> np.ndarray:
    """Boolean image of the visible parts of 3D segments (hidden lines removed with the depth buffer).

    A sample is visible when some pixel of its 3x3 neighbourhood is empty or not nearer than the
    sample by more than `tol` (model units).
    """
    mask = np.zeros((size, size), dtype=bool)
    if starts.size == 0:
        return mask

    def project(p: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        q = p - centre
        return (q @ right) * scale + size / 2.0, -(q @ up) * scale + size / 2.0, q @ view

    x0, y0, d0 = project(starts)
    x1, y1, d1 = project(ends)
    n = np.ceil(np.maximum(np.abs(x1 - x0), np.abs(y1 - y0))).astype(np.int64) + 1
    seg = np.repeat(np.arange(n.size), n)
    f = (np.arange(seg.size) - np.repeat(np.cumsum(n) - n, n)) / np.maximum(n[seg] - 1, 1)
    xs = x0[seg] + (x1 - x0)[seg] * f
    ys = y0[seg] + (y1 - y0)[seg] * f
    ds = d0[seg] + (d1 - d0)[seg] * f
    col = np.floor(xs).astype(np.int64)
    row = np.floor(ys).astype(np.int64)
    ok = (col >= 0) & (col < size) & (row >= 0) & (row < size)
    col, row, ds = col[ok], row[ok], ds[ok]
    # Nearest surface around each sample: min over the 3x3 neighbourhood (empty = -inf = visible).
    near = ndimage.minimum_filter(zbuf, size=3, mode="constant", cval=-np.inf)
    visible = ds + tol >= near[row, col]
    row, col, xs, ys = row[visible], col[visible], xs[ok][visible], ys[ok][visible]
    # A line on the part's outline may fall on a background pixel: move it onto the nearest pixel
    # of the part (the dataset draws outlines on the part's own boundary pixels).
    filled = np.isfinite(zbuf)
    off = ~filled[row, col]
    if off.any():
        r0, c0, x, y = row[off], col[off], xs[off], ys[off]
        best_d = np.full(r0.shape, np.inf)
        best_r, best_c = r0.copy(), c0.copy()
        for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)):
            rr = np.clip(r0 + dr, 0, size - 1)
            cc = np.clip(c0 + dc, 0, size - 1)
            d = (cc + 0.5 - x) ** 2 + (rr + 0.5 - y) ** 2
            better = filled[rr, cc] & (d < best_d)
            best_d = np.where(better, d, best_d)
            best_r = np.where(better, rr, best_r)
            best_c = np.where(better, cc, best_c)
        row[off], col[off] = best_r, best_c
    mask[row, col] = True
    return mask


def outline_pixels(zbuf: np.ndarray) -> np.ndarray:
    """Pixels of the part that touch the background (4-neighbourhood): the outer outline."""
    filled = np.isfinite(zbuf)
    return filled & ~ndimage.binary_erosion(filled, structure=_CROSS, border_value=0)


def dilate(mask: np.ndarray, width: int) -> np.ndarray:
    """Thicken a 1-px line mask to about ``width`` px (a ``width`` x ``width`` square; even widths grow down-right)."""
    if width <= 1:
        return mask
    return ndimage.binary_dilation(mask, structure=np.ones((width, width), dtype=bool), origin=width % 2 - 1)
