"""Reference class-conditional samplers (spec section 4.1) for the rectified-flow PixelDiT.

Convention: x_t = t*x0 + (1-t)*eps with t = 0 pure noise and t = 1 data; the
network predicts v = x0 - eps, and sampling integrates dx/dt = v from t = 0 to
t = 1.

* Time grid: linspace(0, 1 - 1/N, N) with 1.0 appended, then respaced by
  t / (t + (1-t)*shift).  N steps, N+1 grid points, ending exactly at t = 1.
* CFG: each network call evaluates the batch [uncond (null class), cond] at the
  same x and t; out = u + w*(c - u) when lo < t < hi (strict, t in the dtype of
  the time grid), else out = c.
* ``flow_dpm`` (official sampler): Euler for the first step, then 2-step
  Adams-Bashforth x += dt*(1.5 v_i - 0.5 v_{i-1}) without correction for unequal dt.
* ``euler``: x += dt * v.
* ``heun``: Heun's second-order method on the same grid, including the final
  step: x_pred = x + dt*v(x, t), x += dt/2 * (v(x, t) + v(x_pred, t_next)).
  Two network calls per step.
"""

import numpy as np

from pixeldit_ref import forward

SAMPLERS = ("flow_dpm", "euler", "heun")


def time_grid(steps, shift):
    """float64 time grid [steps + 1] from 0 to 1 (spec 4.1)."""
    grid = np.append(np.linspace(0.0, 1.0 - 1.0 / steps, steps), 1.0)
    return grid / (grid + (1.0 - grid) * shift)


def is_guided(t, interval):
    """True when CFG applies at time t: strictly inside (lo, hi), compared in t's own dtype."""
    lo, hi = interval
    return bool(lo < t < hi)


def make_forward_fn(params, cfg, dtype="float64"):
    """Bind the numpy reference forward pass: returns f(x, t, y) -> v."""
    return lambda x, t, y: forward(params, cfg, x, t, y, dtype=dtype)


def guided_velocity(forward_fn, x, t, classes, null_class, cfg_scale, interval):
    """CFG velocity at scalar time t for x [B,...]: one call on [uncond; cond], then combine."""
    bsz = x.shape[0]
    labels = np.concatenate([np.full(bsz, null_class, dtype=np.int64), np.asarray(classes, dtype=np.int64)])
    out = forward_fn(np.concatenate([x, x]), np.full(2 * bsz, t, dtype=x.dtype), labels)
    uncond, cond = out[:bsz], out[bsz:]
    return uncond + cfg_scale * (cond - uncond) if is_guided(t, interval) else cond


def sample(forward_fn, noise, classes, steps, cfg, interval, shift, sampler, null_class):
    """Integrate from noise (t = 0) to an image (t = 1); returns x [B,3,H,W] in noise's dtype.

    Args:
        forward_fn: f(x [2B,3,H,W], t [2B], y [2B]) -> v, e.g. :func:`make_forward_fn`.
        noise: initial x at t = 0, [B,3,H,W].
        classes: class labels [B].
        steps: number of steps N.
        cfg: classifier-free guidance scale w.
        interval: (lo, hi) guidance interval, strict.
        shift: time shift of the grid (1.0 = uniform).
        sampler: one of ``flow_dpm``, ``euler``, ``heun``.
        null_class: the unconditional label (``num_classes``).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}, expected one of {SAMPLERS}")
    grid = time_grid(steps, shift).astype(noise.dtype)

    def velocity(x, t):
        return guided_velocity(forward_fn, x, t, classes, null_class, cfg, interval)

    x = noise
    v_prev = None
    for t_cur, t_next in zip(grid[:-1], grid[1:]):
        dt = t_next - t_cur
        v = velocity(x, t_cur)
        if sampler == "flow_dpm" and v_prev is not None:
            x = x + dt * (1.5 * v - 0.5 * v_prev)
        elif sampler == "heun":
            x = x + 0.5 * dt * (v + velocity(x + dt * v, t_next))
        else:
            x = x + dt * v
        v_prev = v
    return x


def to_uint8(x):
    """Convert images in [-1, 1] to uint8: floor(clip((x+1)*127.5 + 0.5, 0, 255)) (official fp2uint8)."""
    return np.clip((x + 1.0) * 127.5 + 0.5, 0, 255).astype(np.uint8)
