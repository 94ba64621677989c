"""Every coordinate transform of the engine, in one place.

Frames:
- voxel indices: arrays are indexed ``[z, y, x]`` = ``[k, j, i]``; points are written ``(i, j, k)``
  when they go through a 4x4 matrix.
- RAS (Slicer) and LPS (DICOM/ITK) millimetres: LPS = diag(-1, -1, 1) RAS.
- a 3D box is half-open voxel indices ``(z0, z1, y0, y1, x0, x1)``.
- a 2D box is ``[x_min, y_min, x_max, y_max]`` in inclusive pixel indices of the frame it lives
  in (a full slice or a crop), as SAM's box prompt takes it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RAS_FROM_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def apply_matrix(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 homogeneous ``matrix`` to ``points`` of shape (N, 3) or (3,)."""
    points = np.asarray(points, dtype=float)
    flat = np.atleast_2d(points)
    out = flat @ matrix[:3, :3].T + matrix[:3, 3]
    return out.reshape(points.shape)


def zyx_to_ijk(points_zyx: np.ndarray) -> np.ndarray:
    """Reverse the last axis: array order ``(z, y, x)`` to matrix order ``(i, j, k)``."""
    return np.asarray(points_zyx, dtype=float)[..., ::-1]


def box3d_corners_ijk(box_ijk: tuple[int, int, int, int, int, int]) -> np.ndarray:
    """The 8 outer corners ``(i, j, k)`` of a half-open voxel box, on voxel edges (index - 0.5)."""
    z0, z1, y0, y1, x0, x1 = box_ijk
    return np.array([[x, y, z] for z in (z0 - 0.5, z1 - 0.5)
                     for y in (y0 - 0.5, y1 - 0.5) for x in (x0 - 0.5, x1 - 0.5)])


def box3d_from_corners_ijk(corners_ijk: np.ndarray, eps: float = 1e-3) -> tuple[int, ...]:
    """The half-open voxel box whose voxel centres lie inside the axis-aligned hull of ``corners``.

    The inverse of :func:`box3d_corners_ijk`; ``eps`` absorbs float noise from matrix products.
    """
    lo = np.ceil(corners_ijk.min(axis=0) + 0.5 - eps).astype(int)
    hi = np.floor(corners_ijk.max(axis=0) + 0.5 + eps).astype(int)
    (i0, j0, k0), (i1, j1, k1) = lo, hi
    return (int(k0), int(k1), int(j0), int(j1), int(i0), int(i1))


def clip_box3d(box_ijk, shape_zyx) -> tuple[int, ...] | None:
    """Clip a half-open box to a volume of ``shape_zyx``; ``None`` when nothing is left."""
    z0, z1, y0, y1, x0, x1 = (int(v) for v in box_ijk)
    nz, ny, nx = shape_zyx
    out = (max(z0, 0), min(z1, nz), max(y0, 0), min(y1, ny), max(x0, 0), min(x1, nx))
    if out[0] >= out[1] or out[2] >= out[3] or out[4] >= out[5]:
        return None
    return out


def box2d_of_mask(mask2d: np.ndarray) -> np.ndarray | None:
    """Tight inclusive ``[x_min, y_min, x_max, y_max]`` of a 2D mask, ``None`` when empty."""
    ys, xs = np.nonzero(mask2d)
    if ys.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max(), ys.max()], dtype=float)


def expand_box2d(box_xyxy, expansion: float, pad_px: float, shape_yx=None) -> np.ndarray:
    """Grow a 2D box about its centre: each side moves out by ``expansion`` x its size + ``pad_px``.

    ``shape_yx`` clips the result to an image of that size.
    """
    x0, y0, x1, y1 = np.asarray(box_xyxy, dtype=float)
    dx = expansion * (x1 - x0 + 1) + pad_px
    dy = expansion * (y1 - y0 + 1) + pad_px
    out = np.array([x0 - dx, y0 - dy, x1 + dx, y1 + dy])
    if shape_yx is not None:
        out = np.clip(out, 0, [shape_yx[1] - 1, shape_yx[0] - 1] * 2)
    return out


@dataclass(frozen=True)
class Crop2D:
    """A square window ``[y0, y0 + size) x [x0, x0 + size)`` of a slice; may reach outside it.

    Outside pixels are filled when extracting and dropped when pasting back, so every crop has
    the same size whatever its position.
    """

    y0: int
    x0: int
    size: int

    @classmethod
    def around(cls, box_xyxy, margin_px: int, min_size_px: int) -> "Crop2D":
        """The square crop centred on ``box_xyxy`` with ``margin_px`` of context on each side."""
        x0, y0, x1, y1 = box_xyxy
        side = max(x1 - x0 + 1, y1 - y0 + 1) + 2 * margin_px
        size = int(max(np.ceil(side), min_size_px))
        cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
        return cls(int(np.floor(cy - (size - 1) / 2.0)), int(np.floor(cx - (size - 1) / 2.0)), size)

    @classmethod
    def around_snapped(cls, box_xyxy, margin_px: int, min_size_px: int, grid_px: int) -> "Crop2D":
        """Like :meth:`around`, with the side rounded up to a multiple of ``grid_px`` and the
        corner snapped down to the grid, then grown by ``grid_px`` until the box keeps at least
        half the margin on every side. A pure function of the box, and the same crop for boxes
        that differ by less than a grid step."""
        grid = max(int(grid_px), 1)
        x0, y0, x1, y1 = (float(v) for v in box_xyxy)
        side = max(x1 - x0 + 1, y1 - y0 + 1) + 2 * margin_px
        size = int(max(np.ceil(side / grid) * grid, min_size_px))
        while True:
            cy, cx = (y0 + y1) / 2.0, (x0 + x1) / 2.0
            top = int(np.floor((cy - (size - 1) / 2.0) / grid) * grid)
            left = int(np.floor((cx - (size - 1) / 2.0) / grid) * grid)
            least = min(x0 - left, y0 - top, left + size - 1 - x1, top + size - 1 - y1)
            if least >= margin_px / 2.0:
                return cls(top, left, size)
            size += grid

    def box_to_crop(self, box_xyxy) -> np.ndarray:
        return np.asarray(box_xyxy, dtype=float) - [self.x0, self.y0, self.x0, self.y0]

    def box_to_full(self, box_xyxy) -> np.ndarray:
        return np.asarray(box_xyxy, dtype=float) + [self.x0, self.y0, self.x0, self.y0]

    def _overlap(self, shape_yx):
        ny, nx = shape_yx
        fy0, fx0 = max(self.y0, 0), max(self.x0, 0)
        fy1, fx1 = min(self.y0 + self.size, ny), min(self.x0 + self.size, nx)
        return (slice(fy0, fy1), slice(fx0, fx1)), (slice(fy0 - self.y0, fy1 - self.y0),
                                                    slice(fx0 - self.x0, fx1 - self.x0))

    def extract(self, image2d: np.ndarray, fill: float) -> np.ndarray:
        """The crop's pixels, ``fill`` where the crop lies outside the image."""
        out = np.full((self.size, self.size), fill, dtype=image2d.dtype)
        full, crop = self._overlap(image2d.shape)
        out[crop] = image2d[full]
        return out

    def paste(self, crop2d: np.ndarray, shape_yx, fill: float = 0) -> np.ndarray:
        """A full-size image that is ``crop2d`` inside the crop and ``fill`` elsewhere."""
        out = np.full(shape_yx, fill, dtype=crop2d.dtype)
        full, crop = self._overlap(shape_yx)
        out[full] = crop2d[crop]
        return out
