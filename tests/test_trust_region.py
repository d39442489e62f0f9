"""The KL trust-region policy step: CG, KL estimators, the radius rule, and the acceptance property."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mbpo_grad import trust_region as TR
from mbpo_grad.bijectors import soft_clip
from mbpo_grad.nn import mlp
from mbpo_grad.policies import flow, gaussian


def test_conjugate_gradient_solves_spd_systems():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        A = rng.normal(size=(6, 6))
        A = A @ A.T + 0.5 * np.eye(6)
        b = {"x": jnp.asarray(rng.normal(size=(2,))), "y": jnp.asarray(rng.normal(size=(4,)))}
        Aj = jnp.asarray(A)

        def matvec(v):
            flat = jnp.concatenate([v["x"], v["y"]])
            out = Aj @ flat
            return {"x": out[:2], "y": out[2:]}

        x = TR.conjugate_gradient(matvec, b, iters=6)
        want = np.linalg.solve(A, np.concatenate([np.asarray(b["x"]), np.asarray(b["y"])]))
        np.testing.assert_allclose(np.concatenate([np.asarray(x["x"]), np.asarray(x["y"])]), want, rtol=1e-8)


def test_monte_carlo_kl_matches_the_closed_form_for_squashed_gaussians():
    """KL is invariant under tanh, so the squashed policies' KL is the pre-squash Gaussians' closed form."""
    with jax.enable_x64(True):
        obs_dim, act_dim = 3, 2
        pol = gaussian(obs_dim, act_dim, (8,), state_dependent_std=False)
        net = mlp(obs_dim, act_dim, (8,))
        f64 = lambda t: jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), t)
        old = f64(pol.init(jax.random.PRNGKey(0)))
        old["log_std"] = jnp.array([-0.5, -0.8])
        new = jax.tree_util.tree_map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape, x.dtype), old)
        obs = jax.random.normal(jax.random.PRNGKey(2), (4, obs_dim), jnp.float64)

        def stats(p):
            mu = jax.vmap(lambda o: net.apply(p["net"], o))(obs)
            return mu, jnp.broadcast_to(soft_clip(p["log_std"], -5.0, 2.0), mu.shape)

        closed = float(jnp.mean(TR.gaussian_kl(*stats(old), *stats(new))))
        n = 20_000
        obs_rep = jnp.repeat(obs, n, axis=0)
        eps = jax.random.normal(jax.random.PRNGKey(3), (4 * n, act_dim), jnp.float64)

        @jax.jit
        def estimates(old, new):
            a = jax.vmap(pol.sample, in_axes=(None, 0, 0))(old, obs_rep, eps)
            log_r = (jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(new, obs_rep, a)
                     - jax.vmap(pol.log_prob, in_axes=(None, 0, 0))(old, obs_rep, a))
            out = {}
            for estimator, terms in (("k1", -log_r), ("k3", jnp.expm1(log_r) - log_r)):
                out[estimator] = (TR.kl_monte_carlo(pol, old, new, obs_rep, eps, estimator=estimator),
                                  jnp.std(terms) / jnp.sqrt(4.0 * n))   # sampling error of the mean
            return out

        assert closed > 1e-3
        for estimator, (mc, se) in estimates(old, new).items():
            assert abs(float(mc) - closed) < 4 * float(se) + 1e-9, (estimator, float(mc), closed, float(se))
        # k3 is never negative, even on a tiny batch
        small = TR.kl_monte_carlo(pol, old, new, obs, eps[:4])
        assert float(small) >= 0.0


def _quadratic_problem(c, sigma):
    """μ = w (obs-free Gaussian), KL(w0 ‖ w) = Σ (w − w0)² / (2σ²) exactly, objective c·w."""
    def kl_from(w0):
        return lambda w: jnp.sum((w - w0) ** 2) / (2 * sigma**2)
    return (lambda w: jnp.dot(c, w)), kl_from


def test_exact_quadratic_model_takes_the_full_step_and_grows_the_radius():
    with jax.enable_x64(True):
        c = jnp.array([3.0, -4.0])
        sigma, radius = 0.5, 0.02
        objective, kl_from = _quadratic_problem(c, sigma)
        w0 = jnp.array([0.1, 0.2])
        state = TR.init(radius)
        new, state2, info = TR.step(objective, kl_from(w0), w0, state, damping=0.0, max_radius=1.0)
        # natural gradient F⁻¹ c = σ² c; the step scaled to ½ΔᵀFΔ = δ: Δ = √(2δ) σ c / |c|
        want = w0 + np.sqrt(2 * radius) * sigma * np.asarray(c) / np.linalg.norm(c)
        np.testing.assert_allclose(np.asarray(new), want, rtol=1e-10)
        assert bool(info.accepted) and int(info.backtracks) == 0
        assert float(info.kl) == pytest.approx(radius, rel=1e-10)
        assert float(info.ratio) == pytest.approx(1.0, rel=1e-10)          # a linear objective: exact model
        assert float(state2.radius) == pytest.approx(2 * radius, rel=1e-6)  # ρ > 0.75 at the full step: grow


def test_poor_model_shrinks_the_radius_or_rejects():
    with jax.enable_x64(True):
        c = jnp.array([1.0, 0.0])
        sigma, radius = 1.0, 0.5
        _, kl_from = _quadratic_problem(c, sigma)
        w0 = jnp.zeros(2)
        # L(w) = c·w − κ|w|²: along the step of length t = √(2δ)·σ = 1, actual = t − κ t², predicted = t.
        for kappa, accepted_k0, want_radius in ((0.9, True, 0.25), (0.5, True, 0.5)):
            objective = lambda w, k=kappa: jnp.dot(c, w) - k * jnp.sum(w**2)
            new, st2, info = TR.step(objective, kl_from(w0), w0, TR.init(radius), damping=0.0, natural=False,
                                     accept_ratio=0.0)
            assert bool(info.accepted) == accepted_k0 and int(info.backtracks) == 0
            assert float(info.ratio) == pytest.approx(1.0 - kappa, rel=1e-9)
            assert float(st2.radius) == pytest.approx(want_radius, rel=1e-6)
        # κ = 2: the full step loses (ρ = −1); backtracking to t/2 gives ρ = 0 (not ≥ 0.1), t/4 gives ρ = 0.5
        objective = lambda w: jnp.dot(c, w) - 2.0 * jnp.sum(w**2)
        new, st2, info = TR.step(objective, kl_from(w0), w0, TR.init(radius), damping=0.0, natural=False,
                                 accept_ratio=0.1)
        assert bool(info.accepted) and int(info.backtracks) == 2
        np.testing.assert_allclose(np.asarray(new), [0.25, 0.0], rtol=1e-10)
        assert float(st2.radius) == pytest.approx(radius, rel=1e-6)   # 0.25 ≤ ρ = 0.5 ≤ 0.75: unchanged
        # nothing acceptable within the backtracks: parameters unchanged, radius shrinks
        objective = lambda w: -jnp.dot(c, w) ** 2 + 1e-9 * jnp.dot(c, w)
        new, st2, info = TR.step(objective, kl_from(w0), w0, TR.init(radius), damping=0.0, natural=False,
                                 accept_ratio=0.5, max_backtracks=3)
        assert not bool(info.accepted)
        np.testing.assert_array_equal(np.asarray(new), np.asarray(w0))
        assert float(st2.radius) == pytest.approx(radius / 2, rel=1e-6)


OBS, ACT, B = 2, 2, 16
_POL = gaussian(OBS, ACT, (8,))


def _tr_problem(seed, log_scale, log_radius, natural, accept_ratio):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    params = jax.tree_util.tree_map(lambda x: x.astype(jnp.float64), _POL.init(k[0]))
    obs = jax.random.normal(k[1], (B, OBS), jnp.float64)
    eps = jax.random.normal(k[2], (B, ACT), jnp.float64)
    eps_kl = jax.random.normal(k[3], (B, ACT), jnp.float64)
    target = jax.random.uniform(k[4], (B, ACT), jnp.float64, -1.0, 1.0)
    lin = jax.random.normal(k[5], (B, ACT), jnp.float64)
    scale = 10.0**log_scale

    def objective(p):   # a random smooth "critic" of reparameterised actions
        a = jax.vmap(_POL.sample, in_axes=(None, 0, 0))(p, obs, eps)
        return scale * jnp.mean(jnp.sum(lin * a - (a - target) ** 2, -1))

    def kl(p):
        return TR.kl_monte_carlo(_POL, params, p, obs, eps_kl)

    new, state, info = TR.step(objective, kl, params, TR.init(10.0**log_radius), natural=natural,
                               accept_ratio=accept_ratio, max_radius=10.0)
    return params, new, state, info, kl(new)


_tr_jit = jax.jit(_tr_problem, static_argnums=(3,))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          phases=(Phase.explicit, Phase.reuse, Phase.generate))  # no shrinking: each example compiles nothing but runs ~0.1 s
@given(seed=st.integers(0, 2**31 - 1), log_scale=st.floats(-2.0, 3.0), log_radius=st.floats(-5.0, 0.5),
       natural=st.booleans(), accept_ratio=st.floats(0.0, 0.5))
def test_never_accepts_a_step_whose_measured_kl_exceeds_the_radius(seed, log_scale, log_radius, natural,
                                                                    accept_ratio):
    with jax.enable_x64(True):
        radius = 10.0**log_radius
        old, new, state, info, kl_new = _tr_jit(seed, log_scale, log_radius, natural, accept_ratio)
        # re-measure the KL of what came back, outside the step, eagerly
        kl_eager = float(TR.kl_monte_carlo(_POL, old, new, *_kl_inputs(seed)))
        assert float(info.radius) == pytest.approx(radius, rel=1e-12)
        if bool(info.accepted):
            assert float(info.kl) <= radius
            assert kl_eager <= radius * (1 + 1e-9) + 1e-15
            assert float(info.actual) >= accept_ratio * float(info.predicted)
        else:
            for a, b in zip(jax.tree_util.tree_leaves(new), jax.tree_util.tree_leaves(old)):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
            assert float(state.radius) < radius or float(state.radius) == pytest.approx(1e-6)
        assert 1e-6 * (1 - 1e-6) <= float(state.radius) <= 10.0 * (1 + 1e-6)


def _kl_inputs(seed):
    k = jax.random.split(jax.random.PRNGKey(seed), 6)
    return jax.random.normal(k[1], (B, OBS), jnp.float64), jax.random.normal(k[3], (B, ACT), jnp.float64)


def test_works_with_the_flow_policy():
    pol = flow(2, 2, layers=1, hidden=(4,))
    params = pol.init(jax.random.PRNGKey(0))
    obs = jax.random.normal(jax.random.PRNGKey(1), (8, 2))
    eps = jax.random.normal(jax.random.PRNGKey(2), (8, 2))
    eps_kl = jax.random.normal(jax.random.PRNGKey(3), (8, 2))

    def objective(p):
        a = jax.vmap(pol.sample, in_axes=(None, 0, 0))(p, obs, eps)
        return -jnp.mean((a - 0.5) ** 2)

    @jax.jit
    def go(p, st_):
        return TR.step(objective, lambda q: TR.kl_monte_carlo(pol, p, q, obs, eps_kl), p, st_, cg_iters=3)

    state = TR.init(0.01)
    for _ in range(2):
        new, state2, info = go(params, state)
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree_util.tree_leaves(new))
        if bool(info.accepted):
            assert float(info.kl) <= float(state.radius)
            assert float(objective(new)) > float(objective(params))
        params, state = new, state2
    assert bool(info.accepted) or float(state.radius) < 0.01


def test_bad_arguments():
    with pytest.raises(ValueError, match="radius"):
        TR.init(-1.0)
    with pytest.raises(ValueError, match="max_backtracks"):
        TR.step(lambda w: w.sum(), lambda w: 0.0 * w.sum(), jnp.zeros(2), TR.init(0.1), max_backtracks=0)
    with pytest.raises(TypeError, match="state"):
        TR.step(lambda w: w.sum(), lambda w: 0.0 * w.sum(), jnp.zeros(2), 0.1)
    with pytest.raises(ValueError, match="backtrack"):
        TR.step(lambda w: w.sum(), lambda w: 0.0 * w.sum(), jnp.zeros(2), TR.init(0.1), backtrack=1.5)
