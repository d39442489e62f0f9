"""Score-function surrogates and the DPMB-SF hybrid against hand formulas and exact expectations."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad.envs import switching_cart as sc
from mbpo_grad import score_function as sf
from tests.mc_checks import error_shrinks


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


# ---------------------------------------------------------------------------- surrogates vs hand formulas

def _rtg_reference(rewards, discounts):
    G = np.zeros(len(rewards))
    acc = 0.0
    for t in reversed(range(len(rewards))):
        acc = rewards[t] + discounts[t] * acc
        G[t] = acc
    return G


def test_reinforce_surrogate_gradient_matches_formula(x64):
    rng = np.random.default_rng(0)
    T, P = 7, 3
    feats = rng.normal(size=(T, P))
    rewards = rng.normal(size=T)
    discounts = np.full(T, 0.9)
    discounts[4] = 0.0  # a terminal at t = 5: later steps carry weight 0
    baseline = rng.normal(size=T)
    w = np.concatenate([[1.0], np.cumprod(discounts[:-1])])
    G = _rtg_reference(rewards, discounts)

    def lp(theta):
        return jnp.asarray(feats) @ theta  # d log π_t / dθ = feats[t]

    theta = jnp.asarray(rng.normal(size=P))
    for base, weighted in ((None, True), (baseline, True), (baseline, False)):
        grad = jax.grad(lambda th: sf.reinforce_surrogate(lp(th), jnp.asarray(rewards), jnp.asarray(discounts),
                                                          None if base is None else jnp.asarray(base),
                                                          weight_by_discount=weighted))(theta)
        adv = G - (0.0 if base is None else base)
        ww = w if weighted else np.ones(T)
        np.testing.assert_allclose(grad, (ww * adv) @ feats, rtol=1e-12)
    np.testing.assert_allclose(sf.discount_weights(jnp.asarray(discounts)), w, rtol=1e-12)
    assert float(sf.discount_weights(jnp.asarray(discounts))[6]) == 0.0


def test_gae_surrogate_lambda_one_is_reinforce_with_baseline(x64):
    rng = np.random.default_rng(1)
    T = 6
    rewards, values = jnp.asarray(rng.normal(size=T)), jnp.asarray(rng.normal(size=T + 1))
    discounts = jnp.full(T, 0.8)
    values = values.at[-1].set(0.0)  # no bootstrap: GAE(λ=1) = G_t − v_t exactly
    lp = lambda th: th * jnp.arange(1.0, T + 1.0)  # noqa: E731
    g1 = jax.grad(lambda th: sf.gae_surrogate(lp(th), rewards, values, discounts, 1.0))(0.3)
    g2 = jax.grad(lambda th: sf.reinforce_surrogate(lp(th), rewards, discounts, values[:-1]))(0.3)
    np.testing.assert_allclose(g1, g2, rtol=1e-12)


def test_dpmb_sf_surrogate_value_and_gradient(x64):
    """Value = the pathwise return (+ bootstrap); gradient = pathwise + Σ_t ∇log p_t · C_t − w_t b_t with
    C_t = Σ_{k>t} w_k r_k + w_T V_T for r(s, a) rewards and Σ_{k≥t} w_k r_k + w_T V_T for transition rewards."""
    rng = np.random.default_rng(2)
    T, P = 5, 2
    A_r, A_l = rng.normal(size=(T, P)), rng.normal(size=(T, P))
    gamma, b_coef = 0.9, rng.normal(size=P)
    theta = jnp.asarray(rng.normal(size=P))
    rewards = lambda th: jnp.sin(jnp.asarray(A_r) @ th)  # noqa: E731  (differentiable rewards)
    logp = lambda th: -jnp.exp(jnp.asarray(A_l) @ th)  # noqa: E731
    boot = lambda th: jnp.cos(jnp.asarray(b_coef) @ th)  # noqa: E731
    disc = np.full(T, gamma)
    disc[3] = 0.0  # a terminal at t = 4: w_4 = w_5 = 0
    base = rng.normal(size=T)
    r = np.asarray(rewards(theta))
    w = np.concatenate([[1.0], np.cumprod(disc)])  # w_0..w_T
    ret = float(np.sum(w[:T] * r) + w[T] * boot(theta))
    J_path = jax.grad(lambda th: jnp.sum(jnp.asarray(w[:T]) * rewards(th)) + w[T] * boot(th))(theta)
    dlogp = np.asarray(jax.jacobian(logp)(theta))  # [T, P]
    for uses_next in (False, True):
        for b in (None, base):
            L = lambda th: sf.dpmb_sf_surrogate(rewards(th), logp(th), jnp.asarray(disc), bootstrap=boot(th),  # noqa
                                                baseline=None if b is None else jnp.asarray(b),
                                                reward_uses_next_state=uses_next)
            np.testing.assert_allclose(L(theta), ret, rtol=1e-12)
            first = (lambda t: t) if uses_next else (lambda t: t + 1)
            C = np.array([np.sum(w[first(t):T] * r[first(t):]) + w[T] * float(boot(theta)) for t in range(T)])
            if b is not None:
                C = C - w[:T] * b
            np.testing.assert_allclose(jax.grad(L)(theta), np.asarray(J_path) + C @ dlogp, rtol=1e-12)


# ---------------------------------------------------------------------------- switching cart (hybrid system)

T_CART, GAMMA_CART = 6, 0.95
W_CART = np.array([-0.8, -0.5])
S0_CART = np.array([1.0, 0.0])


def cart_policy(w, s, eps):
    return jnp.tanh(w @ s)[None]


def _exact_J(w):
    return sf.exact_hybrid_return(cart_policy, w, sc.step_mode, sc.reward, sc.mode_logits, jnp.asarray(S0_CART),
                                  horizon=T_CART, num_modes=sc.NUM_MODES, gamma=GAMMA_CART)


@jax.jit
def _cart_grads(w, noise):
    """Per-trajectory gradients [N, 2] of the hybrid and of the pure pathwise (modes held fixed) estimators."""
    s0 = jnp.asarray(S0_CART)[None]

    def est(w, g, score):
        return sf.dpmb_sf_objective(cart_policy, w, sc.step_mode, sc.reward, sc.mode_logits, s0, horizon=T_CART,
                                    mode_noise=g[:, None], gamma=GAMMA_CART, score_function=score)

    hybrid = jax.vmap(jax.grad(lambda w, g: est(w, g, True)), in_axes=(None, 0))(w, noise)
    pathwise = jax.vmap(jax.grad(lambda w, g: est(w, g, False)), in_axes=(None, 0))(w, noise)
    return hybrid, pathwise


@pytest.fixture(scope="module")
def cart(x64):
    w = jnp.asarray(W_CART)
    J, g_exact = jax.jit(jax.value_and_grad(_exact_J))(w)
    noise = jax.random.gumbel(jax.random.PRNGKey(0), (32_000, T_CART, sc.NUM_MODES), jnp.float64)
    hybrid, pathwise = _cart_grads(w, noise)
    return w, float(J), np.asarray(g_exact), noise, np.asarray(hybrid), np.asarray(pathwise)


def _stats(g, target):
    mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(g.shape[0])
    return float(np.max(np.abs(mean - target) / se)), float(np.linalg.norm(mean - target)), se


def test_exact_hybrid_return_matches_finite_differences(cart):
    w, J, g_exact, *_ = cart
    h = 1e-5
    J_fn = jax.jit(_exact_J)
    fd = np.array([(float(J_fn(w + h * e)) - float(J_fn(w - h * e))) / (2 * h) for e in np.eye(2)])
    np.testing.assert_allclose(g_exact, fd, rtol=1e-7, atol=1e-9)
    assert np.linalg.norm(g_exact) > 0.1
    # the enumeration's probabilities sum to 1 and its value is a plausible cost
    assert -10.0 < J < 0.0


def test_hybrid_gradient_unbiased_and_pure_pathwise_biased(cart):
    """DPMB-SF agrees with the exact gradient within Monte-Carlo error at 2k and 32k trajectories; the error
    shrinks. Holding the modes fixed (pure pathwise) is biased by many standard errors."""
    _, _, g_exact, _, hybrid, pathwise = cart
    z_small, err_small, se_small = _stats(hybrid[:2000], g_exact)
    z_large, err_large, se_large = _stats(hybrid, g_exact)
    assert z_small < 4.5 and z_large < 4.5, (z_small, z_large)
    assert np.all(se_large < 0.3 * se_small)
    ok, info = error_shrinks(hybrid, g_exact, 2000)
    assert ok, info
    z_path, err_path, _ = _stats(pathwise, g_exact)
    assert z_path > 50.0
    assert err_path > 0.2 * np.linalg.norm(g_exact)  # a large, not a marginal, bias


def test_pure_pathwise_equals_engine_with_gumbel_dynamics_noise(cart):
    """score_function=False is exactly the engine's pathwise gradient through the env's Gumbel-max
    step, fed the standard normal noise ξ whose Gumbel transform is the hybrid's noise."""
    from mbpo_grad.bijectors import ndtri_exp_neg_exp
    w, _, _, noise, _, pathwise = cart
    B = 64
    xi = ndtri_exp_neg_exp(-jnp.swapaxes(noise[:B], 0, 1))  # [T, B, K]: N(0, 1) with −log(−log Φ(ξ)) = g
    np.testing.assert_allclose(sc.gumbel_from_normal(xi), jnp.swapaxes(noise[:B], 0, 1), rtol=1e-9, atol=1e-12)
    s0 = jnp.tile(jnp.asarray(S0_CART), (B, 1))
    env = sc.make()
    g_engine = jax.grad(lambda w: mg.pathwise_objective(cart_policy, w, env.step, env.reward, s0, horizon=T_CART,
                                                        gamma=GAMMA_CART, dynamics_noise=xi))(w)
    np.testing.assert_allclose(g_engine, pathwise[:B].mean(0), rtol=1e-10, atol=1e-12)


def test_env_step_fed_normal_noise_draws_modes_with_their_probabilities(x64):
    """The agents feed env.step ξ ~ N(0, I): the sticking frequency is p(z = 1 | s, a) = sigmoid(ℓ).
    (Read as Gumbel noise directly, as before, it would be Φ(ℓ/√2) = 0.756 here, not 0.727:
    7 standard errors away at 40k draws.)"""
    env = sc.make()
    s0, a = jnp.array([0.0, 0.05]), jnp.zeros((1,))   # slow and unforced: ℓ = 0.98
    assert not np.allclose(sc.step_mode(s0, a, 0), sc.step_mode(s0, a, 1))
    xi = jax.random.normal(jax.random.PRNGKey(4), (40_000, sc.NUM_MODES), jnp.float64)
    nxt = jax.vmap(lambda x: env.step(s0, a, x))(xi)
    stick = np.asarray(sc.step_mode(s0, a, 1))
    freq = float(np.mean(np.all(np.isclose(np.asarray(nxt), stick[None], rtol=0, atol=1e-12), axis=1)))
    p1 = float(jax.nn.softmax(sc.mode_logits(s0, a))[1])
    assert abs(freq - p1) < 4.0 * np.sqrt(p1 * (1 - p1) / 40_000), (freq, p1)


def test_hybrid_unroll_modes_follow_probabilities(x64):
    """Gumbel-max draws: the sticking frequency at the start state matches p(z=1 | s0, a0)."""
    w = jnp.asarray(W_CART)
    s0 = jnp.asarray(S0_CART)
    noise = jax.random.gumbel(jax.random.PRNGKey(3), (20_000, 1, 2), jnp.float64)
    tr = jax.vmap(lambda g: sf.hybrid_unroll(cart_policy, w, sc.step_mode, sc.reward, sc.mode_logits, s0,
                                             horizon=1, mode_noise=g))(noise)
    p1 = float(jax.nn.softmax(sc.mode_logits(s0, cart_policy(w, s0, None)))[1])
    freq = float(np.mean(np.asarray(tr.modes[:, 0])))
    assert abs(freq - p1) < 4.0 * np.sqrt(p1 * (1 - p1) / 20_000)
    np.testing.assert_allclose(np.exp(np.asarray(tr.log_probs[:, 0])),
                               np.where(np.asarray(tr.modes[:, 0]) == 1, p1, 1 - p1), rtol=1e-12)


# ---------------------------------------------------------------------------- bad input

def test_bad_inputs():
    r = jnp.zeros(5)
    with pytest.raises(ValueError, match="log_probs"):
        sf.reinforce_surrogate(jnp.zeros(4), r, r)
    with pytest.raises(ValueError, match="rewards"):
        sf.reinforce_surrogate(jnp.zeros((2, 5)), jnp.zeros((2, 5)), jnp.zeros((2, 5)))
    with pytest.raises(ValueError, match="baseline"):
        sf.reinforce_surrogate(r, r, r, jnp.zeros(6))
    with pytest.raises(ValueError, match="values"):
        sf.gae_surrogate(r, r, jnp.zeros(5), r, 0.9)
    with pytest.raises(ValueError, match="lam"):
        sf.gae_surrogate(r, r, jnp.zeros(6), r, 1.2)
    with pytest.raises(ValueError, match="transition_log_probs"):
        sf.dpmb_sf_surrogate(r, jnp.zeros(3), r)
    with pytest.raises(ValueError, match="bootstrap"):
        sf.dpmb_sf_surrogate(r, r, r, bootstrap=jnp.zeros(5))
    with pytest.raises(TypeError, match="reward_uses_next_state"):
        sf.dpmb_sf_surrogate(r, r, r, reward_uses_next_state="yes")
    with pytest.raises(ValueError, match="targets"):
        sf.baseline_loss(jnp.zeros(3), jnp.zeros(4))
    s0 = jnp.zeros(2)
    with pytest.raises(ValueError, match="mode_noise / modes"):
        sf.hybrid_unroll(cart_policy, jnp.zeros(2), sc.step_mode, sc.reward, sc.mode_logits, s0, horizon=3)
    with pytest.raises(ValueError, match="mode_noise"):
        sf.hybrid_unroll(cart_policy, jnp.zeros(2), sc.step_mode, sc.reward, sc.mode_logits, s0, horizon=3,
                         mode_noise=jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match=r"mode_noise.*K = 2"):
        sf.hybrid_unroll(cart_policy, jnp.zeros(2), sc.step_mode, sc.reward, sc.mode_logits, s0, horizon=3,
                         mode_noise=jnp.zeros((3, 3)))
    with pytest.raises(TypeError, match="done"):
        sf.hybrid_unroll(cart_policy, jnp.zeros(2), sc.step_mode, sc.reward, sc.mode_logits, s0, horizon=3,
                         modes=jnp.zeros(3, jnp.int32), done=1.0)
    with pytest.raises(TypeError, match="mode_logits"):
        sf.hybrid_unroll(cart_policy, jnp.zeros(2), sc.step_mode, sc.reward, None, s0, horizon=3,
                         modes=jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="max_sequences"):
        sf.exact_hybrid_return(cart_policy, jnp.zeros(2), sc.step_mode, sc.reward, sc.mode_logits, s0,
                               horizon=20, num_modes=2)
