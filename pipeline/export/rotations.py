"""Rotation conversions the exporters need, in numpy (no scipy, no torch).

Every rotation enters as a matrix and is turned into a unit quaternion first: HMR2's matrices
are float32 and a little off orthonormal, and a quaternion is the one place where that is
projected away. Everything else (axis-angle, Euler angles, interpolation) is derived from it.
Quaternions are stored x, y, z, w (glTF's order).
"""

from __future__ import annotations

import numpy as np


def matrix_to_quaternion(rot: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions x, y, z, w with w >= 0.

    Shepperd's method: the largest of the four squared components picks the formula, so no
    division is by a small number.
    """
    m = np.asarray(rot, dtype=np.float64)
    shape = m.shape[:-2]
    m = m.reshape(-1, 3, 3)
    trace = m[:, 0, 0] + m[:, 1, 1] + m[:, 2, 2]
    # 4 * the square of each component, up to the one used
    candidates = np.stack([1 + 2 * m[:, 0, 0] - trace, 1 + 2 * m[:, 1, 1] - trace, 1 + 2 * m[:, 2, 2] - trace, 1 + trace], axis=1)
    pick = np.argmax(candidates, axis=1)
    q = np.empty((len(m), 4))
    for k in range(4):
        sel = pick == k
        if not sel.any():
            continue
        r = m[sel]
        s = 2.0 * np.sqrt(np.maximum(candidates[sel, k], 1e-300))
        if k == 3:
            q[sel] = np.stack([(r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 1, 0] - r[:, 0, 1]) / s, s / 4], axis=1)
        elif k == 0:
            q[sel] = np.stack([s / 4, (r[:, 0, 1] + r[:, 1, 0]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 2, 1] - r[:, 1, 2]) / s], axis=1)
        elif k == 1:
            q[sel] = np.stack([(r[:, 0, 1] + r[:, 1, 0]) / s, s / 4, (r[:, 1, 2] + r[:, 2, 1]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s], axis=1)
        else:
            q[sel] = np.stack([(r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 1, 2] + r[:, 2, 1]) / s, s / 4, (r[:, 1, 0] - r[:, 0, 1]) / s], axis=1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    return q.reshape(*shape, 4)


def quaternion_to_matrix(q: np.ndarray) -> np.ndarray:
    """(..., 4) quaternions x, y, z, w (normalised here) -> (..., 3, 3) rotation matrices."""
    q = np.asarray(q, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    x, y, z, w = np.moveaxis(q, -1, 0)
    rows = [
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ]
    return np.stack([np.stack(r, axis=-1) for r in rows], axis=-2)


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product a * b (the rotation b, then a), x, y, z, w."""
    ax, ay, az, aw = np.moveaxis(np.asarray(a, np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, np.float64), -1, 0)
    return np.stack(
        [
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
            aw * bw - ax * bx - ay * by - az * bz,
        ],
        axis=-1,
    )


def quaternion_to_axis_angle(q: np.ndarray) -> np.ndarray:
    """(..., 4) unit quaternions -> (..., 3) axis * angle (radians, angle in [0, pi])."""
    q = np.asarray(q, dtype=np.float64)
    q = np.where(q[..., 3:] < 0, -q, q)  # the same rotation with the angle at most pi
    v = q[..., :3]
    sin_half = np.linalg.norm(v, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., 3:])
    # angle / sin(angle / 2) tends to 2 as the angle goes to 0
    scale = np.where(sin_half > 1e-12, angle / np.maximum(sin_half, 1e-300), 2.0)
    return v * scale


def slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Spherical interpolation from q0 (t=0) to q1 (t=1) along the shorter arc; (..., 4)."""
    q0 = np.asarray(q0, np.float64)
    q1 = np.asarray(q1, np.float64)
    t = np.asarray(t, np.float64)[..., None]
    dot = np.sum(q0 * q1, axis=-1, keepdims=True)
    q1 = np.where(dot < 0, -q1, q1)
    dot = np.abs(dot)
    theta = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_theta = np.sin(theta)
    near = sin_theta < 1e-8  # (almost) the same rotation: linear is exact enough
    w0 = np.where(near, 1 - t, np.sin((1 - t) * theta) / np.where(near, 1.0, sin_theta))
    w1 = np.where(near, t, np.sin(t * theta) / np.where(near, 1.0, sin_theta))
    out = w0 * q0 + w1 * q1
    return out / np.linalg.norm(out, axis=-1, keepdims=True)


def continuous(q: np.ndarray) -> np.ndarray:
    """(T, ..., 4) quaternions with signs flipped so consecutive ones are in one hemisphere
    (players interpolate between keys component-wise or along the arc the signs give)."""
    q = np.array(q, dtype=np.float64, copy=True)
    for i in range(1, len(q)):
        flip = np.sum(q[i] * q[i - 1], axis=-1) < 0
        q[i][flip] *= -1
    return q


def matrix_to_euler_zyx(rot: np.ndarray) -> np.ndarray:
    """(..., 3, 3) -> (..., 3) angles (z, y, x) in radians with R = Rz(z) @ Ry(y) @ Rx(x).

    That is the intrinsic Z, then Y, then X order a BVH channel list ``Zrotation Yrotation
    Xrotation`` means. At y = +-90 degrees (gimbal lock) x is set to 0.
    """
    r = np.asarray(rot, dtype=np.float64)
    sin_y = np.clip(-r[..., 2, 0], -1.0, 1.0)
    y = np.arcsin(sin_y)
    cos_y = np.sqrt(r[..., 0, 0] ** 2 + r[..., 1, 0] ** 2)
    locked = cos_y < 1e-9
    z = np.where(locked, np.arctan2(-r[..., 0, 1], r[..., 1, 1]), np.arctan2(r[..., 1, 0], r[..., 0, 0]))
    x = np.where(locked, 0.0, np.arctan2(r[..., 2, 1], r[..., 2, 2]))
    return np.stack([z, y, x], axis=-1)
