"""mbpo_grad.returns against NumPy references written from the forward-view definitions.

``discounts[t] = γ (1 − terminal_{t+1})``: a zero ends the episode inside the window.
The references do not use the backward recursions the library implements:
* reward-to-go  G_t = Σ_{j≥t} (Π_{t≤i<j} d_i) r_j
* λ-return      G^λ_t = (1−λ) Σ_{k=1}^{T−t−1} λ^{k−1} G^{(k)}_t + λ^{T−t−1} G^{(T−t)}_t,
  with the k-step return G^{(k)}_t = Σ_{j<k} (Π_{i<j} d_{t+i}) r_{t+j} + (Π_{i<k} d_{t+i}) v_{t+k}
* GAE           A_t = Σ_l (Π_{i<l} λ d_{t+i}) δ_{t+l},  δ_t = r_t + d_t v_{t+1} − v_t
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import returns

T = 7
GAMMA = 0.9


def _data(seed, terminal_at=None):
    rng = np.random.default_rng(seed)
    r = rng.standard_normal(T).astype(np.float32)
    v = rng.standard_normal(T + 1).astype(np.float32)
    d = np.full(T, GAMMA, np.float32)
    if terminal_at is not None:  # the episode terminates at state terminal_at + 1
        d[terminal_at] = 0.0
    return r, v, d


def ref_reward_to_go(r, d):
    out = np.zeros(len(r))
    for t in range(len(r)):
        disc = 1.0
        for j in range(t, len(r)):
            out[t] += disc * r[j]
            disc *= d[j]
    return out


def ref_k_step(r, v, d, t, k):
    g, disc = 0.0, 1.0
    for j in range(k):
        g += disc * r[t + j]
        disc *= d[t + j]
    return g + disc * v[t + k]


def ref_td_lambda(r, v, d, lam):
    n = len(r)
    out = np.zeros(n)
    for t in range(n):
        m = n - t
        out[t] = sum((1 - lam) * lam ** (k - 1) * ref_k_step(r, v, d, t, k) for k in range(1, m))
        out[t] += lam ** (m - 1) * ref_k_step(r, v, d, t, m)
    return out


def ref_gae(r, v, d, lam):
    delta = r + d * v[1:] - v[:-1]
    out = np.zeros(len(r))
    for t in range(len(r)):
        w = 1.0
        for j in range(t, len(r)):
            out[t] += w * delta[j]
            w *= lam * d[j]
    return out


@pytest.mark.parametrize("terminal_at", [None, 3, T - 1])
def test_reward_to_go(terminal_at):
    r, _, d = _data(0, terminal_at)
    np.testing.assert_allclose(returns.reward_to_go(r, d), ref_reward_to_go(r, d), rtol=1e-5, atol=1e-6)


def test_reward_to_go_undiscounted_is_reverse_cumsum():
    r = np.arange(1.0, 6.0, dtype=np.float32)
    np.testing.assert_allclose(returns.reward_to_go(r, np.ones(5, np.float32)), [15, 14, 12, 9, 5])


@pytest.mark.parametrize("terminal_at", [None, 2])
def test_td_lambda_zero_is_one_step_td(terminal_at):
    r, v, d = _data(1, terminal_at)
    np.testing.assert_allclose(returns.td_lambda(r, v, d, 0.0), r + d * v[1:], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("terminal_at", [None, 4])
def test_td_lambda_one_is_bootstrapped_monte_carlo(terminal_at):
    r, v, d = _data(2, terminal_at)
    want = [ref_k_step(r, v, d, t, T - t) for t in range(T)]
    np.testing.assert_allclose(returns.td_lambda(r, v, d, 1.0), want, rtol=1e-5, atol=1e-6)
    if terminal_at is not None:  # no bootstrap and no reward leaks across the terminal
        np.testing.assert_allclose(returns.td_lambda(r, v, d, 1.0)[: terminal_at + 1],
                                   returns.reward_to_go(r[: terminal_at + 1], d[: terminal_at + 1]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("lam", [0.3, 0.95])
@pytest.mark.parametrize("terminal_at", [None, 1, T - 1])
def test_td_lambda_general(lam, terminal_at):
    r, v, d = _data(3, terminal_at)
    np.testing.assert_allclose(returns.td_lambda(r, v, d, lam), ref_td_lambda(r, v, d, lam), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("terminal_at", [None, 3])
def test_gae(lam, terminal_at):
    r, v, d = _data(4, terminal_at)
    adv = returns.gae(r, v, d, lam)
    np.testing.assert_allclose(adv, ref_gae(r, v, d, lam), rtol=1e-5, atol=1e-5)
    # GAE is the λ-return minus the baseline.
    np.testing.assert_allclose(adv + v[:-1], returns.td_lambda(r, v, d, lam), rtol=1e-5, atol=1e-5)


def test_batched_with_traced_lambda():
    """vmap over trajectories and over λ inside one jit (λ is a float hyper-parameter, not static)."""
    rs, vs, ds = zip(*[_data(10 + i, terminal_at=i if i % 2 else None) for i in range(4)])
    rs, vs, ds = np.stack(rs), np.stack(vs), np.stack(ds)
    lams = jnp.array([0.0, 0.7, 1.0])

    @jax.jit
    def targets(lam):
        return jax.vmap(returns.td_lambda, in_axes=(0, 0, 0, None))(rs, vs, ds, lam)

    out = jax.vmap(targets)(lams)
    assert out.shape == (3, 4, T)
    for i, lam in enumerate(np.asarray(lams)):
        for b in range(4):
            np.testing.assert_allclose(out[i, b], ref_td_lambda(rs[b], vs[b], ds[b], float(lam)), rtol=1e-5, atol=1e-5)


def test_empty_window():
    empty, v = np.zeros(0, np.float32), np.array([2.0], np.float32)
    assert returns.reward_to_go(empty, empty).shape == (0,)
    assert returns.td_lambda(empty, v, empty, 0.5).shape == (0,)
    assert returns.gae(empty, v, empty, 0.5).shape == (0,)


def test_mixed_precision_inputs_promote():
    """float32 rewards with float64 values / discounts (x64 on) must not break the scan carry."""
    r, v, d = _data(5, terminal_at=2)
    with jax.enable_x64(True):
        v64, d64 = v.astype(np.float64), d.astype(np.float64)
        for out in (returns.reward_to_go(r, d64), returns.td_lambda(r, v64, d, 0.5), returns.gae(r, v, d64, 0.5)):
            assert out.dtype == jnp.float64
        np.testing.assert_allclose(returns.td_lambda(r, v64, d64, 0.5), ref_td_lambda(r, v, d, 0.5), rtol=1e-6)
