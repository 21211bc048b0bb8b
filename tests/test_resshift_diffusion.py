"""ResShift / SinSR diffusion math: schedule values, identities, Monte Carlo marginals, official parity.

The official numbers below were computed with the official `get_named_eta_schedule` (ResShift and
SinSR repositories) in a scratch environment; `fixtures/resshift_sampler_parity.pt` holds inputs,
noises and outputs of the official `p_sample_loop` / `ddim_sample_loop` / `one_step` run with a fixed
stand-in denoiser (the script that made it lives outside the project).
"""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sr_core.diffusion import resshift as rs

FIXTURE = Path(__file__).parent / "fixtures" / "resshift_sampler_parity.pt"

# eta_t of the released configs, from the official function (float64 repr)
OFFICIAL_ETAS_V1 = [  # T=15, kappa=2, min_noise_level=0.04, p=0.3 (resshift v1/v2, SinSR)
    0.0004, 0.013727656509996357, 0.031083296209604004, 0.054582470648014754, 0.08501547198152469,
    0.12320751767695402, 0.17003758974235847, 0.2264405800753676, 0.293408206343222, 0.37199012692012223,
    0.4632953363018959, 0.5684937760589751, 0.6888181020372705, 0.8255655679251032, 0.9800999999999995]
OFFICIAL_ETAS_V3 = [  # T=4, kappa=2, min_noise_level=0.2, p=0.3 (resshift v3, bicsr)
    0.010000000000000002, 0.27050023638417986, 0.5797025356392617, 0.9800999999999995]
OFFICIAL_ETAS_V3_SINSR_CAP = [  # the same config through SinSR's copy (sqrt(eta_1) capped at sqrt(0.001))
    0.0009999999999999998, 0.14170681674179833, 0.44532050540686646, 0.9801000000000006]


def test_schedule_matches_official_values():
    np.testing.assert_allclose(rs.eta_schedule(15, 2.0, 0.04, 0.3), OFFICIAL_ETAS_V1, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rs.eta_schedule(4, 2.0, 0.2, 0.3), OFFICIAL_ETAS_V3, rtol=0, atol=1e-12)
    np.testing.assert_allclose(rs.eta_schedule(4, 2.0, 0.2, 0.3, start_cap=math.sqrt(0.001)),
                               OFFICIAL_ETAS_V3_SINSR_CAP, rtol=0, atol=1e-12)
    # SinSR's cap does not bind for its released (v1-like) config
    np.testing.assert_array_equal(rs.eta_schedule(15, 2.0, 0.04, 0.3, start_cap=math.sqrt(0.001)),
                                  rs.eta_schedule(15, 2.0, 0.04, 0.3))


def test_schedule_hand_computed_T4():
    # sqrt(eta_1) = min(0.2/2, 0.2) = 0.1, sqrt(eta_T) = 0.99, geometric on the warped axis (t/3)^0.5 * 3
    T, kappa, mn, p = 4, 2.0, 0.2, 0.5
    b = (0.99 / 0.1) ** (1 / 3)
    want = [(0.1 * b ** (((t / 3) ** p) * 3)) ** 2 for t in range(4)]
    got = rs.eta_schedule(T, kappa, mn, p)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-13)
    assert got[0] == pytest.approx(0.01) and got[-1] == pytest.approx(0.9801)
    s = rs.make_schedule(T, kappa, mn, p)
    assert s.T == 4 and s.etas_prev[0] == 0 and s.posterior_variance[0] == 0
    np.testing.assert_allclose(s.alpha, np.diff(np.r_[0.0, want]))
    np.testing.assert_allclose(s.posterior_variance[1:], kappa ** 2 * np.array(want[:-1]) / want[1:] * s.alpha[1:])
    with pytest.raises(ValueError):
        s.etas[0] = 1.0  # schedules are read-only


def test_schedule_rejects_bad_parameters():
    with pytest.raises(ValueError):
        rs.eta_schedule(1, 2.0, 0.04, 0.3)
    with pytest.raises(ValueError):
        rs.eta_schedule(15, 0.0, 0.04, 0.3)
    with pytest.raises(AssertionError):
        rs.ResShiftSchedule.from_sqrt_etas([0.5, 0.4], 2.0)  # not increasing


def test_sinsr_coefficients_identities():
    s = rs.make_schedule(15, 2.0, 0.04, 0.3)
    for t in range(s.T):
        k, m, j = rs.sinsr_coefficients(s, t)
        e, ep = s.etas[t], s.etas_prev[t]
        assert k + m + j == pytest.approx(1.0, abs=1e-14)
        assert m == pytest.approx(math.sqrt(ep / e))
        assert j == pytest.approx(ep - math.sqrt(ep * e))
    assert rs.sinsr_coefficients(s, 0) == (1.0, 0.0, 0.0)


def test_perfect_predictor_recovers_x0_deterministic():
    """With x0_hat = x0, SinSR's sampler maps x_T to x0 exactly (for any x_T)."""
    s = rs.make_schedule(15, 2.0, 0.04, 0.3)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    out = rs.sample_sinsr_ddim(lambda x, t: x0, y, s, generator=g)
    torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    # started on q(x_T|x0,y) (x_T = x0 + eta_T (y - x0) + kappa sqrt(eta_T) eps), every state is the
    # forward marginal's sample with the same eps
    eps = torch.randn(2, 3, 8, 8, generator=g, dtype=torch.float64)
    eps_prior = eps + (1 - s.etas[-1]) * (x0 - y) / (s.kappa * s.sqrt_etas[-1])
    states = []
    rs.sample_sinsr_ddim(lambda x, t: x0, y, s, noise=[eps_prior], callback=lambda d: states.append(d))
    for d in states:
        t = d["t"]
        torch.testing.assert_close(d["x_t"], rs.q_sample(x0, y, s, t, eps), rtol=0, atol=1e-12)
        if t > 0:
            torch.testing.assert_close(d["x_prev"], rs.q_sample(x0, y, s, t - 1, eps), rtol=0, atol=1e-12)


def test_posterior_at_first_index_returns_x0_and_stochastic_sampler_ends_on_x0():
    s = rs.make_schedule(4, 2.0, 0.2, 0.3)
    x0 = torch.full((1, 1, 2, 2), 0.3, dtype=torch.float64)
    xt = torch.full((1, 1, 2, 2), -5.0, dtype=torch.float64)
    mean, var = rs.q_posterior(x0, xt, s, 0)
    assert var == 0.0
    torch.testing.assert_close(mean, x0)
    out = rs.sample_resshift(lambda x, t: x0, torch.zeros_like(x0), s, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(out, x0)  # last step is noiseless and its mean is x0


def test_posterior_tensor_t_matches_int_t():
    s = rs.make_schedule(15, 2.0, 0.04, 0.3)
    x0, xt = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([0, 5, 14])
    mean, var = rs.q_posterior(x0, xt, s, t)
    for b in range(3):
        m_b, v_b = rs.q_posterior(x0[b:b + 1], xt[b:b + 1], s, int(t[b]))
        torch.testing.assert_close(mean[b:b + 1], m_b)
        assert float(var[b]) == pytest.approx(v_b, rel=1e-6)
    torch.testing.assert_close(rs.scale_input(xt, s, t)[1], xt[1] / math.sqrt(4 * s.etas[5] + 1))


def test_stochastic_step_preserves_marginals_monte_carlo():
    """x_t ~ q(x_t|x0,y) then x_{t-1} ~ q(x_{t-1}|x_t,x0) gives q(x_{t-1}|x0,y) (1-D, many draws)."""
    s = rs.make_schedule(15, 2.0, 0.04, 0.3)
    g = torch.Generator().manual_seed(123)
    n = 200_000
    x0, y = torch.full((n,), 0.25, dtype=torch.float64), torch.full((n,), -0.5, dtype=torch.float64)
    t = 9
    xt = rs.q_sample(x0, y, s, t, torch.randn(n, generator=g, dtype=torch.float64))
    mean, var = rs.q_posterior(x0, xt, s, t)
    xprev = mean + math.sqrt(var) * torch.randn(n, generator=g, dtype=torch.float64)
    want_mean = 0.25 + s.etas[t - 1] * (-0.75)
    want_std = 2.0 * s.sqrt_etas[t - 1]
    assert float(xprev.mean()) == pytest.approx(want_mean, abs=4 * want_std / math.sqrt(n))
    assert float(xprev.std()) == pytest.approx(want_std, rel=0.01)
    # the deterministic step (true x0) keeps the same marginal
    k, m, j = rs.sinsr_coefficients(s, t)
    xdet = k * x0 + m * xt + j * y
    assert float(xdet.mean()) == pytest.approx(want_mean, abs=4 * want_std / math.sqrt(n))
    assert float(xdet.std()) == pytest.approx(want_std, rel=0.01)


def test_prior_and_scale_input():
    s = rs.make_schedule(15, 2.0, 0.04, 0.3)
    y, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
    torch.testing.assert_close(rs.prior_sample(y, s, eps), y + 2.0 * 0.99 * eps)
    torch.testing.assert_close(rs.scale_input(y, s, 14), y / math.sqrt(4 * 0.9801 + 1))
    s2 = rs.make_schedule(15, 2.0, 0.04, 0.3, normalize_input=False)
    assert rs.scale_input(y, s2, 14) is y


def test_sampler_call_counts_timesteps_and_generator():
    s = rs.make_schedule(4, 2.0, 0.2, 0.3)
    y = torch.zeros(2, 3, 4, 4)
    for fn, want in [(rs.sample_resshift, [3, 2, 1, 0]), (rs.sample_sinsr_ddim, [3, 2, 1, 0]), (rs.one_step, [3])]:
        seen = []

        def den(x, t):
            assert t.dtype == torch.long and t.shape == (2,)
            seen.append(int(t[0]))
            return 0.9 * x

        a = fn(den, y, s, generator=torch.Generator().manual_seed(7))
        assert seen == want
        b = fn(lambda x, t: 0.9 * x, y, s, generator=torch.Generator().manual_seed(7))
        c = fn(lambda x, t: 0.9 * x, y, s, generator=torch.Generator().manual_seed(8))
        torch.testing.assert_close(a, b)
        assert not torch.allclose(a, c)
    with pytest.raises(ValueError, match="Generator"):
        rs.sample_resshift(lambda x, t: x, y, s)
    with pytest.raises(ValueError, match="shape"):
        rs.one_step(lambda x, t: x, y, s, noise=torch.zeros(1, 3, 4, 4))


@pytest.fixture(scope="module")
def fixture():
    return torch.load(FIXTURE, weights_only=True)


def _standin(lq):
    """The fixed denoiser the fixture was made with (x is the scaled x_t)."""
    def fn(x, t):
        up = lq.repeat_interleave(x.shape[-2] // lq.shape[-2], -2).repeat_interleave(x.shape[-1] // lq.shape[-1], -1)
        tt = t.to(x.dtype).view(-1, 1, 1, 1)
        return 0.5 * x + 0.1 * torch.sin(0.7 * tt + 0.3) + 0.2 * torch.tanh(up) - 0.05 * x * x
    return fn


def test_official_parity_upsampler(fixture):
    # the official pipeline upsamples the LR in [-1, 1] with torch bicubic before encoding
    z_y = F.interpolate(fixture["y_lr"], scale_factor=4, mode="bicubic")
    torch.testing.assert_close(z_y, fixture["z_y"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,T,mn", [("v1", 15, 0.04), ("v3", 4, 0.2)])
def test_official_parity_resshift_sampler(fixture, name, T, mn):
    s = rs.make_schedule(T, 2.0, mn, 0.3)
    lq, z_y = fixture["y_lr"], fixture["z_y"]
    steps = fixture[f"resshift_{name}_step_noise"]
    noise = [fixture[f"resshift_{name}_prior_noise"]] + [steps[i] for i in range(T - 1)]  # official's last is masked
    ts = []
    fn = _standin(lq)
    out = rs.sample_resshift(lambda x, t: (ts.append(t), fn(x, t))[1], z_y, s, noise=noise)
    assert (out - fixture[f"resshift_{name}_out"]).abs().max().item() <= 1e-4
    assert torch.equal(torch.stack(ts), fixture[f"resshift_{name}_ts"])


def test_official_parity_sinsr_samplers(fixture):
    s = rs.make_schedule(15, 2.0, 0.04, 0.3, start_cap=math.sqrt(0.001))
    lq, z_y = fixture["y_lr"], fixture["z_y"]
    eps = fixture["sinsr_v1_prior_noise"]
    fn = _standin(lq)
    ts = []
    out = rs.sample_sinsr_ddim(lambda x, t: (ts.append(t), fn(x, t))[1], z_y, s, noise=eps)
    assert (out - fixture["sinsr_ddim_v1_out"]).abs().max().item() <= 1e-4
    assert torch.equal(torch.stack(ts), fixture["sinsr_ddim_v1_ts"])
    ts.clear()
    out1 = rs.one_step(lambda x, t: (ts.append(t), fn(x, t))[1], z_y, s, noise=[eps])
    assert (out1 - fixture["sinsr_onestep_v1_out"]).abs().max().item() <= 1e-4
    assert torch.equal(torch.stack(ts), fixture["sinsr_onestep_v1_ts"])
