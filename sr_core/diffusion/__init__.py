"""Diffusion schedules and samplers as pure functions (no weights, no UI, no I/O).

`resshift` holds the residual-shifting process of ResShift (Yue et al., NeurIPS 2023; official
`models/gaussian_diffusion.py` of zsyOAOA/ResShift) and the deterministic sampler SinSR derives from
it (Wang et al., CVPR 2024; official `models/gaussian_diffusion.py` of wyf0912/SinSR).  `ddpm` holds the
cosine-schedule DDPM of SRDiff (Li et al., Neurocomputing 2022; official `models/diffusion.py` of
LeiaLi/SRDiff) with epsilon prediction, ancestral sampling and timestep respacing.  Samplers share
one shape: `(denoise_fn, y, schedule, *, generator, noise, callback) -> x0`.
"""

from .resshift import (ResShiftSchedule, eta_schedule, make_schedule, one_step, prior_sample, q_posterior,
                       q_sample, sample_resshift, sample_sinsr_ddim, scale_input, sinsr_coefficients)

__all__ = [
    "ResShiftSchedule",
    "eta_schedule",
    "make_schedule",
    "one_step",
    "prior_sample",
    "q_posterior",
    "q_sample",
    "sample_resshift",
    "sample_sinsr_ddim",
    "scale_input",
    "sinsr_coefficients",
]
