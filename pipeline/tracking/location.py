"""Location prediction over a track's history (PHALP ``forward_for_tracking(..., "L")``).

Each of x, y (the body origin's normalised 2D position) and log-depth is extrapolated with a ridge
regression on time, and a prediction interval at the target frame becomes the uncertainty that
loosens the location and depth gates of the cost.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from ..models.phalp.config import PhalpConfig

ORIGIN = 44  # index of the appended zero joint (the body origin) among the 45 2D joints


def _ridge(t: np.ndarray, y: np.ndarray, alpha: float, target: float) -> tuple[float, float]:
    """Ridge fit with intercept of ``y`` on ``t`` (scikit-learn ``Ridge`` on ``[1, t]``).

    Returns the prediction at ``target`` and its Student-t 95 % prediction interval
    (PHALP ``get_prediction_interval``). Both are NaN when all times are equal.
    """
    n = t.size
    t_mean, y_mean = t.mean(), y.mean()
    dt = t - t_mean
    sxx = float(np.sum(dt * dt))
    beta = float(np.sum(dt * (y - y_mean))) / (sxx + alpha)
    pred = y_mean + beta * (target - t_mean)
    resid = y - (y_mean + beta * dt)
    s_err = np.sqrt(np.sum(resid**2) / (n - 2))
    with np.errstate(divide="ignore", invalid="ignore"):
        pi = stats.t.ppf(0.975, n - 2) * s_err * np.sqrt(1 + 1 / n + (target - t_mean) ** 2 / sxx)
    return float(pred), float(pi)


def predict_location(
    history_loca: np.ndarray, history_time: np.ndarray, time_since_update: int, config: PhalpConfig
) -> np.ndarray:
    """(H, 99) float32 location vectors, (H,) frame indices -> predicted (99,) float32 vector.

    Entries 0-87 are the last detection's 2D joints; 88-89 the predicted origin; 90-92 the
    predicted 3D position; 93-95 the prediction intervals (divided by 1 + repeated times);
    96-98 = 1, 1, 0 (layout of the reference's prediction vector).
    """
    loca = np.asarray(history_loca, dtype=np.float32)
    t = np.asarray(history_time, dtype=np.int64).astype(np.float64)
    x = loca[:, 2 * ORIGIN].astype(np.float64)
    y = loca[:, 2 * ORIGIN + 1].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.log(loca[:, 92]).astype(np.float64)
    gap = min(int(time_since_update), config.location_max_gap)
    target = float(t[-1] + gap + 1)
    repeats = int(np.sum(np.diff(t) == 0)) + 1

    v_p, v_pi = _ridge(t, v, config.ridge_alpha_depth, target)
    x_p, x_pi = _ridge(t, x, config.ridge_alpha_x, target)
    y_p, y_pi = _ridge(t, y, config.ridge_alpha_y, target)
    res, focal = config.render_res, config.focal_length
    with np.errstate(over="ignore", invalid="ignore"):
        depth = np.exp(v_p)
        extra = np.array(
            [
                (x_p - 0.5) * depth / focal * res,
                (y_p - 0.5) * depth / focal * res,
                depth,
                x_pi / repeats,
                y_pi / repeats,
                np.exp(v_pi) / repeats,
                1.0,
                1.0,
                0.0,
            ]
        )
    out = np.empty(loca.shape[1], dtype=np.float32)
    out[: 2 * ORIGIN + 2] = loca[-1, : 2 * ORIGIN + 2]
    out[2 * ORIGIN] = np.float32(x_p)
    out[2 * ORIGIN + 1] = np.float32(y_p)
    with np.errstate(over="ignore", invalid="ignore"):
        out[2 * ORIGIN + 2 :] = extra.astype(np.float32)
    return out
