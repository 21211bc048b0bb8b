"""DDPM with the cosine schedule, epsilon prediction, ancestral sampling and timestep respacing.

The process of SRDiff (Li et al., Neurocomputing 2022, eqs. 1-6; official `models/diffusion.py` of
LeiaLi/SRDiff, `GaussianDiffusion`): betas from the cosine schedule of Nichol & Dhariwal (2021, eq. 17)
with s = 0.008, clipped at 0.999; q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I); the network predicts
the noise, x_0 = sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps, clamped to [-1, 1] (official
`clip_denoised=True`); the posterior q(x_{t-1} | x_t, x_0) has mean coef1 x_0 + coef2 x_t and variance
beta_t (1 - abar_{t-1}) / (1 - abar_t); ancestral sampling adds sigma_t z except at the last step.
Respacing (sampling with N < T steps) keeps a subset S of the timesteps and recomputes
beta_k = 1 - abar_{S_k} / abar_{S_{k-1}}, the construction of guided-diffusion's `respace.py`
(the network still receives the original timestep S_k).  Indices are 0-based as in the official code
(index k holds the paper's step k+1).  Schedules are float64 with invariants asserted once; the
per-step coefficients are rounded to float32 before use, as the official buffers are.  Samplers are
pure functions `(denoise_fn, shape / x_t, schedule, *, noise, generator, callback) -> x_0`.  The code is ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["DDPMSchedule", "cosine_beta_schedule", "make_schedule", "respace", "respaced_timesteps",
           "q_sample", "predict_x0", "q_posterior", "p_sample", "reverse_chain", "sample", "DenoiseFn", "NoiseArg", "NoiseSource"]

# denoise_fn(x_t, t) -> predicted noise; t is an (N,) int64 tensor of *original* timesteps (0-based).
DenoiseFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# Noise: None (drawn from `generator`), a callable f(k) -> tensor, or a sequence.  The key k is the
# schedule index of the step whose output gets the noise (1 .. N-1; step 0 adds none), and k = N is
# the prior sample x_T.  A sequence holds x_T's noise at entry 0 and the noise of the i-th step
# (index N - i) at entry i, so it lists the draws in the order `sample` makes them.
NoiseArg = Union[None, Callable[[int], torch.Tensor], Sequence[Optional[torch.Tensor]]]
Callback = Callable[[dict], None]


def cosine_beta_schedule(T: int, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """beta_t, t = 1..T (float64): abar(t) = f(t) / f(0), f(t) = cos^2(((t/T) + s) / (1 + s) * pi/2),
    beta_t = 1 - abar(t) / abar(t-1), clipped to [0, max_beta] (official `cosine_beta_schedule`)."""
    T = int(T)
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    x = np.arange(T + 1, dtype=np.float64) / T
    f = np.cos((x + s) / (1 + s) * np.pi * 0.5) ** 2
    abar = f / f[0]
    return np.clip(1 - abar[1:] / abar[:-1], 0.0, max_beta)


def _frozen(a) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class DDPMSchedule:
    """Per-step constants of one (possibly respaced) DDPM, float64, index k = 0 .. N-1.

    `timesteps[k]` is the original timestep the network receives at index k (arange(T) unless
    respaced); `base_T` is the number of timesteps of the process the network was trained on.
    """

    betas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray  # multiplies x_0
    posterior_mean_coef2: np.ndarray  # multiplies x_t
    timesteps: np.ndarray  # int64, original timestep of each index
    base_T: int

    @property
    def N(self) -> int:
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(cls, betas, *, timesteps=None, base_T: Optional[int] = None) -> "DDPMSchedule":
        betas = np.asarray(betas, dtype=np.float64)
        assert betas.ndim == 1 and betas.shape[0] >= 1, "betas must be 1-D and non-empty"
        assert (betas > 0).all() and (betas <= 1).all(), "betas must lie in (0, 1]"
        n = betas.shape[0]
        timesteps = np.arange(n, dtype=np.int64) if timesteps is None else np.asarray(timesteps, dtype=np.int64)
        assert timesteps.shape == (n,) and (np.diff(timesteps) > 0).all(), "timesteps must increase strictly"
        alphas = 1.0 - betas
        ac = np.cumprod(alphas)
        ac_prev = np.append(1.0, ac[:-1])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        coef1 = betas * np.sqrt(ac_prev) / (1.0 - ac)
        coef2 = (1.0 - ac_prev) * np.sqrt(alphas) / (1.0 - ac)
        # invariants: abar decreases in (0, 1]; the posterior at index 0 is exactly x_0 (no noise); the
        # posterior mean keeps the mean of q(x_{t-1}|x_0): coef1 + coef2 sqrt(abar_t) = sqrt(abar_{t-1});
        # posterior variances lie in [0, beta_t].
        assert (ac > 0).all() and (np.diff(ac) < 0).all()
        assert post_var[0] == 0.0 and coef2[0] == 0.0
        assert np.allclose(coef1 + coef2 * np.sqrt(ac), np.sqrt(ac_prev), rtol=0, atol=1e-12)
        assert (post_var >= 0).all() and (post_var <= betas + 1e-15).all()
        return cls(betas=_frozen(betas), alphas_cumprod=_frozen(ac), alphas_cumprod_prev=_frozen(ac_prev),
                   sqrt_alphas_cumprod=_frozen(np.sqrt(ac)), sqrt_one_minus_alphas_cumprod=_frozen(np.sqrt(1.0 - ac)),
                   sqrt_recip_alphas_cumprod=_frozen(np.sqrt(1.0 / ac)),
                   sqrt_recipm1_alphas_cumprod=_frozen(np.sqrt(1.0 / ac - 1)),
                   posterior_variance=_frozen(post_var),
                   posterior_log_variance_clipped=_frozen(np.log(np.maximum(post_var, 1e-20))),
                   posterior_mean_coef1=_frozen(coef1), posterior_mean_coef2=_frozen(coef2),
                   timesteps=np.array(timesteps, copy=True), base_T=int(base_T or n))


def make_schedule(T: int = 100, beta_schedule: str = "cosine", s: float = 0.008) -> DDPMSchedule:
    """The schedule of a config (SRDiff: cosine, T = 100, s = 0.008)."""
    if beta_schedule != "cosine":
        raise ValueError(f"only the cosine beta schedule is implemented, not {beta_schedule!r}")
    return DDPMSchedule.from_betas(cosine_beta_schedule(T, s))


def respaced_timesteps(T: int, n: int) -> list[int]:
    """The n original timesteps kept when sampling with n of T steps: evenly spread, always ending at
    T-1 (the start from noise) and, for n >= 2, beginning at 0 (the final, noiseless step)."""
    T, n = int(T), int(n)
    if not 1 <= n <= T:
        raise ValueError(f"steps must be in 1..{T}, got {n}")
    if n == 1:
        return [T - 1]
    return sorted({int(round(i * (T - 1) / (n - 1))) for i in range(n)})


def respace(base: DDPMSchedule, n_or_timesteps: Union[int, Sequence[int]]) -> DDPMSchedule:
    """A schedule that visits only the given original timesteps (or n evenly spread ones).

    abar at each kept timestep is unchanged; beta_k = 1 - abar_{S_k} / abar_{S_{k-1}} (abar before
    the first = 1), so q(x_t | x_0) is the same process, sampled more coarsely.  Keeping every
    timestep returns `base` itself.
    """
    if base.timesteps.shape[0] != base.base_T or not np.array_equal(base.timesteps, np.arange(base.base_T)):
        raise ValueError("respace a base (unrespaced) schedule")
    if isinstance(n_or_timesteps, (int, np.integer)):
        keep = respaced_timesteps(base.base_T, int(n_or_timesteps))
    else:
        keep = sorted({int(t) for t in n_or_timesteps})
        if not keep or keep[0] < 0 or keep[-1] >= base.base_T:
            raise ValueError(f"timesteps must lie in 0..{base.base_T - 1}")
    if keep == list(range(base.base_T)):
        return base
    ac = base.alphas_cumprod[keep]
    betas = 1.0 - ac / np.append(1.0, ac[:-1])
    return DDPMSchedule.from_betas(betas, timesteps=keep, base_T=base.base_T)


# --------------------------------------------------------------------------------------------
# per-step maths


def _f32(v: float) -> float:
    """A schedule constant rounded to float32 (the official buffers are float32)."""
    return float(np.float32(v))


def _coef(arr: np.ndarray, k: Union[int, torch.Tensor], like: torch.Tensor):
    if isinstance(k, torch.Tensor):
        v = torch.from_numpy(np.asarray(arr, dtype=np.float32)).to(like.device)[k.to(like.device).long()]
        return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))
    return _f32(arr[int(k)])


def q_sample(x0: torch.Tensor, schedule: DDPMSchedule, k: Union[int, torch.Tensor], noise: torch.Tensor) -> torch.Tensor:
    """x_t = sqrt(abar_k) x_0 + sqrt(1 - abar_k) eps: a draw of q(x_t | x_0) at schedule index k (eq. 4)."""
    return _coef(schedule.sqrt_alphas_cumprod, k, x0) * x0 + _coef(schedule.sqrt_one_minus_alphas_cumprod, k, x0) * noise


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, schedule: DDPMSchedule, k: Union[int, torch.Tensor],
               clip: bool = True) -> torch.Tensor:
    """x_0 = sqrt(1/abar_k) x_t - sqrt(1/abar_k - 1) eps, clamped to [-1, 1] when `clip` (official)."""
    x0 = _coef(schedule.sqrt_recip_alphas_cumprod, k, x_t) * x_t - _coef(schedule.sqrt_recipm1_alphas_cumprod, k, x_t) * eps
    return x0.clamp(-1.0, 1.0) if clip else x0


def q_posterior(x0: torch.Tensor, x_t: torch.Tensor, schedule: DDPMSchedule, k: int) -> tuple[torch.Tensor, float]:
    """(mean, sigma) of q(x_{t-1} | x_t, x_0) at index k: mean = coef1 x_0 + coef2 x_t, sigma =
    exp(0.5 log(max(var, 1e-20))) (eqs. 6-7; sigma is 0 in effect at k = 0, where no noise is added)."""
    mean = _coef(schedule.posterior_mean_coef1, k, x_t) * x0 + _coef(schedule.posterior_mean_coef2, k, x_t) * x_t
    logvar = np.float32(schedule.posterior_log_variance_clipped[int(k)])
    return mean, float(np.exp(np.float32(0.5) * logvar, dtype=np.float32))


def _t_tensor(schedule: DDPMSchedule, k: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((like.shape[0],), int(schedule.timesteps[int(k)]), dtype=torch.long, device=like.device)


def p_sample(denoise_fn: DenoiseFn, x_t: torch.Tensor, schedule: DDPMSchedule, k: int,
             noise: Optional[torch.Tensor], *, clip_denoised: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step at index k: (x_{t-1}, x0_pred).

    Stages (official `p_sample`): (1) eps = denoise_fn(x_t, S_k); (2) x0_pred from eq. 5, clamped;
    (3) posterior mean; (4) x_{t-1} = mean + sigma_k z for k > 0.  At k = 0 the result is the mean,
    which equals the clamped x0_pred (coef1 = 1, coef2 = 0); the official code draws z there too and
    masks it out, so its random stream advances once more per run; no noise is taken here.
    """
    eps = denoise_fn(x_t, _t_tensor(schedule, k, x_t))
    if tuple(eps.shape) != tuple(x_t.shape):
        raise ValueError(f"denoise_fn returned {tuple(eps.shape)} for an input of {tuple(x_t.shape)}")
    x0 = predict_x0(x_t, eps.to(x_t.dtype), schedule, k, clip_denoised)
    mean, sigma = q_posterior(x0, x_t, schedule, k)
    if k == 0:
        return mean, x0
    if noise is None:
        raise ValueError(f"step {k} needs noise")
    return mean + sigma * noise.to(device=mean.device, dtype=mean.dtype), x0


class NoiseSource:
    """Hands out the noise of key k (see NoiseArg): given tensors/callable first, else the generator."""

    def __init__(self, noise: NoiseArg, generator: Optional[torch.Generator], N: int):
        self.noise, self.generator, self.N = noise, generator, N

    def __call__(self, k: int, like: torch.Tensor) -> torch.Tensor:
        n = None
        if callable(self.noise):
            n = self.noise(k)
        elif self.noise is not None:
            i = self.N - k
            n = self.noise[i] if i < len(self.noise) else None
        if n is None:
            if self.generator is None:
                raise ValueError("the sampler needs noise: pass a torch.Generator or explicit noise")
            # drawn on the generator's device (CPU by convention): results do not depend on the model's device
            n = torch.randn(tuple(like.shape), generator=self.generator, dtype=torch.float32,
                            device=self.generator.device)
        if tuple(n.shape) != tuple(like.shape):
            raise ValueError(f"noise {k} has shape {tuple(n.shape)}, expected {tuple(like.shape)}")
        return n.to(device=like.device, dtype=like.dtype)


def reverse_chain(denoise_fn: DenoiseFn, x: torch.Tensor, schedule: DDPMSchedule, *, start: Optional[int] = None,
                  end: int = 0, noise: NoiseArg = None, generator: Optional[torch.Generator] = None,
                  callback: Optional[Callback] = None, clip_denoised: bool = True) -> torch.Tensor:
    """Run the ancestral steps k = start, start-1, ..., end on x (the input of step `start`).

    Returns the output of step `end`: with end = 0 the sample x_0, otherwise the input of step end-1,
    so `reverse_chain(..., start=N-1, end=j+1)` followed by `reverse_chain(..., start=j)` equals one
    full run when the noise is keyed (callable or sequence).  `callback({"i", "k", "t", "x_t",
    "x0_pred", "x_prev"})` after every step (i counts the steps of this call).
    """
    N = schedule.N
    start = N - 1 if start is None else int(start)
    end = int(end)
    if not 0 <= end <= start < N:
        raise ValueError(f"need 0 <= end <= start < {N}, got start={start}, end={end}")
    draw = NoiseSource(noise, generator, N)
    for i, k in enumerate(range(start, end - 1, -1)):
        x_prev, x0 = p_sample(denoise_fn, x, schedule, k, draw(k, x) if k > 0 else None,
                              clip_denoised=clip_denoised)
        if callback is not None:
            callback({"i": i, "k": k, "t": int(schedule.timesteps[k]), "x_t": x, "x0_pred": x0, "x_prev": x_prev})
        x = x_prev
    return x


def sample(denoise_fn: DenoiseFn, shape: Sequence[int], schedule: DDPMSchedule, *, noise: NoiseArg = None,
           generator: Optional[torch.Generator] = None, callback: Optional[Callback] = None,
           clip_denoised: bool = True, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """DDPM ancestral sampling from x_T ~ N(0, I) (official `GaussianDiffusion.sample`): N network calls.

    The prior noise is key N (entry 0 of a sequence); step noise as in `reverse_chain`.
    """
    like = torch.empty(tuple(int(s) for s in shape), device=device, dtype=dtype)
    x = NoiseSource(noise, generator, schedule.N)(schedule.N, like)
    return reverse_chain(denoise_fn, x, schedule, noise=noise, generator=generator, callback=callback,
                         clip_denoised=clip_denoised)
