"""StableSR's diffusion process and its tiled "aggregation" sampler, as pure functions.

StableSR (Wang et al., IJCV 2024; official IceClear/StableSR) samples the Stable Diffusion latent
DDPM: the LDM "linear" schedule (`make_beta_schedule("linear")` in ldm/modules/diffusionmodules/util.py:
beta_t = (linspace(sqrt(0.00085), sqrt(0.012), 1000))^2), respaced to N steps the way
scripts/sr_val_ddpm_text_T_vqganfin_oldcanvas_tile.py does it (`space_timesteps(1000, [N])`: N
timesteps evenly spread over 0..999 by accumulating a fractional stride and rounding; new betas
beta_k = 1 - abar_{S_k} / abar_{S_{k-1}}, then `register_schedule(given_betas=...)` of
ldm/models/diffusion/ddpm.py).  At schedule index k the UNet and the time-aware struct encoder receive
the *original* timestep S_k (`t_replace = ori_timesteps[i]`), while x0 and the posterior use the
respaced constants at index k.  The sampler is `LatentDiffusionSRTextWT.p_sample_loop_canvas /
p_sample_canvas / p_mean_variance_canvas` (same file): at every step the latent is cut into square
tiles (stride tile - overlap, last tile aligned to the far edge), the model output of every tile is
blended with the Gaussian window of `_gaussian_weights` (sum of w * out / sum of w), then
x0 = sqrt(1/abar) x - sqrt(1/abar - 1) eps (or sqrt(abar) x - sqrt(1-abar) v), no clipping
(`clip_denoised=False`), the posterior mean coef1 x0 + coef2 x, and noise exp(0.5 log max(var, 1e-20)) z
except at the last step (the fixed small posterior variance).  Schedules are float64 (asserted once in
`DDPMSchedule.from_betas`) and each constant is cast to float32 where used, like the official float32
buffers (the official script computes the respaced betas from the float32 buffer, a difference of
~1e-7 relative).  The code is ours.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Sequence, Union

import numpy as np
import torch

from .ddpm import DDPMSchedule

__all__ = ["sd_betas", "sd_schedule", "space_timesteps", "respace", "q_sample", "gaussian_weights",
           "tile_offsets", "TileBox", "plan_tiles", "canvas_sample", "ModelFn", "NoiseFn"]

# model_fn(x_tile, t_model, box) -> eps (or v) of the tile; t_model: (B,) int64 original timesteps.
ModelFn = Callable[[torch.Tensor, torch.Tensor, "TileBox"], torch.Tensor]
# noise_fn(k, shape) -> the noise added by the step at schedule index k (called for k = N-1 .. 1).
NoiseFn = Callable[[int, tuple], torch.Tensor]


def sd_betas(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> np.ndarray:
    """The LDM "linear" schedule (float64): (linspace(sqrt(start), sqrt(end), T))^2.

    Official: ldm/modules/diffusionmodules/util.py `make_beta_schedule("linear")` (computed there in
    float64 with torch.linspace, then .numpy()).
    """
    T = int(timesteps)
    if T < 1:
        raise ValueError(f"timesteps must be >= 1, got {T}")
    return np.linspace(math.sqrt(linear_start), math.sqrt(linear_end), T, dtype=np.float64) ** 2


def sd_schedule(timesteps: int = 1000, linear_start: float = 0.00085, linear_end: float = 0.012) -> DDPMSchedule:
    """The unrespaced SD schedule (the one `q_sample` of x_T uses in the official script)."""
    return DDPMSchedule.from_betas(sd_betas(timesteps, linear_start, linear_end))


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The sorted original timesteps kept when sampling with `count` of `num_timesteps` steps.

    As `space_timesteps(num_timesteps, [count])` of the official sampling scripts (one section):
    stride (T-1)/(count-1) accumulated as a float and rounded (Python's round, ties to even); a count
    of 1 keeps timestep 0 (stride 1).  The last kept timestep is T-1 for count >= 2.
    """
    T, n = int(num_timesteps), int(count)
    if not 1 <= n <= T:
        raise ValueError(f"cannot divide {T} timesteps into {n} steps")
    stride = 1 if n <= 1 else (T - 1) / (n - 1)
    cur, out = 0.0, []
    for _ in range(n):
        out.append(round(cur))
        cur += stride
    return sorted(set(out))


def respace(betas: Union[np.ndarray, Sequence[float]], n: int) -> DDPMSchedule:
    """The schedule the official model samples with after respacing `betas` to `n` steps.

    Kept timesteps S = `space_timesteps(T, n)`; beta_k = 1 - abar_{S_k} / abar_{S_{k-1}} (abar before
    the first = 1), so abar at every kept timestep is unchanged; `schedule.timesteps[k]` = S_k is the
    timestep the UNet and struct encoder receive at index k (official `ori_timesteps`).  `n = T`
    returns the unrespaced schedule (the official `time_replace == 1000` case: t_model = k = S_k).
    """
    betas = np.asarray(betas, dtype=np.float64)
    T = int(betas.shape[0])
    keep = space_timesteps(T, n)
    ac = np.cumprod(1.0 - betas)[keep]
    new_betas = 1.0 - ac / np.append(1.0, ac[:-1])
    return DDPMSchedule.from_betas(new_betas, timesteps=keep, base_T=T)


def _c(arr: np.ndarray, k: int) -> float:
    """Schedule constant k rounded to float32 (the official buffers are float32)."""
    return float(np.float32(arr[int(k)]))


def q_sample(x0: torch.Tensor, schedule: DDPMSchedule, k: int, noise: torch.Tensor) -> torch.Tensor:
    """sqrt(abar_k) x0 + sqrt(1 - abar_k) noise at index k of `schedule`.

    The official script starts from `q_sample_respace(init_latent, t=999, <unrespaced sqrt buffers>)`,
    i.e. `q_sample(z_lr, sd_schedule(), 999, noise)` (equal to the respaced schedule's last index).
    """
    return _c(schedule.sqrt_alphas_cumprod, k) * x0 + _c(schedule.sqrt_one_minus_alphas_cumprod, k) * noise


def gaussian_weights(tile_h: int, tile_w: int) -> torch.Tensor:
    """The official tile window (`_gaussian_weights` in ddpm.py), (tile_h, tile_w) float64.

    w(y, x) = g((y - tile_h/2) / tile_h) * g((x - (tile_w-1)/2) / tile_w) with
    g(u) = exp(-u^2 / (2 * 0.01)) / sqrt(2 pi 0.01): a Gaussian of variance 0.01 in tile-normalised
    units (std = tile/10).  The official code centres x at (w-1)/2 but y at h/2 (kept as is: the
    window is half a pixel off-centre vertically).  Only ratios of weights matter for blending.
    """
    var = 0.01
    norm = math.sqrt(2 * math.pi * var)
    xs = np.arange(tile_w, dtype=np.float64)
    ys = np.arange(tile_h, dtype=np.float64)
    mx, my = (tile_w - 1) / 2, tile_h / 2
    px = np.exp(-(xs - mx) * (xs - mx) / (tile_w * tile_w) / (2 * var)) / norm
    py = np.exp(-(ys - my) * (ys - my) / (tile_h * tile_h) / (2 * var)) / norm
    return torch.from_numpy(np.outer(py, px))


def tile_offsets(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis, as the official `p_mean_variance_canvas`.

    Tiles are added until one reaches `size` (tile j covers [j*(tile-overlap), ... + tile)); the last
    tile is then moved to end exactly at the edge (offset size - tile).  Needs tile <= size.
    """
    size, tile, overlap = int(size), int(tile), int(overlap)
    if not 0 <= overlap < tile:
        raise ValueError(f"need 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if tile > size:
        raise ValueError(f"tile {tile} is larger than the latent ({size})")
    n, cur = 0, 0
    while cur < size:
        cur = max(n * tile - overlap * n, 0) + tile
        n += 1
    return [j * (tile - overlap) for j in range(n - 1)] + [size - tile]


class TileBox(NamedTuple):
    """A latent tile: rows y0:y1, columns x0:x1."""

    y0: int
    y1: int
    x0: int
    x1: int

    def crop(self, t: torch.Tensor) -> torch.Tensor:
        return t[..., self.y0:self.y1, self.x0:self.x1]


def plan_tiles(h: int, w: int, tile: int, overlap: int) -> list[TileBox]:
    """All tiles of an h x w latent in the official order (columns outer, rows inner).

    A side smaller than `tile` gets one tile of its full length (the official code needs the latent
    to be at least one tile; its script guarantees it by upscaling the short side to >= 512 px).
    """
    th, tw = min(int(tile), int(h)), min(int(tile), int(w))
    ov_h, ov_w = min(int(overlap), th - 1), min(int(overlap), tw - 1)
    return [TileBox(y, y + th, x, x + tw)
            for x in tile_offsets(w, tw, max(ov_w, 0)) for y in tile_offsets(h, th, max(ov_h, 0))]


def canvas_sample(model_fn: ModelFn, x_T: torch.Tensor, schedule: DDPMSchedule, *, tile: int = 64,
                  overlap: int = 32, noise_fn: NoiseFn, parameterization: str = "eps",
                  callback: Optional[Callable[[dict], None]] = None) -> torch.Tensor:
    """StableSR's aggregation sampler: all N steps of `schedule` from x_T, model run per latent tile.

    Per step at index k = N-1 .. 0 (official `p_sample_loop_canvas` -> `p_sample_canvas` ->
    `p_mean_variance_canvas`):
      1. t_model = S_k (original timestep) for every batch element;
      2. for every tile box b of `plan_tiles`: out_b = model_fn(x[b], t_model, b) — the method runs the
         time-aware encoder on z_lr[b] at t_model and the UNet on x[b] (official: the struct encoder
         sees `cond_list` = the same crop of the LR latent, at `t_in = t_replace`);
      3. out = sum_b w * out_b / sum_b w with w = `gaussian_weights(tile_h, tile_w)`;
      4. x0 = sqrt(1/abar_k) x - sqrt(1/abar_k - 1) out  ("eps"), or sqrt(abar_k) x - sqrt(1-abar_k) out
         ("v"); not clipped;
      5. mean = coef1_k x0 + coef2_k x;  x <- mean + exp(0.5 * log max(var_k, 1e-20)) * noise_fn(k, shape)
         for k > 0, x <- mean at k = 0.
    `callback({"k", "t", "x_t", "x0_pred", "model_out", "x_prev"})` after every step.  Returns x at the
    end of the chain (the latent to decode, scaled by the SD scale factor as the UNet sees it).
    """
    if parameterization not in ("eps", "v"):
        raise ValueError(f"parameterization must be 'eps' or 'v', got {parameterization!r}")
    if x_T.dim() != 4:
        raise ValueError(f"x_T must be (B, C, H, W), got {tuple(x_T.shape)}")
    B, _, H, W = x_T.shape
    boxes = plan_tiles(H, W, tile, overlap)
    th, tw = boxes[0].y1 - boxes[0].y0, boxes[0].x1 - boxes[0].x0
    wts = gaussian_weights(th, tw).to(device=x_T.device)
    # sum of the weights that cover each pixel (float64), the same at every step
    contributors = torch.zeros((H, W), dtype=torch.float64, device=x_T.device)
    for b in boxes:
        b.crop(contributors).add_(wts)
    x = x_T
    for k in range(schedule.N - 1, -1, -1):
        t_model = torch.full((B,), int(schedule.timesteps[k]), dtype=torch.long, device=x.device)
        acc = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
        for b in boxes:
            out_b = model_fn(b.crop(x), t_model, b)
            if tuple(out_b.shape) != tuple(b.crop(x).shape):
                raise ValueError(f"model_fn returned {tuple(out_b.shape)} for a tile of {tuple(b.crop(x).shape)}")
            b.crop(acc).add_(out_b.to(torch.float64) * wts)
        out = (acc / contributors).to(x.dtype)
        if parameterization == "eps":
            x0 = _c(schedule.sqrt_recip_alphas_cumprod, k) * x - _c(schedule.sqrt_recipm1_alphas_cumprod, k) * out
        else:
            x0 = _c(schedule.sqrt_alphas_cumprod, k) * x - _c(schedule.sqrt_one_minus_alphas_cumprod, k) * out
        mean = _c(schedule.posterior_mean_coef1, k) * x0 + _c(schedule.posterior_mean_coef2, k) * x
        if k > 0:
            noise = noise_fn(k, tuple(x.shape))
            if tuple(noise.shape) != tuple(x.shape):
                raise ValueError(f"noise_fn({k}) gave {tuple(noise.shape)}, expected {tuple(x.shape)}")
            sigma = float(np.exp(np.float32(0.5) * np.float32(schedule.posterior_log_variance_clipped[k]),
                                 dtype=np.float32))
            x_prev = mean + sigma * noise.to(device=mean.device, dtype=mean.dtype)
        else:
            x_prev = mean
        if callback is not None:
            callback({"k": k, "t": int(schedule.timesteps[k]), "x_t": x, "x0_pred": x0, "model_out": out,
                      "x_prev": x_prev})
        x = x_prev
    return x
