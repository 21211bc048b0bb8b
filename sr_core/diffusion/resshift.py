"""ResShift's residual-shifting diffusion and SinSR's deterministic sampler, as pure functions.

ResShift (Yue et al., "ResShift: Efficient Diffusion Model for Image Super-resolution by Residual
Shifting", NeurIPS 2023) diffuses the HR latent x0 towards the LR latent y:
q(x_t | x0, y) = N(x0 + eta_t (y - x0), kappa^2 eta_t I)                                (paper eq. 1-2),
starts sampling at x_T = y + kappa sqrt(eta_T) eps, and samples the posterior
q(x_{t-1} | x_t, x0) = N(eta_{t-1}/eta_t x_t + alpha_t/eta_t x0, kappa^2 eta_{t-1}/eta_t alpha_t I)
with alpha_t = eta_t - eta_{t-1} (eq. 6-7), the network predicting x0 from the input
x_t / sqrt(kappa^2 eta_t + 1).  SinSR (Wang et al., "SinSR: Diffusion-Based Image Super-Resolution in
a Single Step", CVPR 2024, sec. 4.1, eq. 7-8) replaces the posterior by a deterministic map with the
same marginals: x_{t-1} = k_t x0_hat + m_t x_t + j_t y.  The numbers follow the official
`models/gaussian_diffusion.py` (`get_named_eta_schedule` "exponential", `GaussianDiffusion`,
`p_sample_loop`, `ddim_sample_loop`, `one_step`) of zsyOAOA/ResShift and wyf0912/SinSR: 0-based step
indices t = 0..T-1 (index T-1 is the paper's t = T), and the network is fed that index unchanged.
Schedules are computed in float64, their invariants asserted once, and cast per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

__all__ = [
    "DenoiseFn",
    "ResShiftSchedule",
    "sqrt_eta_schedule",
    "eta_schedule",
    "make_schedule",
    "scale_input",
    "q_sample",
    "q_posterior",
    "prior_sample",
    "sinsr_coefficients",
    "sample_resshift",
    "sample_sinsr_ddim",
    "one_step",
    "SAMPLERS",
]

# denoise_fn(x_t_scaled, t) -> x0 prediction; x_t_scaled = scale_input(x_t, schedule, t) and t is a
# (N,) int64 tensor of 0-based step indices (what the official code feeds its UNet).
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# noise for a sampler: None (all drawn from the generator), one tensor (the eps of x_T), or a sequence
# whose entry 0 is the eps of x_T and entry i >= 1 the noise of the i-th stochastic step (t = T-i).
NoiseArg = Union[None, torch.Tensor, Sequence[Optional[torch.Tensor]]]
Callback = Callable[[dict], None]
TArg = Union[int, torch.Tensor]


# --------------------------------------------------------------------------------------------
# schedule


def sqrt_eta_schedule(T: int, kappa: float, min_noise_level: float, p: float, etas_end: float = 0.99, *,
                      start_cap: Optional[float] = None) -> np.ndarray:
    """sqrt(eta_t) for t = 1..T (float64, shape (T,)): ResShift's "exponential" schedule (paper eq. 10).

    sqrt(eta_1) = min(min_noise_level / kappa, min_noise_level[, start_cap]), sqrt(eta_T) = etas_end,
    and sqrt(eta_t) = sqrt(eta_1) * b^(beta_t) with b = (etas_end / sqrt(eta_1))^(1/(T-1)) and
    beta_t = ((t-1)/(T-1))^p * (T-1).  The operations are the official `get_named_eta_schedule`'s, in
    the same order, so the values agree to the last bit.  SinSR's copy of that function also caps
    sqrt(eta_1) at sqrt(0.001) (`start_cap=math.sqrt(0.001)`); with its released config
    (kappa 2, min_noise_level 0.04) the cap does not bind.
    """
    T = int(T)
    if T < 2:
        raise ValueError(f"the ResShift schedule needs T >= 2 steps, got {T}")
    if not (kappa > 0 and min_noise_level > 0 and 0 < etas_end <= 1 and p > 0):
        raise ValueError(f"bad schedule parameters kappa={kappa}, min_noise_level={min_noise_level}, "
                         f"etas_end={etas_end}, p={p}")
    etas_start = min(min_noise_level / kappa, min_noise_level)
    if start_cap is not None:
        etas_start = min(etas_start, start_cap)
    increaser = math.exp(1 / (T - 1) * math.log(etas_end / etas_start))
    base = np.ones([T]) * increaser
    power_timestep = np.linspace(0, 1, T, endpoint=True) ** p
    power_timestep *= T - 1
    return np.power(base, power_timestep) * etas_start


def eta_schedule(T: int, kappa: float, min_noise_level: float, p: float, etas_end: float = 0.99, *,
                 start_cap: Optional[float] = None) -> np.ndarray:
    """eta_t for t = 1..T (float64, shape (T,)): the square of `sqrt_eta_schedule` (as official)."""
    return sqrt_eta_schedule(T, kappa, min_noise_level, p, etas_end, start_cap=start_cap) ** 2


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class ResShiftSchedule:
    """All per-step constants of one ResShift process, float64, indexed by the 0-based step t.

    Built by `make_schedule` (or `from_sqrt_etas`), which asserts the invariants once.  Index t holds
    the paper's step t+1, so `etas[-1]` is eta_T and `etas_prev[0]` = eta_0 = 0.
    """

    kappa: float
    sqrt_etas: np.ndarray  # sqrt(eta_t)
    etas: np.ndarray  # eta_t, increasing, in (0, 1]
    etas_prev: np.ndarray  # eta_{t-1}, with eta_0 = 0
    alpha: np.ndarray  # alpha_t = eta_t - eta_{t-1}
    posterior_variance: np.ndarray  # kappa^2 eta_{t-1}/eta_t alpha_t (eq. 7); 0 at t index 0
    posterior_mean_coef1: np.ndarray  # eta_{t-1}/eta_t, multiplies x_t
    posterior_mean_coef2: np.ndarray  # alpha_t/eta_t, multiplies x0
    ddim_k: np.ndarray  # SinSR k_t = 1 - eta_{t-1} + sqrt(eta_{t-1} eta_t) - sqrt(eta_{t-1}/eta_t)
    ddim_m: np.ndarray  # SinSR m_t = sqrt(eta_{t-1}/eta_t)
    ddim_j: np.ndarray  # SinSR j_t = eta_{t-1} - sqrt(eta_{t-1} eta_t)
    normalize_input: bool = True  # feed x_t / sqrt(kappa^2 eta_t + 1) to the network (official latent mode)

    @property
    def T(self) -> int:
        return int(self.etas.shape[0])

    @classmethod
    def from_sqrt_etas(cls, sqrt_etas, kappa: float, *, normalize_input: bool = True) -> "ResShiftSchedule":
        sqrt_etas = np.asarray(sqrt_etas, dtype=np.float64)
        etas = sqrt_etas ** 2
        assert etas.ndim == 1 and etas.shape[0] >= 1, "etas must be 1-D and non-empty"
        assert (etas > 0).all() and (etas <= 1).all(), "etas must lie in (0, 1]"
        assert (np.diff(etas) > 0).all(), "etas must increase strictly"
        assert kappa > 0, "kappa must be positive"
        etas_prev = np.append(0.0, etas[:-1])
        alpha = etas - etas_prev
        posterior_variance = kappa ** 2 * etas_prev / etas * alpha
        coef1 = etas_prev / etas
        coef2 = alpha / etas
        m = np.sqrt(etas_prev / etas)
        j = etas_prev - np.sqrt(etas_prev * etas)
        k = 1 - etas_prev + np.sqrt(etas_prev * etas) - np.sqrt(etas_prev / etas)
        # invariants (float64): posterior mean is an affine combination; the first step is noiseless;
        # SinSR's map is affine (k+m+j = 1) and carries q(x_t|x0,y) onto q(x_{t-1}|x0,y) with the same eps.
        assert (alpha > 0).all() and (posterior_variance >= 0).all()
        assert posterior_variance[0] == 0.0 and etas_prev[0] == 0.0
        assert np.allclose(coef1 + coef2, 1.0, rtol=0, atol=1e-12)
        assert np.allclose(k + m + j, 1.0, rtol=0, atol=1e-12)
        assert np.allclose(m * sqrt_etas, np.sqrt(etas_prev), rtol=0, atol=1e-12)
        assert np.allclose(m * etas + j, etas_prev, rtol=0, atol=1e-12)
        assert k[0] == 1.0 and m[0] == 0.0 and j[0] == 0.0
        return cls(kappa=float(kappa), sqrt_etas=_frozen(sqrt_etas), etas=_frozen(etas),
                   etas_prev=_frozen(etas_prev), alpha=_frozen(alpha),
                   posterior_variance=_frozen(posterior_variance), posterior_mean_coef1=_frozen(coef1),
                   posterior_mean_coef2=_frozen(coef2), ddim_k=_frozen(k), ddim_m=_frozen(m),
                   ddim_j=_frozen(j), normalize_input=bool(normalize_input))


def make_schedule(T: int, kappa: float, min_noise_level: float, p: float, etas_end: float = 0.99, *,
                  start_cap: Optional[float] = None, normalize_input: bool = True) -> ResShiftSchedule:
    """The ResShift process of a config: T steps, kappa, min_noise_level, power p, sqrt(eta_T) = etas_end."""
    return ResShiftSchedule.from_sqrt_etas(
        sqrt_eta_schedule(T, kappa, min_noise_level, p, etas_end, start_cap=start_cap), kappa,
        normalize_input=normalize_input)


# --------------------------------------------------------------------------------------------
# per-step helpers


def _coef(arr: np.ndarray, t: TArg, like: torch.Tensor):
    """arr[t] as a Python float (int t) or an (N, 1, ..., 1) tensor of like's dtype (tensor t)."""
    if isinstance(t, torch.Tensor):
        v = torch.from_numpy(np.array(arr, dtype=np.float64)).to(like.device)[t.to(like.device).long()]
        return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return float(arr[int(t)])


def _t_tensor(t: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), int(t), dtype=torch.long, device=like.device)


def scale_input(x_t: torch.Tensor, schedule: ResShiftSchedule, t: TArg) -> torch.Tensor:
    """The network input x_t / sqrt(kappa^2 eta_t + 1) (official `_scale_input`, latent mode)."""
    if not schedule.normalize_input:
        return x_t
    std = np.sqrt(schedule.etas * schedule.kappa ** 2 + 1)
    return x_t / _coef(std, t, x_t)


def q_sample(x0: torch.Tensor, y: torch.Tensor, schedule: ResShiftSchedule, t: TArg,
             noise: torch.Tensor) -> torch.Tensor:
    """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) eps, a draw of q(x_t | x0, y) (paper eq. 2)."""
    return x0 + _coef(schedule.etas, t, x0) * (y - x0) + _coef(schedule.sqrt_etas * schedule.kappa, t, x0) * noise


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, schedule: ResShiftSchedule, t: TArg):
    """(mean, variance) of q(x_{t-1} | x_t, x0) (paper eq. 7); variance is a float or an (N,1,..) tensor.

    mean = eta_{t-1}/eta_t x_t + alpha_t/eta_t x0; variance = kappa^2 eta_{t-1}/eta_t alpha_t.
    At index 0 (eta_0 = 0) the mean is x0 and the variance 0.
    """
    mean = _coef(schedule.posterior_mean_coef1, t, x_t) * x_t + _coef(schedule.posterior_mean_coef2, t, x_t) * x0
    return mean, _coef(schedule.posterior_variance, t, x_t)


def prior_sample(y: torch.Tensor, schedule: ResShiftSchedule, noise: torch.Tensor) -> torch.Tensor:
    """x_T = y + kappa sqrt(eta_T) eps, the start of every sampler (official `prior_sample`)."""
    return y + float(schedule.kappa * schedule.sqrt_etas[-1]) * noise


def sinsr_coefficients(schedule: ResShiftSchedule, t: int) -> tuple[float, float, float]:
    """(k_t, m_t, j_t) of SinSR's deterministic step x_{t-1} = k_t x0 + m_t x_t + j_t y (SinSR eq. 8)."""
    t = int(t)
    return float(schedule.ddim_k[t]), float(schedule.ddim_m[t]), float(schedule.ddim_j[t])


# --------------------------------------------------------------------------------------------
# samplers


class _Noise:
    """Hands out noise in sampler order: given tensors first, else draws from the CPU generator."""

    def __init__(self, noise: NoiseArg, generator: Optional[torch.Generator], like: torch.Tensor):
        if noise is None:
            self.given: list = []
        elif isinstance(noise, torch.Tensor):
            self.given = [noise]
        else:
            self.given = list(noise)
        self.generator = generator
        self.like = like
        self.i = 0

    def next(self) -> torch.Tensor:
        i = self.i
        self.i += 1
        given = self.given[i] if i < len(self.given) else None
        if given is not None:
            if tuple(given.shape) != tuple(self.like.shape):
                raise ValueError(f"noise entry {i} has shape {tuple(given.shape)}, expected {tuple(self.like.shape)}")
            return given.to(device=self.like.device, dtype=self.like.dtype)
        if self.generator is None:
            raise ValueError("the sampler needs noise: pass a torch.Generator or explicit noise tensors")
        # drawn on the generator's device (the CPU by convention), so results do not depend on the
        # device the model runs on
        n = torch.randn(tuple(self.like.shape), generator=self.generator, dtype=torch.float32,
                        device=self.generator.device)
        return n.to(device=self.like.device, dtype=self.like.dtype)


def _predict(denoise_fn: DenoiseFn, x_t: torch.Tensor, schedule: ResShiftSchedule, t: int,
             clip_x0: bool) -> torch.Tensor:
    x0 = denoise_fn(scale_input(x_t, schedule, t), _t_tensor(t, x_t))
    if tuple(x0.shape) != tuple(x_t.shape):
        raise ValueError(f"denoise_fn returned {tuple(x0.shape)} for an input of {tuple(x_t.shape)}")
    x0 = x0.to(x_t.dtype)
    return x0.clamp(-1, 1) if clip_x0 else x0


def sample_resshift(denoise_fn: DenoiseFn, y: torch.Tensor, schedule: ResShiftSchedule, *,
                    generator: Optional[torch.Generator] = None, noise: NoiseArg = None,
                    callback: Optional[Callback] = None, clip_x0: bool = False) -> torch.Tensor:
    """ResShift's stochastic sampler (official `p_sample_loop`): T network calls, returns x0.

    Stages per step t = T-1, ..., 0 (0-based): (1) x0_pred = denoise_fn(x_t / sqrt(kappa^2 eta_t + 1), t)
    [clamped to [-1, 1] when `clip_x0`, official for pixel-space models only]; (2) posterior mean and
    variance of eq. 7; (3) x_{t-1} = mean + sqrt(variance) z, with no noise at the last step (t = 0).
    Noise: `noise[0]` is the eps of x_T = y + kappa sqrt(eta_T) eps, `noise[i]` the z of the i-th step
    (t = T-i, i = 1..T-1); missing entries are drawn from `generator` in that order.
    `callback({"i", "t", "x_t", "x0_pred", "x_prev"})` is called after every step.
    """
    draw = _Noise(noise, generator, y)
    x = prior_sample(y, schedule, draw.next())
    T = schedule.T
    for i, t in enumerate(range(T - 1, -1, -1)):
        x0_pred = _predict(denoise_fn, x, schedule, t, clip_x0)
        mean, var = q_posterior(x0_pred, x, schedule, t)
        x_prev = mean + math.sqrt(var) * draw.next() if t > 0 else mean
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_pred": x0_pred, "x_prev": x_prev})
        x = x_prev
    return x


def sample_sinsr_ddim(denoise_fn: DenoiseFn, y: torch.Tensor, schedule: ResShiftSchedule, *,
                      generator: Optional[torch.Generator] = None, noise: NoiseArg = None,
                      callback: Optional[Callback] = None, clip_x0: bool = False) -> torch.Tensor:
    """SinSR's deterministic sampler (SinSR eq. 8; official `ddim_sample_loop`): T calls, returns x0.

    Only x_T = y + kappa sqrt(eta_T) eps is random (`noise[0]` or one draw from `generator`); then
    for t = T-1, ..., 0: x0_pred = denoise_fn(scaled x_t, t); x_{t-1} = k_t x0_pred + m_t x_t + j_t y.
    At t = 0, (k, m, j) = (1, 0, 0), so the result is the last x0 prediction.  This is the teacher map
    F(x_T, y) that SinSR distils.  `callback` as in `sample_resshift`.
    """
    draw = _Noise(noise, generator, y)
    x = prior_sample(y, schedule, draw.next())
    T = schedule.T
    for i, t in enumerate(range(T - 1, -1, -1)):
        x0_pred = _predict(denoise_fn, x, schedule, t, clip_x0)
        k, m, j = sinsr_coefficients(schedule, t)
        x_prev = k * x0_pred + m * x + j * y
        if callback is not None:
            callback({"i": i, "t": t, "x_t": x, "x0_pred": x0_pred, "x_prev": x_prev})
        x = x_prev
    return x


def one_step(denoise_fn: DenoiseFn, y: torch.Tensor, schedule: ResShiftSchedule, *,
             generator: Optional[torch.Generator] = None, noise: NoiseArg = None,
             callback: Optional[Callback] = None, clip_x0: bool = False) -> torch.Tensor:
    """SinSR's student f(x_T, y): one call at the last index t = T-1 (official `one_step=True`).

    x_T = y + kappa sqrt(eta_T) eps as in the other samplers (so the seed still matters); the
    student's x0 prediction from the scaled x_T is the output.
    """
    draw = _Noise(noise, generator, y)
    x = prior_sample(y, schedule, draw.next())
    t = schedule.T - 1
    x0_pred = _predict(denoise_fn, x, schedule, t, clip_x0)
    if callback is not None:
        callback({"i": 0, "t": t, "x_t": x, "x0_pred": x0_pred, "x_prev": x0_pred})
    return x0_pred


# the samplers by the names the methods, presets and recipes use
SAMPLERS = {"stochastic": sample_resshift, "deterministic": sample_sinsr_ddim, "one_step": one_step}
