"""pathwise_objective against exact references (issue 2 acceptance), all in float64.

* LQR: value and ``jax.grad`` against the closed forms in ``envs.lqr`` (relative error < 1e-8).
* Cart-pole + MLP policy + nonlinear critic: ``jax.grad`` against the theory's forward recursion
  dw s_{t+1} = ∂a f · dw a_t + ∂s f · dw s_t (per-step Jacobians, a Python loop in this test only)
  and against float64 central finite differences.
* horizon = 0 is mean Q(s, π(s, ε)); ``done`` truncates rewards, gradients and the bootstrap;
  ``remat`` changes nothing numerically; noise reaches the step it is meant for.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from mbpo_grad import envs

import mbpo_grad as mg
from mbpo_grad.envs import lqr


@pytest.fixture(autouse=True)
def x64():
    # jax 0.9.2 has no jax.experimental.enable_x64; jax.enable_x64 is the (thread-local)
    # context manager, so float64 stays confined to this module's tests.
    with jax.enable_x64(True):
        yield


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def linear_policy(K, s, eps):
    del eps
    return -K @ s


# ------------------------------------------------------------------------------------------------
# LQR: autodiff of the engine == closed form
# ------------------------------------------------------------------------------------------------

def _lqr_case(A, B, Q, R, K, S0, P, gamma, *, horizon):
    """Engine value/grad and closed-form value/grad, without and with the bootstrap −sᵀPs."""

    def step(s, a, xi):
        return A @ s + B @ a

    def reward(s, a):
        return -(s @ Q @ s + a @ R @ a)

    def J(K, bootstrap):
        return mg.pathwise_objective(linear_policy, K, step, reward, S0, horizon=horizon, gamma=gamma, bootstrap=bootstrap)

    out = {}
    for name, bootstrap, PT in (("plain", None, None), ("terminal", lambda s, a: -s @ P @ s, P)):
        out[name] = (
            jax.value_and_grad(J)(K, bootstrap),
            (lqr.closed_form_return(A, B, Q, R, K, S0, horizon, gamma, PT),
             lqr.closed_form_gradient(A, B, Q, R, K, S0, horizon, gamma, PT)),
        )
    return out


@pytest.mark.parametrize("dims", [(2, 1), (4, 2)])
@pytest.mark.parametrize("horizon", [1, 5, 20])
def test_lqr_gradient_matches_closed_form(dims, horizon):
    """3 random systems × gamma ∈ {0.9, 1} (vmapped) × {no bootstrap, −sᵀPs}."""
    d, m = dims
    gammas = jnp.array([0.9, 1.0])
    run = jax.jit(jax.vmap(functools.partial(_lqr_case, horizon=horizon), in_axes=(None,) * 7 + (0,)))
    for seed in range(3):
        A, B, Q, R = lqr.random_system(jax.random.PRNGKey(seed), d, m)[:4]
        rng = np.random.default_rng(seed)
        K = 0.3 * rng.standard_normal((m, d))
        S0 = rng.standard_normal((6, d))
        W = rng.standard_normal((d, d))
        P = np.eye(d) + W @ W.T / d  # a quadratic critic Q(s, a) = −sᵀPs
        _check_lqr_case(run(A, B, Q, R, K, S0, P, gammas), (2, m, d))


def _check_lqr_case(out, grad_shape):
    for name in ("plain", "terminal"):
        (value, grad), (want_v, want_g) = out[name]
        assert grad.dtype == jnp.float64 and grad.shape == grad_shape
        np.testing.assert_allclose(value, want_v, rtol=1e-10)
        errs = np.linalg.norm(grad - want_g, axis=(-2, -1)) / np.linalg.norm(want_g, axis=(-2, -1))
        assert errs.shape == grad_shape[:1]
        assert np.all(errs < 1e-8), (name, errs)


def test_lqr_env_bundle_matches_closed_form_via_named_wrappers():
    env = envs.make("lqr", state_dim=3, action_dim=2, seed=7)
    A, B, Q, R = env.info[:4]
    rng = np.random.default_rng(0)
    K = 0.2 * rng.standard_normal((2, 3))
    S0 = rng.standard_normal((4, 3))
    P = 2.0 * jnp.eye(3)
    g_bpo = jax.jit(jax.grad(
        lambda K: mg.bpo(linear_policy, K, env.step, env.reward, S0, episode_length=8, gamma=0.97)))(K)
    assert rel_err(g_bpo, lqr.closed_form_gradient(A, B, Q, R, K, S0, 8, 0.97)) < 1e-8
    g_n = jax.jit(jax.grad(lambda K: mg.nstep(linear_policy, K, env.step, env.reward, S0, horizon=3, gamma=0.97,
                                              bootstrap=lambda s, a: -s @ P @ s)))(K)
    assert rel_err(g_n, lqr.closed_form_gradient(A, B, Q, R, K, S0, 3, 0.97, P)) < 1e-8


# ------------------------------------------------------------------------------------------------
# Nonlinear system: autodiff == forward recursion == finite differences
# ------------------------------------------------------------------------------------------------

def _cartpole_problem():
    env = envs.make("cartpole")
    net = mg.nn.mlp(env.obs_size, env.action_size, hidden=(8,))
    params = jax.jit(net.init)(jax.random.PRNGKey(0))
    flat, unravel = ravel_pytree(params)
    flat = flat.astype(jnp.float64)  # Flax Dense keeps float32 parameters; the test runs in float64

    def policy(w, s, eps):  # w: flat parameter vector
        del eps
        return jnp.tanh(net.apply(unravel(w), env.observe(s)))

    def critic(s, a):  # a nonlinear terminal critic depending on state and action
        o = env.observe(s)
        return jnp.sin(o @ jnp.arange(1.0, 6.0) / 5.0) - 0.5 * jnp.sum(a**2) + o[2] * a[0]

    # Start states off the hanging rest position [0, 0, π, 0], so the dynamics are far from linear.
    S0 = jnp.array([[0.35, -0.5, 2.1, 1.0], [0.04, 1.0, 1.18, -0.5], [-0.31, 0.0, 3.65, 2.0]])
    return env, policy, critic, flat, S0


def test_nonlinear_gradient_equals_forward_recursion_and_finite_differences():
    env, policy, critic, w, S0 = _cartpole_problem()
    horizon, gamma = 10, 0.95
    assert S0.dtype == jnp.float64 and w.dtype == jnp.float64

    def J(w):
        return mg.pathwise_objective(policy, w, env.step, env.reward, S0, horizon=horizon, gamma=gamma, bootstrap=critic)

    g_ad = jax.jit(jax.grad(J))(w)

    # Theory §1 recursion, forward mode by hand: dw a_t = ∂s π dw s_t + ∂w π,
    # dw s_{t+1} = ∂s f dw s_t + ∂a f dw a_t, dw J = Σ γ^t (∂s r dw s_t + ∂a r dw a_t) + γ^n (∂s Q ..).
    @jax.jit
    def jacobians(s, w):
        a = policy(w, s, None)
        pi_s, pi_w = jax.jacobian(policy, argnums=(1, 0))(w, s, None)
        f_s, f_a = jax.jacobian(env.step, argnums=(0, 1))(s, a, None)
        r_s, r_a = jax.grad(env.reward, argnums=(0, 1))(s, a)
        q_s, q_a = jax.grad(critic, argnums=(0, 1))(s, a)
        return a, pi_s, pi_w, f_s, f_a, r_s, r_a, q_s, q_a

    step = jax.jit(env.step)
    g_rec = np.zeros_like(np.asarray(w))
    for s in S0:
        ds = np.zeros((s.shape[0], w.shape[0]))
        for t in range(horizon + 1):
            a, pi_s, pi_w, f_s, f_a, r_s, r_a, q_s, q_a = (np.asarray(x) for x in jacobians(s, w))
            da = pi_s @ ds + pi_w
            if t == horizon:
                g_rec += gamma**t * (q_s @ ds + q_a @ da)
                break
            g_rec += gamma**t * (r_s @ ds + r_a @ da)
            ds = f_s @ ds + f_a @ da
            s = step(s, a, None)
    g_rec /= S0.shape[0]

    # Central differences in float64, all parameter directions in one vmapped evaluation.
    h = 1e-6
    E = jnp.eye(w.shape[0])
    Jv = jax.jit(jax.vmap(J))
    g_fd = (Jv(w + h * E) - Jv(w - h * E)) / (2 * h)

    assert np.all(np.isfinite(g_ad)) and float(jnp.linalg.norm(g_ad)) > 1e-3
    assert rel_err(g_ad, g_rec) < 1e-10
    assert rel_err(g_ad, g_fd) < 1e-7


# ------------------------------------------------------------------------------------------------
# horizon = 0: the NFQCA / DDPG / SVG(0) actor objective
# ------------------------------------------------------------------------------------------------

def test_horizon_zero_is_mean_q_of_policy_action():
    net = mg.nn.mlp(3, 2, hidden=(6,))
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), jax.jit(net.init)(jax.random.PRNGKey(2)))
    rng = np.random.default_rng(3)
    states = rng.standard_normal((5, 3))
    eps = rng.standard_normal((1, 5, 2))

    def policy(p, s, e):  # reparameterised Gaussian when e is given, its mean otherwise
        mu = jnp.tanh(net.apply(p, s))
        return mu if e is None else mu + 0.3 * e

    def critic(s, a):
        return -jnp.sum((a - jnp.sin(s[:2])) ** 2) + jnp.cos(s @ s) * a[0]

    def never_called_step(s, a, xi):
        raise AssertionError("horizon=0 must not step")

    def zero_reward(s, a):
        return jnp.zeros(())

    for e, e_direct in ((None, [None] * 5), (eps, eps[0])):
        def engine(p):
            return mg.pathwise_objective(policy, p, never_called_step, zero_reward, states, horizon=0,
                                         gamma=0.9, bootstrap=critic, policy_noise=e)

        def direct(p):
            qs = [critic(states[i], policy(p, states[i], e_direct[i])) for i in range(5)]
            return jnp.mean(jnp.stack(qs))

        v1, g1 = jax.jit(jax.value_and_grad(engine))(params)
        v2, g2 = jax.jit(jax.value_and_grad(direct))(params)
        np.testing.assert_allclose(v1, v2, rtol=1e-14, atol=0)
        for x, y in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g2)):
            np.testing.assert_allclose(x, y, rtol=1e-13, atol=1e-15)
        if e is None:
            v3, g3 = jax.jit(jax.value_and_grad(lambda p: mg.actor_q_objective(policy, p, critic, states)))(params)
            np.testing.assert_allclose(v3, v2, rtol=1e-14, atol=0)
            np.testing.assert_allclose(ravel_pytree(g3)[0], ravel_pytree(g2)[0], rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------------------------------
# done: rewards, gradient path and bootstrap stop at the end of the episode
# ------------------------------------------------------------------------------------------------

END = 4.0  # done(s) when the step counter s[1] reaches END


def _done_system(garbage_after_end):
    """State [x, t]: t counts steps; done when t >= END. x follows a nonlinear map; with
    ``garbage_after_end`` the simulator keeps integrating a wildly different (finite) map once
    the episode is over, as a simulator without auto-reset would."""

    def step(s, a, xi):
        x, t = s[0], s[1]
        nominal = x + 0.5 * a[0] + 0.1 * x**2
        if garbage_after_end:
            nominal = jnp.where(t >= END, 30.0 * x + 7.0 * a[0] ** 3, nominal)
        return jnp.stack([nominal, t + 1.0])

    def reward(s, a):
        return -(s[0] ** 2 + 0.3 * a[0] ** 2) + jnp.sin(s[0])

    def done(s):
        return s[1] >= END

    def policy(w, s, eps):
        return jnp.tanh(w[0] * s[0] + w[1])[None]

    def critic(s, a):
        return -5.0 * s[0] ** 2 + a[0]

    return step, reward, done, policy, critic


def test_done_matches_shorter_horizon_and_drops_bootstrap():
    step_g, reward, done, policy, critic = _done_system(garbage_after_end=True)
    step, *_ = _done_system(garbage_after_end=False)
    w = jnp.array([0.7, -0.2])
    # Two episodes: one starts at t=0 (ends after 4 steps), one at t=2 (ends after 2 steps).
    starts = jnp.array([[0.5, 0.0], [-0.8, 2.0]])

    def J_done(w, horizon, bootstrap):
        return mg.pathwise_objective(policy, w, step_g, reward, starts, horizon=horizon, gamma=0.9,
                                     bootstrap=bootstrap, done=done)

    def J_short(w):  # each episode truncated at its own end, no done, no garbage, no bootstrap
        r0 = mg.pathwise_objective(policy, w, step, reward, starts[:1], horizon=4, gamma=0.9)
        r1 = mg.pathwise_objective(policy, w, step, reward, starts[1:], horizon=2, gamma=0.9)
        return 0.5 * (r0 + r1)

    def J_mixed(w):
        r0 = mg.pathwise_objective(policy, w, step, reward, starts[:1], horizon=3, gamma=0.9, bootstrap=critic)
        r1 = mg.pathwise_objective(policy, w, step, reward, starts[1:], horizon=2, gamma=0.9)
        return 0.5 * (r0 + r1)

    @jax.jit
    def everything(w):  # one compile for all variants
        vg = jax.value_and_grad
        ended = [vg(J_done)(w, horizon, bootstrap) for horizon in (4, 9) for bootstrap in (None, critic)]
        # Horizon 3: the first episode is still running (bootstrap kept), the second ended (dropped).
        return vg(J_short)(w), ended, vg(J_mixed)(w), vg(J_done)(w, 3, critic)

    (v_ref, g_ref), ended, (v_m, g_m), (v, g) = everything(w)
    for v_e, g_e in ended:  # both episodes ended by the horizon: same as truncation, bootstrap dropped
        np.testing.assert_allclose(v_e, v_ref, rtol=1e-13)
        np.testing.assert_allclose(g_e, g_ref, rtol=1e-12)
    np.testing.assert_allclose(v, v_m, rtol=1e-13)
    np.testing.assert_allclose(g, g_m, rtol=1e-12)


def test_no_gradient_reaches_states_after_termination():
    step_g, reward, done, policy, _ = _done_system(garbage_after_end=True)
    w = jnp.array([0.7, -0.2])
    s0 = jnp.array([0.5, 0.0])

    def states_after(w):
        traj = mg.unroll(policy, w, step_g, reward, s0, horizon=8, done=done)
        return traj.states[:, 0], traj.alive

    jac = jax.jit(jax.jacobian(lambda w: states_after(w)[0]))(w)  # [9, 2]
    xs, alive = jax.jit(states_after)(w)
    np.testing.assert_array_equal(alive, [1, 1, 1, 1, 0, 0, 0, 0, 0])
    assert np.all(np.abs(np.asarray(jac[1:5])) > 0)  # s_1..s_4 (s_4 the terminal state) depend on w
    np.testing.assert_array_equal(jac[5:], 0.0)  # states past the end: gradient cut
    np.testing.assert_array_equal(xs[5:], xs[4])  # ... and frozen at the terminal state


def test_nan_after_termination_does_not_reach_value_or_gradient():
    # A simulator that returns NaN once the episode is over (no auto-reset) must not poison J.
    step, reward, done, policy, critic = _done_system(garbage_after_end=False)

    def step_nan(s, a, xi):
        nxt = step(s, a, xi)
        return jnp.where(s[1] >= END, jnp.nan, nxt)

    w = jnp.array([0.7, -0.2])
    starts = jnp.array([[0.5, 0.0], [0.3, 2.0]])

    def J(w, stepper):
        return mg.pathwise_objective(policy, w, stepper, reward, starts, horizon=9, gamma=0.9,
                                     bootstrap=critic, done=done)

    v, g = jax.jit(jax.value_and_grad(lambda w: J(w, step_nan)))(w)
    v_ref, g_ref = jax.jit(jax.value_and_grad(lambda w: J(w, step)))(w)
    assert np.isfinite(v) and np.all(np.isfinite(g))
    np.testing.assert_allclose(v, v_ref, rtol=1e-13)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12)


def test_done_at_start_gives_zero_objective_and_gradient():
    step, reward, done, policy, critic = _done_system(garbage_after_end=True)
    starts = jnp.array([[0.5, END], [0.1, END + 1.0]])
    v, g = jax.jit(jax.value_and_grad(
        lambda w: mg.pathwise_objective(policy, w, step, reward, starts, horizon=5, gamma=1.0, bootstrap=critic, done=done)
    ))(jnp.array([0.7, -0.2]))
    assert float(v) == 0.0
    np.testing.assert_array_equal(g, 0.0)


# ------------------------------------------------------------------------------------------------
# remat and noise threading
# ------------------------------------------------------------------------------------------------

def test_remat_gives_identical_value_and_gradient():
    env, policy, critic, w, S0 = _cartpole_problem()

    def vg(remat, done):
        return jax.jit(jax.value_and_grad(lambda w: mg.pathwise_objective(
            policy, w, env.step, env.reward, S0, horizon=10, gamma=0.99, bootstrap=critic, done=done, remat=remat)))(w)

    def pole_past(s):  # ends episode 0 at t=9 (of 10); episode 1 runs on; episode 2 is done at t=0
        return s[2] > 3.35

    base = {}
    for remat, done in ((True, None), (jax.checkpoint_policies.nothing_saveable, pole_past)):
        v0, g0 = base[done] = vg(False, done)
        v1, g1 = vg(remat, done)
        np.testing.assert_allclose(v1, v0, rtol=1e-14)
        np.testing.assert_allclose(g1, g0, rtol=1e-12, atol=1e-14)
    assert float(jnp.max(jnp.abs(base[pole_past][1] - base[None][1]))) > 1e-6  # done changed the gradient


def test_noise_is_threaded_to_the_right_step():
    d, m, n, B = 3, 2, 5, 3
    env = lqr.make(state_dim=d, action_dim=m, seed=11, noise_scale=0.3)
    A, B_, Q, R = env.info[:4]
    P = jnp.eye(d) * 1.5
    rng = np.random.default_rng(5)
    K = 0.3 * rng.standard_normal((m, d))
    S0 = rng.standard_normal((B, d))
    eps = rng.standard_normal((n + 1, B, m))
    xi = rng.standard_normal((n, B, d))
    gamma = 0.93

    def policy(K, s, e):
        return -K @ s + 0.1 * e

    def critic(s, a):  # depends on the final action, so ε_n matters
        return -s @ P @ s - a @ a

    def engine(K):
        return mg.pathwise_objective(policy, K, env.step, env.reward, S0, horizon=n, gamma=gamma,
                                     bootstrap=critic, policy_noise=eps, dynamics_noise=xi)

    def by_hand(K):  # a plain Python loop with the noise indexed [t, b]
        total = 0.0
        for b in range(B):
            s, ret = S0[b], 0.0
            for t in range(n):
                a = -K @ s + 0.1 * eps[t, b]
                ret = ret + gamma**t * -(s @ Q @ s + a @ R @ a)
                s = A @ s + B_ @ a + 0.3 * xi[t, b]
            a = -K @ s + 0.1 * eps[n, b]
            total = total + ret + gamma**n * (-s @ P @ s - a @ a)
        return total / B

    v1, g1 = jax.jit(jax.value_and_grad(engine))(K)
    v2, g2 = jax.jit(jax.value_and_grad(by_hand))(K)
    np.testing.assert_allclose(v1, v2, rtol=1e-13)
    np.testing.assert_allclose(g1, g2, rtol=1e-12)
    # The noise matters (so the test can fail): without it the value changes.
    v0 = jax.jit(lambda K: mg.pathwise_objective(
        policy, K, env.step, env.reward, S0, horizon=n, gamma=gamma, bootstrap=critic,
        policy_noise=jnp.zeros_like(eps), dynamics_noise=jnp.zeros_like(xi)))(K)
    assert abs(float(v0 - v1)) > 1e-3
    # and with zero noise the closed form holds (a_n = −K s_n, so −aᵀa = −sᵀKᵀKs joins the terminal P).
    np.testing.assert_allclose(v0, lqr.closed_form_return(A, B_, Q, R, K, S0, n, gamma, P + K.T @ K), rtol=1e-12)


def test_traced_gamma_is_vmappable():
    env = lqr.make(state_dim=2, action_dim=1, seed=3)
    K = jnp.array([[0.2, -0.1]])
    S0 = np.random.default_rng(0).standard_normal((3, 2))
    gammas = jnp.array([0.5, 0.9, 1.0])
    vals = jax.jit(jax.vmap(lambda g: mg.pathwise_objective(linear_policy, K, env.step, env.reward, S0, horizon=5, gamma=g)))(gammas)
    want = jnp.stack([lqr.closed_form_return(*env.info[:4], K, S0, 5, g) for g in gammas])
    np.testing.assert_allclose(vals, want, rtol=1e-12)
