"""Bounded (Kumaraswamy) and discrete (Gumbel-softmax) policy bundles: exact densities and
inverses (float64), pathwise and score-function gradients against exact references, float32
safety at the extremes, and one SHAC update with each."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.scipy.special import ndtri

from mbpo_grad import distributions as D
from mbpo_grad import envs
from mbpo_grad.agents import shac
from mbpo_grad.nn import mlp
from mbpo_grad.policies import gumbel_softmax_policy, kumaraswamy_policy
from mbpo_grad.bijectors import log_neg_log_ndtr, ndtri_exp_neg_exp
from mbpo_grad.policies.bounded import kumaraswamy_parameters
from tests.policy_checks import normal, random_params

OBS_DIM = 3
HIDDEN = (4,)


def with_head(params, bias, kernel_scale=0.0):
    """``params`` with the last layer's bias set to ``bias`` and its kernel scaled (0: obs-independent)."""
    net = dict(params["net"])
    last = max(net, key=lambda k: int(k.split("_")[1]))
    net[last] = {"kernel": net[last]["kernel"] * kernel_scale, "bias": jnp.asarray(bias, net[last]["bias"].dtype)}
    return {"net": net}


def tanh_sinh(h=1.0 / 64, t_max=3.5):
    """Nodes and weights of the tanh-sinh rule on (−1, 1) (exact to ~1e-12 for endpoint-singular
    integrands); also ``u = (1 + x)/2`` and ``1 − u`` without cancellation."""
    t = np.arange(-t_max, t_max + h / 2, h)
    s = 0.5 * np.pi * np.sinh(t)
    x = np.tanh(s)
    w = h * 0.5 * np.pi * np.cosh(t) / np.cosh(s) ** 2
    u, one_minus_u = 1.0 / (1.0 + np.exp(-2.0 * s)), 1.0 / (1.0 + np.exp(2.0 * s))
    keep = np.abs(x) < 1.0
    return x[keep], w[keep], u[keep], one_minus_u[keep]


def normal_of_uniform(u, one_minus_u):
    """ε = Φ⁻¹(u) with the complement used above ½ (float64)."""
    return jnp.where(u < 0.5, ndtri(jnp.asarray(u)), -ndtri(jnp.asarray(one_minus_u)))


# =========================================================================== noise transforms
def test_normal_to_gumbel_and_exponential_transforms_are_accurate_and_invertible():
    """log(−log Φ(x)) against an independent float64 formula; float32 within 5e-7 relative (a few ulp); the
    inverse exact for |x| ≤ 12 in float32 (float64: ≤ 30); and the Gumbel / Exp(1) laws."""
    from scipy.special import log_ndtr as np_log_ndtr, ndtr as np_ndtr
    x = np.array([-30.0, -12.0, -5.5, -1.0, 0.0, 0.3, 3.0, 4.9, 5.1, 8.0, 12.0])
    ref = np.where(x <= 0, np.log(-np_log_ndtr(np.minimum(x, 0.0))), np.log(-np.log1p(-np_ndtr(-np.maximum(x, 0.0)))))
    both = jax.jit(lambda x, l: (log_neg_log_ndtr(x), ndtri_exp_neg_exp(l)))
    with jax.enable_x64(True):
        got64, back64 = both(jnp.asarray(x), jnp.asarray(ref))
    np.testing.assert_allclose(got64, ref, rtol=1e-13)
    np.testing.assert_allclose(back64, x, atol=1e-12)
    got32, back32 = both(jnp.asarray(x, jnp.float32), jnp.asarray(ref, jnp.float32))
    np.testing.assert_allclose(got32, ref, rtol=5e-7)
    back32 = np.asarray(back32)
    np.testing.assert_allclose(back32[1:], x[1:], atol=2e-6)
    assert -13.0 < back32[0] < -12.5                         # clipped (documented), not -inf
    # log_ndtr alone is 4 % off at x = 5 in float32: the reason for the middle branch
    assert abs(float(jnp.log(-jax.scipy.special.log_ndtr(jnp.float32(5.0)))) - float(np.log(np_ndtr(-5.0)))) > 0.03
    # ε ~ N(0, 1) → g = −log(−log Φ(ε)) ~ Gumbel(0, 1): mean γ = 0.5772, variance π²/6
    eps = normal(0, (200_000,))
    g = -np.asarray(jax.jit(log_neg_log_ndtr)(eps), np.float64)
    assert abs(g.mean() - 0.5772157) < 5 * np.sqrt(np.pi**2 / 6 / g.size)
    assert abs(g.var() - np.pi**2 / 6) < 0.03


# =========================================================================== Kumaraswamy
# (r_α, r_m) heads, all with α, β ≥ 0.8 so that the mass within δ = 1e-12 of ±1 (where log_prob
# clips; ≈ β δ^α at −1 and (α δ)^β at +1) is below 1e-8: U-shaped (α, β < 1), skewed, concentrated.
HEADS = [(0.0, 0.0), (-0.7, 0.3), (-0.5, -1.5), (1.5, -3.0), (3.0, 1.0), (0.5, 1.0)]


def test_kumaraswamy_density_inverse_and_log_ratio_are_exact_float64():
    """float64, 1-D, for heads spanning U-shaped to concentrated: ∫ π(a) da = 1 (tanh-sinh);
    π(a) = ½ p_Kum(x; α, β) at x = (1 + a)/2 with ``distributions.kumaraswamy`` as the
    reference; F(x_m) = ½ at the median and sample(ε = 0) = sample(None); on 64 draws
    infer_noise(sample(ε)) = ε, sample(infer_noise(a)) = a, sample_and_log_prob =
    (sample, log_prob(sample)) = log N(ε) − log|∂a/∂ε| (autodiff), and log_ratio(old, new) =
    log_prob(new, a) − log_prob(old, a)
    (new = the next head, with an observation-dependent last layer)."""
    pol = kumaraswamy_policy(OBS_DIM, 1, hidden=HIDDEN)
    kum = D.kumaraswamy()
    x, w, _, _ = tanh_sinh()
    with jax.enable_x64(True):
        base = random_params(pol.init, 0, 0.5, np.float64)
        obs = normal(1, (OBS_DIM,), np.float64)
        eps = normal(2, (64, 1), np.float64) * 2.0
        acts = jnp.asarray(np.random.default_rng(3).uniform(-0.99, 0.99, (64, 1)))
        heads = [with_head(base, jnp.asarray(h), 0.3) for h in HEADS]

        @jax.jit
        def run(params, new, obs, eps, acts, x, w):
            lp = jax.vmap(lambda a: pol.log_prob(params, obs, a[None]))(x)
            la, lb, _ = kumaraswamy_parameters(mlp(OBS_DIM, 2, HIDDEN).apply(params["net"], obs))
            kp = {"a": jnp.exp(la[0]), "b": jnp.exp(lb[0])}
            lp_acts = jax.vmap(lambda a: pol.log_prob(params, obs, a))(acts)
            lp_ref = kum.log_prob(kp, 0.5 * (1.0 + acts[:, 0])) - jnp.log(2.0)
            x_m = 0.5 * (1.0 + pol.sample(params, obs, None)[0])
            a, lp_fwd = jax.vmap(lambda e: pol.sample_and_log_prob(params, obs, e))(eps)
            return dict(mass=jnp.sum(w * jnp.exp(lp)), lp_acts=lp_acts, lp_ref=lp_ref, f_med=kum.infer_noise(kp, x_m),
                        mode=pol.sample(params, obs, None), at_zero=pol.sample(params, obs, jnp.zeros(1)),
                        alpha=kp["a"], beta=kp["b"], a=a, lp_fwd=lp_fwd,
                        lp_back=jax.vmap(lambda aa: pol.log_prob(params, obs, aa))(a),
                        e_back=jax.vmap(lambda aa: pol.infer_noise(params, obs, aa))(a),
                        a_back=jax.vmap(lambda aa: pol.sample(params, obs, pol.infer_noise(params, obs, aa)))(acts),
                        e_act=jax.vmap(lambda aa: pol.infer_noise(params, obs, aa))(acts),
                        lr=jax.vmap(lambda e: pol.log_ratio(params, new, obs, e))(eps),
                        lp_new=jax.vmap(lambda aa: pol.log_prob(new, obs, aa))(a),
                        dade=jax.vmap(jax.grad(lambda e: pol.sample(params, obs, e)[0]))(eps)[:, 0])

        outs = [run(p, q, obs, eps, acts, jnp.asarray(x), jnp.asarray(w)) for p, q in zip(heads, heads[1:] + heads[:1])]
    shapes = []
    for o in outs:
        assert abs(float(o["mass"]) - 1.0) < 1e-8, (float(o["mass"]), float(o["alpha"]), float(o["beta"]))
        np.testing.assert_allclose(o["lp_acts"], o["lp_ref"], atol=1e-10, rtol=1e-12)
        assert abs(float(o["f_med"]) - 0.5) < 1e-12
        np.testing.assert_allclose(o["mode"], o["at_zero"], atol=1e-14)
        np.testing.assert_allclose(o["lp_back"], o["lp_fwd"], atol=1e-9, rtol=1e-11)
        lp_cov = -0.5 * np.asarray(eps[:, 0]) ** 2 - 0.5 * np.log(2 * np.pi) - np.log(np.abs(np.asarray(o["dade"])))
        np.testing.assert_allclose(o["lp_fwd"], lp_cov, atol=1e-8, rtol=1e-9)   # log N(ε) − log|∂a/∂ε|
        np.testing.assert_allclose(o["e_back"], eps, atol=1e-9)
        ok = np.abs(np.asarray(o["e_act"])[:, 0]) < 30.0   # a concentrated head's far actions need |ε| > 37
        assert ok.sum() >= 8
        np.testing.assert_allclose(np.asarray(o["a_back"])[ok], np.asarray(acts)[ok], atol=1e-12)
        np.testing.assert_allclose(o["lr"], np.asarray(o["lp_new"]) - np.asarray(o["lp_fwd"]), atol=1e-9, rtol=1e-9)
        shapes.append((float(o["alpha"]), float(o["beta"])))
    assert any(a < 1 and b < 1 for a, b in shapes) and max(a for a, _ in shapes) > 10  # the heads span the shapes


def test_kumaraswamy_float32_round_trips_and_extremes():
    """float32. Random parameters: infer_noise(sample(ε)) = ε, sample(infer_noise(a)) = a,
    sample_and_log_prob = log_prob(sample), log_ratio = the log_prob difference (to 2e-4, where
    the action is not within 1e-3 of ±1 / the action's noise is representable, |ε| < 12). Heads
    at their soft-clip bounds (raw ±60) with ε up to ±40 and actions ±1: actions in [−1, 1] and
    every density, inverse, log_ratio and gradient finite (no NaN / inf). log_ratio where
    1 − x^α < e^{−30} matches a float64 reference."""
    tol, act_dim = 2e-4, 2
    pol = kumaraswamy_policy(OBS_DIM, act_dim, hidden=HIDDEN)
    params = random_params(pol.init, 2, 1.0)
    new = jax.tree_util.tree_map(lambda p, q: p + 0.3 * q, params, random_params(pol.init, 3, 1.0))
    obs = normal(4, (256, OBS_DIM))
    eps = normal(5, (256, act_dim))
    actions = jnp.asarray(np.random.default_rng(6).uniform(-0.999, 0.999, (256, act_dim)), jnp.float32)

    @jax.jit
    def run(p, q, o, e, acts):
        a, lp_fwd = jax.vmap(lambda oo, ee: pol.sample_and_log_prob(p, oo, ee))(o, e)
        return dict(
            x=jax.vmap(lambda oo, ee: pol.sample(p, oo, ee))(o, e), a=a, lp_fwd=lp_fwd,
            e_back=jax.vmap(lambda oo, aa: pol.infer_noise(p, oo, aa))(o, a),
            lp=jax.vmap(lambda oo, aa: pol.log_prob(p, oo, aa))(o, a),
            e_act=jax.vmap(lambda oo, aa: pol.infer_noise(p, oo, aa))(o, acts),
            a_back=jax.vmap(lambda oo, aa: pol.sample(p, oo, pol.infer_noise(p, oo, aa)))(o, acts),
            lp_acts=jax.vmap(lambda oo, aa: pol.log_prob(p, oo, aa))(o, acts),
            lr=jax.vmap(lambda oo, ee: pol.log_ratio(p, q, oo, ee))(o, e),
            lp_new=jax.vmap(lambda oo, aa: pol.log_prob(q, oo, aa))(o, a),
            g_lr=jax.vmap(lambda oo, ee: jax.grad(lambda qq: pol.log_ratio(p, qq, oo, ee))(q))(o, e),
            g_lp=jax.vmap(lambda oo, ee: jax.grad(lambda pp: pol.sample_and_log_prob(pp, oo, ee)[1])(p))(o, e),
            g_a=jax.vmap(lambda oo, ee: jax.grad(lambda pp: jnp.sum(pol.sample(pp, oo, ee)))(p))(o, e))

    r = run(params, new, obs, eps, actions)
    ok = np.max(np.abs(np.asarray(r["x"])), axis=1) < 1 - 1e-3
    ok_a = np.max(np.abs(np.asarray(r["e_act"])), axis=1) < 12.0   # ε beyond float32's range (documented)
    assert ok.mean() > 0.8 and ok_a.mean() > 0.8
    np.testing.assert_array_equal(np.asarray(r["a"]), np.asarray(r["x"]))
    np.testing.assert_allclose(np.asarray(r["a_back"])[ok_a], np.asarray(actions)[ok_a], atol=tol)
    lp_diff = np.asarray(r["lp_new"]) - np.asarray(r["lp"])
    for got, want in ((r["e_back"], eps), (r["lp_fwd"], r["lp"]), (r["lr"], lp_diff)):
        np.testing.assert_allclose(np.asarray(got)[ok], np.asarray(want)[ok], atol=tol * 10, rtol=tol)

    base = random_params(pol.init, 10, 0.5)
    corners = [[60.0, 60.0, 60.0, -60.0], [-60.0, 60.0, -60.0, -60.0], [0.0, 60.0, 60.0, 0.0], [60.0, -60.0, 0.0, 0.0]]
    heads = [with_head(base, jnp.asarray(h, jnp.float32)) for h in corners]
    grid = np.array(np.meshgrid([-40.0, -13.0, -8.0, -3.0, 0.0, 3.0, 8.0, 13.0, 40.0], [-40.0, 0.0, 40.0]))
    grid = grid.reshape(2, -1).T
    eps_x = jnp.asarray(np.resize(grid, (256, act_dim)), jnp.float32)
    acts_x = jnp.asarray(np.resize(np.array([-1.0, -0.9999999, 0.0, 0.9999999, 1.0]), (256, act_dim)), jnp.float32)
    for p, q in zip(heads, heads[1:] + heads[:1]):
        for p, q in ((p, q), (q, p)):
            out = run(p, q, obs, eps_x, acts_x)
            for name, leaf in jax.tree_util.tree_leaves_with_path(out):
                assert np.all(np.isfinite(np.asarray(leaf))), name
            assert np.all(np.abs(np.asarray(out["x"])) <= 1.0)

    # log_ratio where x^α is within e^{-30} … e^{-400} of 1 (small β, ε up to 10), where float32
    # cannot hold 1 − x^α: against a float64 NumPy reference that can (E = −log Φ(−ε)).
    from scipy.special import log_ndtr as np_log_ndtr
    raw_old, raw_new = np.array([-60.0, -60.0, 60.0, 60.0]), np.array([0.5, -1.0, 2.0, 5.0])
    eps_n = np.resize(np.array(np.meshgrid(np.linspace(1.5, 10.0, 16), np.linspace(1.5, 10.0, 16))).reshape(2, -1).T,
                      (256, act_dim))
    lr_n = run(with_head(base, jnp.asarray(raw_old, jnp.float32)), with_head(base, jnp.asarray(raw_new, jnp.float32)),
               obs, jnp.asarray(eps_n, jnp.float32), acts_x)["lr"]
    with jax.enable_x64(True):
        (la0, lb0, _), (la1, lb1, _) = (jax.tree_util.tree_map(np.asarray, kumaraswamy_parameters(jnp.asarray(r)))
                                        for r in (raw_old, raw_new))
    e_ = -np_log_ndtr(-eps_n)                                  # E ~ Exp(1)
    w_ = np.exp(-e_ / np.exp(lb0))                            # 1 − x^{α0}
    log_x = np.log1p(-w_) / np.exp(la0)
    lp0 = la0 + lb0 + (np.exp(la0) - 1) * log_x - (np.exp(lb0) - 1) * e_ / np.exp(lb0)
    lp1 = la1 + lb1 + (np.exp(la1) - 1) * log_x + (np.exp(lb1) - 1) * np.log(-np.expm1(np.exp(la1) * log_x))
    assert np.max(e_ / np.exp(lb0)) > 300 and np.min(e_ / np.exp(lb0)) < 30
    np.testing.assert_allclose(np.asarray(lr_n, np.float64), np.sum(lp1 - lp0, axis=1), rtol=1e-5, atol=1e-3)


def test_kumaraswamy_pathwise_gradient_matches_the_density_gradient_float64():
    """∇_θ E[f(a)], f(a) = sin(3a) + a²: the reparameterised estimator E_ε[∇_θ f(sample(θ, ε))]
    (tanh-sinh quadrature over u = Φ(ε), so no Monte-Carlo error) equals the gradient of
    ∫ f(a) π_θ(a) da (quadrature over a, differentiated through log_prob), and both equal a
    central finite difference of that integral along a random direction."""
    pol = kumaraswamy_policy(OBS_DIM, 1, hidden=HIDDEN)
    x, w, u, one_minus_u = tanh_sinh()
    f = lambda a: jnp.sin(3.0 * a) + a**2
    with jax.enable_x64(True):
        params = with_head(random_params(pol.init, 7, 0.5, np.float64), jnp.asarray([0.8, -0.7]), 0.5)
        obs = normal(8, (OBS_DIM,), np.float64)
        eps = normal_of_uniform(u, one_minus_u)
        ww, xx = jnp.asarray(w), jnp.asarray(x)

        def pathwise(p):
            return 0.5 * jnp.sum(ww * jax.vmap(lambda e: f(pol.sample(p, obs, e[None])[0]))(eps))

        def density(p):
            return jnp.sum(ww * f(xx) * jnp.exp(jax.vmap(lambda a: pol.log_prob(p, obs, a[None]))(xx)))

        direction = random_params(pol.init, 9, 1.0, np.float64)

        @jax.jit
        def run(params):
            e_path, g_path = jax.value_and_grad(pathwise)(params)
            e_dens, g_dens = jax.value_and_grad(density)(params)
            la, _, _ = kumaraswamy_parameters(mlp(OBS_DIM, 2, HIDDEN).apply(params["net"], obs))
            return e_path, g_path, e_dens, g_dens, la

        e_path, g_path, e_dens, g_dens, la = run(params)
        h = 1e-5
        shift = lambda s: jax.tree_util.tree_map(lambda p, d: p + s * d, params, direction)
        fd = (run(shift(h))[2] - run(shift(-h))[2]) / (2 * h)          # the same compiled program
    assert float(jnp.exp(la[0])) > 0.8
    assert abs(float(e_path - e_dens)) < 1e-9
    flat = lambda t: np.concatenate([np.ravel(v) for v in jax.tree_util.tree_leaves(t)])
    np.testing.assert_allclose(flat(g_path), flat(g_dens), atol=1e-8, rtol=1e-7)
    assert np.max(np.abs(flat(g_path))) > 1e-2
    assert abs(float(np.dot(flat(g_path), flat(direction))) - float(fd)) < 1e-6 * max(1.0, abs(float(fd)))


def test_kumaraswamy_bad_input_names_the_argument():
    pol = kumaraswamy_policy(OBS_DIM, 1, hidden=HIDDEN)
    params = random_params(pol.init, 0)
    obs = jnp.zeros(OBS_DIM)
    with pytest.raises(ValueError, match="action"):
        pol.log_prob(params, obs, jnp.asarray([1.5]))
    with pytest.raises(ValueError, match="action"):
        pol.infer_noise(params, obs, jnp.asarray([jnp.nan]))
    with pytest.raises(ValueError, match="eps"):
        pol.sample(params, obs, jnp.zeros(2))
    with pytest.raises(ValueError, match="log_alpha_min"):
        kumaraswamy_policy(OBS_DIM, 1, log_alpha_min=2.0, log_alpha_max=1.0)
    with pytest.raises(ValueError, match="max_median_logit"):
        kumaraswamy_policy(OBS_DIM, 1, max_median_logit=0.0)
    with pytest.raises(ValueError, match="act_dim"):
        kumaraswamy_policy(OBS_DIM, 0)


# =========================================================================== Gumbel-softmax
LEVELS = (-1.0, 0.0, 1.0)


def combos(act_dim, k):
    return np.stack(np.meshgrid(*[np.arange(k)] * act_dim, indexing="ij"), -1).reshape(-1, act_dim)


def test_categorical_pmf_sums_to_one_kl_and_hard_sample_consistency_float64():
    """Σ over the K^m level vectors of exp(log_prob) = 1 (both modes share log_prob); the hard
    policy's samples are levels exactly, sample_and_log_prob = (sample, log_prob(sample)),
    log_ratio = log_prob(new, a) − log_prob(old, a); kl = the exact categorical KL; the relaxed
    policy's sample_and_log_prob gives the hard choice's log P, its sample lies in [c_1, c_K], and
    its log_ratio is log q_new(y) − log q_old(y) with ``distributions.gumbel_softmax``'s Concrete
    density q at y = softmax((l_old + g)/τ)."""
    act_dim = 2
    hard = gumbel_softmax_policy(OBS_DIM, act_dim, HIDDEN, levels=LEVELS, hard=True)
    soft = gumbel_softmax_policy(OBS_DIM, act_dim, HIDDEN, levels=LEVELS)
    c = np.asarray(LEVELS)
    grid = combos(act_dim, 3)
    with jax.enable_x64(True):
        params = random_params(hard.init, 12, 1.0, np.float64)
        new = jax.tree_util.tree_map(lambda p, q: p + 0.5 * q, params, random_params(hard.init, 13, 1.0, np.float64))
        obs = normal(14, (OBS_DIM,), np.float64)
        eps = normal(15, (512, act_dim, 3), np.float64)

        @jax.jit
        def run(params, new, obs, eps):
            lp_grid = jax.vmap(lambda a: hard.log_prob(params, obs, a))(jnp.asarray(c[grid]))
            a, lp = jax.vmap(lambda e: hard.sample_and_log_prob(params, obs, e))(eps)
            lp_back = jax.vmap(lambda aa: hard.log_prob(params, obs, aa))(a)
            lr = jax.vmap(lambda e: hard.log_ratio(params, new, obs, e))(eps)
            lp_new = jax.vmap(lambda aa: hard.log_prob(new, obs, aa))(a)
            logits = [mlp(OBS_DIM, act_dim * 3, HIDDEN).apply(p["net"], obs).reshape(act_dim, 3) for p in (params, new)]
            a_soft, lp_soft = jax.vmap(lambda e: soft.sample_and_log_prob(params, obs, e))(eps)
            lr_soft = jax.vmap(lambda e: soft.log_ratio(params, new, obs, e))(eps)
            concrete, tau = D.gumbel_softmax(), 0.5       # the policy's default temperature

            def concrete_ratio(e):
                y = jax.nn.softmax((logits[0] - log_neg_log_ndtr(e)) / tau, -1)        # g = −log_neg_log_ndtr(ε)
                return jnp.sum(concrete.log_prob({"logits": logits[1], "temperature": tau}, y)
                               - concrete.log_prob({"logits": logits[0], "temperature": tau}, y))

            lr_ref = jax.vmap(concrete_ratio)(eps)
            return (lp_grid, a, lp, lp_back, lr, lp_new, hard.kl(params, new, obs), logits, a_soft, lp_soft,
                    lr_soft, lr_ref)

        lp_grid, a, lp, lp_back, lr, lp_new, kl, (l0, l1), a_soft, lp_soft, lr_soft, lr_ref = run(params, new, obs, eps)
        p0, p1 = jax.nn.softmax(l0, -1), jax.nn.softmax(l1, -1)
        kl_ref = jnp.sum(p0 * (jnp.log(p0) - jnp.log(p1)))
    assert abs(float(np.sum(np.exp(np.asarray(lp_grid)))) - 1.0) < 1e-13
    assert np.all(np.isin(np.asarray(a), c))
    np.testing.assert_allclose(lp, lp_back, atol=1e-13)
    np.testing.assert_allclose(lr, np.asarray(lp_new) - np.asarray(lp), atol=1e-12)
    assert abs(float(kl) - float(kl_ref)) < 1e-13
    assert soft.kl is None
    np.testing.assert_allclose(lp_soft, lp, atol=1e-13)       # the same k* from the same ε
    assert np.all((np.asarray(a_soft) >= -1) & (np.asarray(a_soft) <= 1))
    assert not np.all(np.isin(np.asarray(a_soft), c))
    np.testing.assert_allclose(lr_soft, lr_ref, atol=1e-9, rtol=1e-9)   # the Concrete density ratio


def test_categorical_score_gradient_is_unbiased_for_the_discrete_objective():
    """hard=True: the score-function estimator SHAC builds from ``log_ratio``,
    f(a) ∇_θ log_ratio(θ_old, θ, ε) at θ = θ_old, a = sample(θ_old, ε), averaged over 40k draws,
    equals the exact ∇_θ Σ_k P_θ(k) f(c_k) (enumeration of the 9 level pairs) within 5 standard
    errors per parameter; the Gumbel-max frequencies match softmax(l); the straight-through
    pathwise gradient is that of the relaxed mixture."""
    act_dim, n = 2, 40_000
    hard = gumbel_softmax_policy(OBS_DIM, act_dim, HIDDEN, levels=LEVELS, hard=True)
    soft = gumbel_softmax_policy(OBS_DIM, act_dim, HIDDEN, levels=LEVELS)
    c = np.asarray(LEVELS)
    grid = jnp.asarray(c[combos(act_dim, 3)])
    f = lambda a: jnp.sin(2.0 * a[0] + 1.0) + a[0] * a[1] + 0.3 * a[1]
    with jax.enable_x64(True):
        params = random_params(hard.init, 16, 1.0, np.float64)
        obs = normal(17, (OBS_DIM,), np.float64)
        eps = normal(18, (n, act_dim, 3), np.float64)

        def exact(p, obs):
            lp = jax.vmap(lambda a: hard.log_prob(p, obs, a))(grid)
            return jnp.sum(jnp.exp(lp) * jax.vmap(f)(grid))

        @jax.jit
        def run(params, obs, eps):
            def one(e):
                a = hard.sample(params, obs, e)
                g = jax.grad(lambda p: hard.log_ratio(params, p, obs, e))(params)
                return a, jax.tree_util.tree_map(lambda x: f(a) * x, g)

            a, g = jax.vmap(one)(eps)
            logits = mlp(OBS_DIM, act_dim * 3, HIDDEN).apply(params["net"], obs).reshape(act_dim, 3)
            st = jax.grad(lambda p: jnp.sum(hard.sample(p, obs, eps[0])))(params)
            rel = jax.grad(lambda p: jnp.sum(soft.sample(p, obs, eps[0])))(params)
            return a, g, jax.grad(exact)(params, obs), jax.nn.softmax(logits, -1), st, rel

        a, g, g_exact, probs, st, rel = run(params, obs, eps)
    flat = lambda t, lead=(): np.concatenate([np.reshape(v, lead + (-1,)) for v in jax.tree_util.tree_leaves(t)], -1)
    samples, want = flat(g, (n,)), flat(g_exact)
    se = samples.std(0) / np.sqrt(n)
    z = np.abs(samples.mean(0) - want) / np.maximum(se, 1e-12)
    assert np.max(z) < 5.0, np.max(z)
    assert np.max(np.abs(want)) > 10 * np.max(se)            # the gradient is resolved, not ≈ 0
    for i in range(act_dim):
        freq = np.array([(np.asarray(a[:, i]) == ck).mean() for ck in c])
        np.testing.assert_allclose(freq, probs[i], atol=5 * np.sqrt(0.25 / n))
    np.testing.assert_allclose(flat(st), flat(rel), atol=1e-14)
    assert np.max(np.abs(flat(st))) > 0


def test_relaxed_score_and_pathwise_estimators_are_unbiased_for_the_relaxed_objective():
    """hard=False, K = 2: E[f(a)] is a 1-D integral over the logistic difference of the two
    Gumbels, a(v) = c_2 + (c_1 − c_2) sigmoid((l_1 − l_2 + logit v)/τ), v ~ U(0, 1) (tanh-sinh
    quadrature, float64). The pathwise estimator ∇_θ f(sample(θ, ε)) and the score-function
    estimator f(a) ∇_θ log_ratio(θ_old, θ, ε) (the Concrete density ratio) both match its exact
    gradient within 5 standard errors over 40k draws."""
    n, tau, levels = 40_000, 0.7, (-1.0, 0.6)
    f = lambda a: jnp.sin(2.0 * a + 0.5) + a**2
    _, w, v_nodes, _ = tanh_sinh()
    flat = lambda t, lead=(): np.concatenate([np.reshape(v, lead + (-1,)) for v in jax.tree_util.tree_leaves(t)], -1)
    with jax.enable_x64(True):
        pol = gumbel_softmax_policy(OBS_DIM, 1, HIDDEN, levels=levels, temperature=tau)
        net = mlp(OBS_DIM, 2, HIDDEN)
        params = random_params(pol.init, 21, 1.0, np.float64)
        obs = normal(20, (OBS_DIM,), np.float64)
        eps = normal(22, (n, 1, 2), np.float64)

        @jax.jit
        def run(params, obs, eps, v, w):
            def one(e):
                a = pol.sample(params, obs, e)[0]
                g_path = jax.grad(lambda p: f(pol.sample(p, obs, e)[0]))(params)
                g_score = jax.grad(lambda p: pol.log_ratio(params, p, obs, e))(params)
                return g_path, jax.tree_util.tree_map(lambda x: f(a) * x, g_score)

            def exact(p):
                l = net.apply(p["net"], obs)
                y1 = jax.nn.sigmoid((l[0] - l[1] + jnp.log(v) - jnp.log1p(-v)) / tau)
                return jnp.sum(0.5 * w * f(levels[1] + (levels[0] - levels[1]) * y1))

            return jax.vmap(one)(eps), jax.grad(exact)(params)

        (g_path, g_score), g_exact = run(params, obs, eps, jnp.asarray(v_nodes), jnp.asarray(w))
    want = flat(g_exact)
    for est in (flat(g_path, (n,)), flat(g_score, (n,))):
        se = est.std(0) / np.sqrt(n)
        assert np.max(np.abs(est.mean(0) - want) / se) < 5.0
        assert np.max(np.abs(want)) > 10 * np.max(se)        # the gradient is resolved, not ≈ 0


def test_categorical_infer_noise_reproduces_the_action():
    """sample(infer_noise(a)) = a: relaxed K = 3 at random a (float64, 1e-10), levels for
    hard=True; K = 2 relaxed: the pathwise derivative (along a random parameter direction) at the
    inferred ε equals the one at the original ε (the draw's y is unique, g up to a shift)."""
    with jax.enable_x64(True):
        obs = normal(22, (64, OBS_DIM), np.float64)
        soft = gumbel_softmax_policy(OBS_DIM, 2, HIDDEN, levels=LEVELS)
        hard = gumbel_softmax_policy(OBS_DIM, 2, HIDDEN, levels=LEVELS, hard=True)
        two = gumbel_softmax_policy(OBS_DIM, 1, HIDDEN, levels=(-0.5, 1.0), temperature=0.3)
        p3, p2 = random_params(soft.init, 23, 1.0, np.float64), random_params(two.init, 24, 1.0, np.float64)
        acts = jnp.asarray(np.random.default_rng(25).uniform(-0.999, 0.999, (64, 2)))
        lv = jnp.asarray(np.asarray(LEVELS)[np.random.default_rng(26).integers(0, 3, (64, 2))])
        eps2 = normal(27, (64, 1, 2), np.float64)

        @jax.jit
        def run(p3, p2, obs, acts, lv, eps2):
            back = jax.vmap(lambda o, a: soft.sample(p3, o, soft.infer_noise(p3, o, a)))(obs, acts)
            back_h = jax.vmap(lambda o, a: hard.sample(p3, o, hard.infer_noise(p3, o, a)))(obs, lv)

            def jac(o, e):
                a = two.sample(p2, o, e)
                e_hat = two.infer_noise(p2, o, a)
                j = lambda ee: jax.jvp(lambda p: two.sample(p, o, ee), (p2,), (tangent,))[1]
                return a, two.sample(p2, o, e_hat), j(e), j(e_hat)

            return back, back_h, jax.vmap(jac)(obs, eps2)

        tangent = random_params(two.init, 31, 1.0, np.float64)
        back, back_h, (a2, a2_back, j_orig, j_hat) = run(p3, p2, obs, acts, lv, eps2)
    np.testing.assert_allclose(back, acts, atol=1e-10)
    np.testing.assert_array_equal(back_h, lv)
    np.testing.assert_allclose(a2_back, a2, atol=1e-10)
    np.testing.assert_allclose(j_hat, j_orig, atol=1e-8)
    assert np.max(np.abs(np.asarray(j_orig))) > 1e-2


def test_categorical_float32_extreme_logits_stay_finite():
    """float32, logits ±80 and ε up to ±40: samples in [c_1, c_K], log-probabilities, log_ratio
    (both modes), kl, infer_noise and the gradients of log_ratio and of the sample finite."""
    base = random_params(gumbel_softmax_policy(OBS_DIM, 2, HIDDEN).init, 28, 0.5)
    obs = normal(29, (OBS_DIM,))
    eps = jnp.asarray(np.random.default_rng(30).choice([-40.0, -13.0, -5.0, 0.0, 5.0, 13.0, 40.0], (16, 2, 3)),
                      jnp.float32)
    biases = [np.array([80.0, -80.0, 0.0, -80.0, 80.0, 80.0]), np.array([-80.0, -80.0, 80.0, 0.0, 0.0, 0.0]),
              np.zeros(6)]
    pols = [gumbel_softmax_policy(OBS_DIM, 2, HIDDEN, levels=LEVELS, temperature=0.1, hard=h) for h in (False, True)]

    @jax.jit
    def run(p, q):
        outs = []
        for pol in pols:       # both modes in one compiled program
            a, lp = jax.vmap(lambda e: pol.sample_and_log_prob(p, obs, e))(eps)
            lr = jax.vmap(lambda e: pol.log_ratio(p, q, obs, e))(eps)
            g_lr = jax.vmap(lambda e: jax.grad(lambda qq: pol.log_ratio(p, qq, obs, e))(q))(eps)
            g_a = jax.vmap(lambda e: jax.grad(lambda pp: jnp.sum(pol.sample(pp, obs, e)))(p))(eps)
            lp_back = jax.vmap(lambda aa: pol.log_prob(p, obs, aa))(a)
            e_back = jax.vmap(lambda aa: pol.infer_noise(p, obs, aa))(a)
            kl = pol.kl(p, q, obs) if pol.kl is not None else jnp.zeros(())
            outs.append((a, lp, lr, g_lr, g_a, lp_back, e_back, kl))
        return outs

    for b0 in biases:
        for b1 in biases:
            p, q = (with_head(base, jnp.asarray(b, jnp.float32)) for b in (b0, b1))
            for out in run(p, q):
                for leaf in jax.tree_util.tree_leaves(out):
                    assert np.all(np.isfinite(np.asarray(leaf)))
                assert np.all(np.abs(np.asarray(out[0])) <= 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"levels": (0.0, -1.0)}, "levels"), ({"levels": (1.0,)}, "levels"), ({"levels": 1}, "levels"),
    ({"levels": (0.0, np.inf)}, "levels"), ({"temperature": 0.0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"), ({"hard": 1}, "hard"),
])
def test_categorical_bad_config_names_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        gumbel_softmax_policy(OBS_DIM, 1, HIDDEN, **kwargs)


def test_categorical_bad_input_names_the_argument():
    pol = gumbel_softmax_policy(OBS_DIM, 1, HIDDEN, levels=(-0.5, 0.5))
    params = random_params(pol.init, 0)
    obs = jnp.zeros(OBS_DIM)
    with pytest.raises(ValueError, match="action"):
        pol.log_prob(params, obs, jnp.asarray([0.7]))
    with pytest.raises(ValueError, match="eps"):
        pol.sample(params, obs, jnp.zeros(2))
    five = gumbel_softmax_policy(OBS_DIM, 1, HIDDEN, levels=5, hard=True)   # an int K: linspace(-1, 1, K)
    p5 = random_params(five.init, 1)
    mode, a = jax.jit(lambda: (pol.sample(params, obs, None), five.sample(p5, obs, jnp.zeros((1, 5)))))()
    assert float(mode[0]) in (-0.5, 0.5)
    assert np.min(np.abs(np.asarray(a)[0] - np.linspace(-1.0, 1.0, 5))) == 0.0


# =========================================================================== agents
def shac_case(which):
    if which == "kumaraswamy_pendulum":
        return None, kumaraswamy_policy(3, 1, (8,))
    return envs.make("quantized_thruster"), gumbel_softmax_policy(1, 1, (8,), levels=LEVELS)


SHAC_CFG = shac.SHACConfig(env="pendulum", num_envs=4, horizon=4, iterations=2, eval_every=2, eval_envs=2,
                           actor_hidden=(8,), critic_hidden=(8,), critic_iterations=1, critic_minibatches=1,
                           estimator="auto")


CASES = ["kumaraswamy_pendulum", "gumbel_softmax_quantized_thruster"]


@pytest.mark.parametrize("which", CASES)
def test_shac_auto_update_traces_with_each_policy(which):
    """Cheap (no compile): make_agent accepts the bundle (``check_policy`` traces it) and one
    SHAC update with estimator="auto" traces (``jax.eval_shape``): the score-function path calls
    the bundle's ``log_ratio`` with the agent's N(0, I) noise of shape [n+1, B, *noise_shape]."""
    env, pol = shac_case(which)
    agent = shac.make_agent(SHAC_CFG, env=env, policy=pol)
    hp = SHAC_CFG.hparams()
    state = jax.eval_shape(agent.init, jax.random.key(0), hp)
    new_state, m = jax.eval_shape(agent.update, state, hp, jax.random.key(1))
    assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    assert "fallback_envs" in m and m["actor_loss"].shape == ()


@pytest.mark.heavy
@pytest.mark.parametrize("which", CASES)
def test_one_shac_auto_update_with_each_policy_is_finite(which):
    """One SHAC update (estimator="auto": pathwise and score-function per env) is finite: the
    Kumaraswamy policy on pendulum; the relaxed Gumbel-softmax policy over the levels (−1, 0, 1)
    on the quantized thruster, whose pathwise gradient is exactly 0 (every env falls back to the
    score-function gradient, which is nonzero). Heavy: ~10–20 s of XLA compile each on 2 cores."""
    env, pol = shac_case(which)
    agent = shac.make_agent(SHAC_CFG, env=env, policy=pol)
    hp = SHAC_CFG.hparams()
    state = agent.init(jax.random.key(0), hp)
    new_state, m = jax.jit(agent.update)(state, hp, jax.random.key(1))
    for k in ("actor_loss", "critic_loss", "grad_norm", "window_return"):
        assert np.isfinite(float(m[k])), k
    assert float(m["grad_norm"]) > 0 and int(m["skipped_updates"]) == 0 and int(m["masked_envs"]) == 0
    changed = jax.tree_util.tree_map(lambda a, b: bool(jnp.any(a != b)), state.policy_params, new_state.policy_params)
    assert any(jax.tree_util.tree_leaves(changed))
    if env is not None:
        assert float(m["max_env_grad_norm"]) == 0.0 and int(m["fallback_envs"]) == SHAC_CFG.num_envs
