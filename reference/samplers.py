"""Reference samplers: class-conditional (spec section 4.1) and, at the end, text-to-image DPM-Solver++ (4.2).

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


# ---------------------------------------------------------------------------------------------------------------
# Text-to-image sampler (spec section 4.2): DPM-Solver++ (multistep, order 2, lower_order_final) on the flow
# schedule of SANA.  Convention reversed relative to the C2I samplers above: sigma is the noise level,
# x_sigma = (1 - sigma) x0 + sigma noise, the network gets t = sigma * 1000 and predicts v = noise - x0.

T2I_SAMPLERS = ("dpmpp_2m",)


def flow_sigmas(steps, shift, t0=0.001):
    """The N+1 sigmas of ``skip_type="time_uniform_flow"``, from ~1 down to exactly 0 (float64).

    ``1 - linspace(1, t0, N+1)``, shifted by s*sigma / (1 + (s-1)*sigma), then flipped.
    """
    sigmas = 1.0 - np.linspace(1.0, t0, steps + 1)
    sigmas = shift * sigmas / (1.0 + (shift - 1.0) * sigmas)
    return sigmas[::-1].copy()


def flow_lambda(sigma):
    """Half log-SNR of the flow schedule: log(1 - sigma) - log(sigma) (+inf at sigma = 0)."""
    with np.errstate(divide="ignore"):
        return np.log(1.0 - sigma) - np.log(sigma)


def t2i_is_guided(sigma, interval):
    """CFG applies when lo < sigma < hi (strict, on sigma; official ``interval_guidance``)."""
    lo, hi = interval
    return bool(lo < sigma < hi)


def t2i_data_prediction(forward_fn, x, sigma, cond, uncond, cfg_scale, interval):
    """x0 prediction at noise level sigma (official model_wrapper + data_prediction_fn, model_type "flow").

    Each branch's velocity becomes a noise prediction ``(1 - sigma) v + x``; CFG combines the noise
    predictions ``u + w (c - u)`` only inside the interval (else only the cond branch is run), and
    ``x0 = (x - sigma noise) / (1 - sigma)``.
    """
    bsz = x.shape[0]
    t = np.full(bsz, sigma * 1000.0)
    guided = cfg_scale != 1.0 and uncond is not None and t2i_is_guided(sigma, interval)
    if guided:
        out = forward_fn(np.concatenate([x, x]), np.concatenate([t, t]), np.concatenate([uncond, cond]))
        n_u, n_c = ((1.0 - sigma) * out[:bsz] + x), ((1.0 - sigma) * out[bsz:] + x)
        noise = n_u + cfg_scale * (n_c - n_u)
    else:
        noise = (1.0 - sigma) * forward_fn(x, t, cond) + x
    return (x - sigma * noise) / (1.0 - sigma), guided


def sample_t2i(forward_fn, noise, cond, uncond, steps, cfg_scale, interval, shift):
    """DPM-Solver++ 2M from pure noise (sigma ~ 1) to sigma = 0; returns (x0 [B,3,H,W], guided flags [steps]).

    Args:
        forward_fn: f(x [B',3,H,W], t [B'] = sigma*1000, text [B',L,C]) -> v.
        noise: the initial x, [B,3,H,W].
        cond: text embeddings of the prompt, [B,L,C]; uncond: of the negative/null prompt, or None.
        steps: N >= 2 (the official solver asserts steps >= order).

    Step 1 is first order, steps 2..N-1 second order (``solver_type="dpmsolver"``), the final step onto
    sigma = 0 first order, which returns the last x0 prediction exactly (lambda = +inf).
    """
    if steps < 2:
        raise ValueError("DPM-Solver++ 2M needs at least 2 steps")
    sig = flow_sigmas(steps, shift)
    lam = flow_lambda(sig)
    x = noise
    m_prev, guided = t2i_data_prediction(forward_fn, x, sig[0], cond, uncond, cfg_scale, interval)
    flags = [guided]
    m_prev2 = None
    for k in range(1, steps + 1):
        s_t, a_t = sig[k], 1.0 - sig[k]
        if k == steps:
            x = m_prev  # first order onto sigma = 0: sigma_t / sigma_s = 0 and alpha_t * expm1(-inf) = -1
            break
        h = lam[k] - lam[k - 1]
        phi = np.expm1(-h)
        if m_prev2 is None:
            x = (s_t / sig[k - 1]) * x - (a_t * phi) * m_prev
        else:
            r0 = (lam[k - 1] - lam[k - 2]) / h
            d1 = (m_prev - m_prev2) / r0
            x = (s_t / sig[k - 1]) * x - (a_t * phi) * m_prev - 0.5 * (a_t * phi) * d1
        m_prev2 = m_prev
        m_prev, guided = t2i_data_prediction(forward_fn, x, s_t, cond, uncond, cfg_scale, interval)
        flags.append(guided)
    return x, np.asarray(flags, dtype=np.int64)
