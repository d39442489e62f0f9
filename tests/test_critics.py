"""Critics: networks, twin minimum, Polyak averaging, losses, TD(λ) targets over engine windows."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from mbpo_grad import critics as C
from mbpo_grad import returns as R


def test_v_and_q_critics_are_scalar_functions_of_their_inputs():
    v = C.v_critic(3, (16,))
    q = C.q_critic(3, 2, (16,))
    pv, pq = v.init(jax.random.key(0)), q.init(jax.random.key(1))
    obs = jnp.array([0.1, -0.2, 0.3])
    assert v.apply(pv, obs).shape == () and q.apply(pq, obs, jnp.zeros(2)).shape == ()
    # Q depends on the action, and batching with vmap matches one-by-one application
    assert float(q.apply(pq, obs, jnp.ones(2))) != float(q.apply(pq, obs, -jnp.ones(2)))
    batch = jax.random.normal(jax.random.key(2), (5, 3))
    out = jax.vmap(v.apply, in_axes=(None, 0))(pv, batch)
    np.testing.assert_allclose(np.asarray(out), [float(v.apply(pv, b)) for b in batch], rtol=1e-6)
    with pytest.raises(ValueError, match="obs_dim"):
        C.v_critic(0)
    with pytest.raises(ValueError, match="act_dim"):
        C.q_critic(3, -1)


def test_twin_q_heads_are_independent_networks_and_min_takes_the_smaller():
    single = C.q_critic(2, 1, (8,))
    twin = C.twin_q(2, 1, (8,))
    params = twin.init(jax.random.key(0))
    obs, act = jnp.array([0.5, -1.0]), jnp.array([0.3])
    both = twin.apply(params, obs, act)
    heads = [single.apply(jax.tree_util.tree_map(lambda p: p[i], params), obs, act) for i in range(2)]
    np.testing.assert_allclose(np.asarray(both), np.asarray(heads), rtol=1e-6)
    assert float(both[0]) != float(both[1])
    assert float(C.twin_min(twin, params, obs, act)) == float(jnp.min(both))
    assert float(C.twin_min(twin, params, obs, act)) == pytest.approx(float(min(heads)), rel=1e-6)


def test_polyak_is_the_convex_mix_leaf_by_leaf():
    t = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(3.0)}
    o = {"w": jnp.array([5.0, -2.0]), "b": jnp.array(-1.0)}
    mixed = jax.jit(C.polyak)(t, o, jnp.float32(0.25))
    np.testing.assert_allclose(np.asarray(mixed["w"]), [2.0, 1.0])
    np.testing.assert_allclose(float(mixed["b"]), 2.0)
    assert float(C.polyak(t, o, 0.0)["b"]) == 3.0 and float(C.polyak(t, o, 1.0)["b"]) == -1.0


def test_losses_are_weighted_mse_with_no_gradient_into_targets():
    pred, targ, w = jnp.array([1.0, 2.0, 4.0]), jnp.array([0.0, 0.0, 1.0]), jnp.array([1.0, 0.0, 2.0])
    assert float(C.mse(pred, targ)) == pytest.approx((1 + 4 + 9) / 3)
    assert float(C.mse(pred, targ, w)) == pytest.approx((1 + 2 * 9) / 3)
    assert float(C.mse(pred, targ, jnp.zeros(3))) == 0.0
    g_targ = jax.grad(lambda t: C.mse(pred, t))(targ)
    np.testing.assert_array_equal(np.asarray(g_targ), 0.0)
    # v_loss: vmapped critic values against targets
    v = C.v_critic(2, (8,))
    p = v.init(jax.random.key(0))
    obs = jax.random.normal(jax.random.key(1), (4, 2))
    y = jnp.arange(4.0)
    vals = jnp.stack([v.apply(p, o) for o in obs])
    assert float(C.v_loss(v, p, obs, y)) == pytest.approx(float(jnp.mean((vals - y) ** 2)), rel=1e-6)
    # twin Q: both heads regress on the same targets (sum of the two MSEs)
    tq = C.twin_q(2, 1, (8,))
    tp = tq.init(jax.random.key(2))
    acts = jnp.ones((4, 1))
    both = jax.vmap(tq.apply, in_axes=(None, 0, 0))(tp, obs, acts)
    ref = jnp.mean((both[:, 0] - y) ** 2) + jnp.mean((both[:, 1] - y) ** 2)
    assert float(C.q_loss(tq, tp, obs, acts, y)) == pytest.approx(float(ref), rel=1e-6)


def _lambda_return_reference(r, v, alive, terminal, gamma, lam):
    """λ-return from its definition (Sutton & Barto 2018, eq. 12.3 with an episode end):
    G^λ_t = (1 − λ) Σ_{m=1}^{h−1} λ^{m−1} G^{(m)}_t + λ^{h−1} G^{(h)}_t, h = steps to the end
    of the window or of the episode; n-step returns bootstrap with v except past a terminal."""
    T = len(r)
    end = T
    for t in range(1, T + 1):
        if alive[t] == 0:
            end = t
            break
    out = np.full(T, np.nan)
    for t in range(end):
        h = end - t

        def nstep(m):
            g = sum(gamma**j * r[t + j] for j in range(m))
            if not (t + m == end and terminal[end]):
                g += gamma**m * v[t + m]
            return g

        out[t] = (1 - lam) * sum(lam ** (m - 1) * nstep(m) for m in range(1, h)) + lam ** (h - 1) * nstep(h)
    return out, end


@settings(max_examples=30, deadline=None)
@given(T=st.integers(1, 7), cut=st.integers(1, 9), term=st.booleans(), lam=st.sampled_from([0.0, 0.5, 0.95, 1.0]),
       gamma=st.sampled_from([0.9, 0.99, 1.0]), seed=st.integers(0, 10_000))
def test_td_lambda_targets_match_the_definition_with_truncation_and_termination(T, cut, term, lam, gamma, seed):
    rng = np.random.default_rng(seed)
    r, v = rng.normal(size=T), rng.normal(size=T + 1)
    alive = np.ones(T + 1)
    terminal = np.zeros(T + 1)
    if cut <= T:  # the episode ends at s_cut: a time-limit truncation, or a terminal state
        alive[cut:] = 0.0
        terminal[cut] = float(term)
        r[cut:] = 0.0  # the engine zeroes rewards past the end
    ref, end = _lambda_return_reference(r, v, alive, terminal, gamma, lam)
    with jax.enable_x64(True):
        got = np.asarray(C.td_lambda_targets(jnp.asarray(r), jnp.asarray(v), jnp.asarray(alive),
                                             jnp.asarray(terminal), gamma, lam))
    np.testing.assert_allclose(got[:end], ref[:end], rtol=1e-12, atol=1e-12)
    # steps past the end carry their own value (weight 0 in the critic loss)
    np.testing.assert_allclose(got[end:], v[end:T], rtol=0, atol=0)


def test_td_lambda_targets_without_an_episode_end_are_returns_td_lambda():
    r, v = jnp.array([1.0, -0.5, 2.0]), jnp.array([0.3, 0.1, -0.2, 0.7])
    got = C.td_lambda_targets(r, v, jnp.ones(4), jnp.zeros(4), 0.9, 0.8)
    ref = R.td_lambda(r, v, jnp.full(3, 0.9), 0.8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6)
