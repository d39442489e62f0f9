"""PPO's own losses on a tabular MDP: their gradients against the exact policy-gradient theorem.

Sampled episodes of a random 4-state, 3-action MDP (γ = 0.8) under a softmax table
π(a|s) = softmax(θ[s]) go through ``agents.ppo.losses`` as the agent uses them:
``advantages_and_targets`` (time-limit cuts bootstrapped with V(o'_t), resets inside the unroll,
the unroll's end bootstrapped) and ``clipped_surrogate`` at ratio one (log π_old = sg(log π_θ)),
with the advantages NOT normalised (normalising them makes a different estimator). ``jax.grad``
in θ, one gradient per unroll, is compared in float64 with exact references (``mbpo_grad.tabular``,
docs/theory.md §6) in units of the Monte-Carlo standard error (max |z| over the S·A entries, and
the cosine of the Monte-Carlo mean with the reference).

Which objective. PPO's surrogate is a plain (weighted) mean over steps: no γ^k visitation weight.
For episodes of L steps from α (k the step inside its episode, p_k = αᵀP_π^k),

    E[ Σ_{k<L} ∇log π(a_k|s_k) A_k ] = Σ_{k<L} Σ_s p_k(s) Σ_a ∇π(a|s) E[A_k | s_k = s, a_k = a],

and with the true values (any λ) E[A_k | s, a] = q(s, a) − v(s) exactly, even at the cut (the
bootstrap there is v itself): the estimate follows the UNDISCOUNTED visitation
d_L = Σ_{k<L} p_k with the discounted q, Σ_s d_L(s) Σ_a ∇π(a|s) q(s, a). That is not ∇J of
J = αᵀv (there the visitation is x_α = Σ_k γ^k p_k; Thomas 2014) and in general not the
gradient of any function (Nota & Thomas 2020). So the tests check two exact statements:

* the discounted objective (``test_reinforce_*``, ``test_gae_*``, ``test_terminating_*``): with the
  weight γ^k passed as the surrogate's ``weights`` (episodes of L = 64 steps, so the missing tail,
  O(γ^L) ≈ 1e-6, is far below the Monte-Carlo error), Σ_k γ^k ∇log π A_k is unbiased for
  ``tabular.policy_gradient`` (REINFORCE with any state baseline; GAE with the true v, any λ) and,
  GAE with a wrong table, for ``tabular.gae_expected_gradient``. With episodes that end with
  probability 1 − γ after each step, PPO's own uniform weighting (the alive mask as ``weights``,
  terminal flags, γ = 1 inside the advantages) estimates ∇J too: there the discount is the
  termination probability.
* the agent's convention (``test_agent_convention_*``): uniform weights, episodes cut by the time
  limit and reset inside the unroll, the unroll ending mid-episode. The exact mean for ANY value
  table and λ is ``_window_mean_gradient`` (finite sums of tabular quantities, checked against the
  closed forms in ``test_window_reference_*``); it is not a multiple of ∇J.

Each statement has a deliberately wrong variant that the same statistics detect (|z| > 10), so the
tests can fail: the uniform weighting against ∇J, an action-dependent baseline, a wrong table with
λ < 1 against ∇J, the agent's estimate against ∇J at the best-fitting scale. Forgetting the
time-limit flags (the advantage running on across a reset) is checked sample by sample instead:
its bias here (only through E[V(o'_t) | s_k, a_k] at the two cuts) is too small for N unrolls.

Cost (~5 s of CPU): the episodes come from ``_sample_episodes``, the layout and law of
``tabular.sample_episodes(termination="geometric")`` drawn by inverse CDF from numpy uniforms (no
PRNG to compile; the discounted and the agent's unrolls ignore the termination draws, which do not
affect states or actions); every unroll has L steps, so one compiled gradient program per advantage
mode serves all; the finite-window references are numpy.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import tabular as tb
from mbpo_grad.agents.ppo import losses

S, A, GAMMA = 4, 3, 0.8
L = 64                         # steps per unroll; γ^L ≈ 6e-7
L_CUT, K_CUTS = 20, 2          # the agent's unroll: 2 episodes cut by the time limit at 20 steps,
L_END = L - K_CUTS * L_CUT     # then 24 steps of a third, where the unroll ends
N = 8192                       # unrolls per Monte-Carlo estimate
N_FEW = 256                    # unrolls for the exact (sample-by-sample) identities
CLIP_EPS = 0.2
Z_MAX, Z_BIASED, COS_MIN = 4.5, 10.0, 0.99

sg = jax.lax.stop_gradient


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _problem():
    """A random MDP (Dirichlet(1) transition rows, N(0, 1) rewards, as ``tabular.random_mdp`` draws them) whose
    episodes all start in state 0, so that the early steps, which the discounted and the undiscounted
    visitations weight differently, matter; θ ~ N(0, 1); a random table (a wrong value table / state
    baseline). Numpy draws: nothing to compile."""
    rng = np.random.default_rng(0)
    mdp = tb.TabularMDP(*(jnp.asarray(x) for x in (rng.dirichlet(np.ones(S), size=(S, A)), rng.normal(size=(S, A)),
                                                   np.eye(S)[0], GAMMA)))
    return mdp, jnp.asarray(rng.normal(size=(S, A))), jnp.asarray(2.0 * rng.normal(size=S))


@jax.jit
def _references(mdp, theta, wrong):
    """The exact references from ``tabular`` (one compiled program)."""
    v = tb.values(mdp, theta)
    refs = {"v": v, "grad": tb.policy_gradient(mdp, theta), "pi": tb.policy_probs(theta),
            "q": tb.q_values(mdp, theta), "P_pi": tb.transition_matrix(mdp, theta)}
    lams = (0.0, 0.5, 0.95)
    tables = jnp.stack([v] * len(lams) + [wrong] * len(lams))
    gae = jax.vmap(tb.gae_expected_gradient, in_axes=(None, None, 0, 0))(mdp, theta, tables, jnp.array(lams * 2))
    for i, (name, lam) in enumerate([("true", lam) for lam in lams] + [("wrong", lam) for lam in lams]):
        refs[f"gae_{name}_{lam}"] = gae[i]
    return refs


@pytest.fixture(scope="module")
def problem(x64):
    mdp, theta, wrong = _problem()
    refs = {k: np.asarray(x) for k, x in _references(mdp, theta, wrong).items()}
    return mdp, theta, jnp.asarray(refs["v"]), wrong, refs


@jax.jit
def _sample_episodes(mdp, theta, u0, u):
    """Episodes of L steps from α under π_θ by inverse-CDF draws from the uniforms u0 [M] (s_0) and u [L, M, 3]
    (a_t, s_{t+1}, and the termination coin), in the layout of ``tabular.sample_episodes`` with
    ``termination="geometric"``: discounts_t = 1 with probability γ (the episode continues past t), else 0.
    (Here rather than ``sample_episodes`` itself only for speed: no PRNG to compile.)"""
    below = lambda cdf, x: jnp.sum(x[..., None] > cdf[..., :-1], -1)   # inverse CDF: #{i : F_i < x}
    cdf_pi, cdf_P = jnp.cumsum(tb.policy_probs(theta), -1), jnp.cumsum(mdp.P, -1)

    def step(s, x):
        a = below(cdf_pi[s], x[:, 0])
        return below(cdf_P[s, a], x[:, 1]), (s, a, mdp.r[s, a], (x[:, 2] < mdp.gamma).astype(x.dtype))

    s_end, (s, a, r, d) = jax.lax.scan(step, below(jnp.cumsum(mdp.alpha), u0), u)
    return tb.Episodes(jnp.concatenate([s, s_end[None]]).T, a.T, r.T, d.T)


@pytest.fixture(scope="module")
def unrolls(problem):
    """Per-unroll inputs [N, L] of every layout below, from disjoint episodes of one sample."""
    mdp, theta = problem[:2]
    rng, M = np.random.default_rng(10), (K_CUTS + 3) * N
    ep = _sample_episodes(mdp, theta, rng.random(M), rng.random((L, M, 3)))
    return _layouts(ep)


# ------------------------------------------------------------------ unrolls in the agent's layout
# (obs o_t, next_obs o'_t before any reset, actions, rewards, terminal, truncated, weights), each [N, L], numpy

def _discounted_unrolls(ep, weighted=True):
    """One episode per unroll, cut by the time limit after its last step; weights γ^k (or 1)."""
    trunc = np.zeros((N, L), bool)
    trunc[:, -1] = True
    w = GAMMA ** np.arange(L) if weighted else np.ones(L)
    return (ep.states[:, :-1], ep.states[:, 1:], ep.actions, ep.rewards, np.zeros_like(trunc), trunc,
            np.broadcast_to(w, (N, L)))


def _terminating_unrolls(ep):
    """Episodes ending after step k with probability 1 − γ (terminal_k: ``discounts_k = 0``); the alive mask
    Π_{j<k} discounts_j as weights (the steps after the end are simulated but weighted out)."""
    alive = np.concatenate([np.ones((N, 1)), np.cumprod(ep.discounts[:, :-1], axis=1)], axis=1)
    return (ep.states[:, :-1], ep.states[:, 1:], ep.actions, ep.rewards, ep.discounts == 0,
            np.zeros((N, L), bool), alive)


def _agent_unrolls(ep, flag_cuts=True):
    """K_CUTS episodes of L_CUT steps (each truncated, then reset from α) and the first L_END steps of one
    more, where the unroll ends (bootstrapped, not flagged); uniform weights. ``flag_cuts=False``: the
    wrong variant that forgets the time-limit flags."""
    def cat(x, tail):
        return np.concatenate([x[:, :K_CUTS, :L_CUT].reshape(N, K_CUTS * L_CUT), tail], axis=1)

    st = ep.states
    trunc = np.zeros((N, L), bool)
    if flag_cuts:
        trunc[:, L_CUT - 1:K_CUTS * L_CUT:L_CUT] = True
    return (cat(st[:, :, :-1], st[:, K_CUTS, :L_END]), cat(st[:, :, 1:], st[:, K_CUTS, 1:L_END + 1]),
            cat(ep.actions, ep.actions[:, K_CUTS, :L_END]), cat(ep.rewards, ep.rewards[:, K_CUTS, :L_END]),
            np.zeros_like(trunc), trunc, np.ones((N, L)))


def _layouts(ep):
    """Disjoint episodes of ``ep`` [(K_CUTS + 3)·N, ...] in every layout above."""
    ep = tb.Episodes(*(np.asarray(x) for x in ep))
    part = lambda i, j: tb.Episodes(*(x[i * N:j * N] for x in ep))
    agent = tb.Episodes(*(x.reshape((N, K_CUTS + 1) + x.shape[1:]) for x in part(2, K_CUTS + 3)))
    return {"discounted": _discounted_unrolls(part(0, 1)), "uniform": _discounted_unrolls(part(0, 1), False),
            "terminating": _terminating_unrolls(part(1, 2)), "agent": _agent_unrolls(agent),
            "leaky": _agent_unrolls(agent, flag_cuts=False)}


# ------------------------------------------------------------------ PPO's gradient on one unroll

def _ppo_gradient(theta, unroll, value_table, baseline_sa, gamma, lam, mode):
    """−∇_θ of PPO's policy loss on one unroll, times Σ_k w_k, i.e. Σ_k w_k ∇log π(a_k|s_k) Â_k (Σ w is a
    constant or, for the alive mask, independent of θ: the per-step mean becomes a sum).

    Â = ``losses.advantages_and_targets`` with V = ``value_table`` at o_t and o'_t, minus the
    action-dependent ``baseline_sa`` (zero except in the wrong variant); the loss is
    ``losses.clipped_surrogate`` at ratio one, log ρ = log π_θ − sg(log π_θ)."""
    obs, next_obs, actions, rewards, terminal, truncated, weights = unroll
    adv, _ = losses.advantages_and_targets(rewards, value_table[obs], value_table[next_obs], terminal, truncated,
                                           gamma, lam, mode)
    adv = adv - baseline_sa[obs, actions]

    def loss(th):
        logp = jax.vmap(tb.log_prob, in_axes=(None, 0, 0))(th, obs, actions)
        return losses.clipped_surrogate(logp - sg(logp), adv, CLIP_EPS, weights) * jnp.sum(weights)

    return -jax.grad(loss)(theta)


@jax.jit
def _gae_jit(theta, unrolls, value_table, lam, gamma, baseline_sa):
    return jax.vmap(lambda u: _ppo_gradient(theta, u, value_table, baseline_sa, gamma, lam, "gae"))(unrolls)


@jax.jit
def _reinforce_jit(theta, unrolls, value_table, gamma, baseline_sa):
    return jax.vmap(lambda u: _ppo_gradient(theta, u, value_table, baseline_sa, gamma, 0.0, "reward_to_go"))(
        unrolls)


def _gae(theta, unrolls, value_table, lam, gamma=GAMMA, baseline_sa=np.zeros((S, A))):
    """Per-unroll gradients [N, S, A], advantage="gae" (every argument passed: one compiled program)."""
    return _gae_jit(theta, unrolls, value_table, lam, gamma, baseline_sa)


def _reinforce(theta, unrolls, value_table, gamma=GAMMA, baseline_sa=np.zeros((S, A))):
    """Per-unroll gradients [N, S, A], advantage="reward_to_go" (REINFORCE with the baseline ``value_table``)."""
    return _reinforce_jit(theta, unrolls, value_table, gamma, baseline_sa)


# ------------------------------------------------------------------ statistics and references

def _z(samples, target):
    """(max |z|, cosine) of the mean of per-unroll gradients [N, S, A] against ``target`` [S, A]."""
    samples, target = np.asarray(samples), np.asarray(target)
    mean = samples.mean(0)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    cos = float(np.sum(mean * target) / (np.linalg.norm(mean) * np.linalg.norm(target)))
    return float(np.max(np.abs(mean - target) / se)), cos


def _best_multiple(samples, direction):
    """c · direction with the c that fits the sample mean best (least squares weighted by 1/se²)."""
    samples, direction = np.asarray(samples), np.asarray(direction)
    iv = samples.shape[0] / samples.var(0, ddof=1)
    return float(np.sum(iv * samples.mean(0) * direction) / np.sum(iv * direction ** 2)) * direction


def _window_mean_gradient(mdp, theta, value_table, lam, weights):
    """Exact E[Σ_{k<n} w_k ∇log π(a_k|s_k) A_k] for ONE episode of n = len(weights) steps from α, cut
    after step n − 1 and bootstrapped there with the table u, A = GAE(γ, λ) with values u (numpy, float64).

    With δ̂ = r + γPu − u, δ̄ = Σ_a π δ̂ and m = n − k steps left at step k,
    E[A_k | s, a] = δ̂(s, a) + γλ (P h_{m−1})(s, a),  h_0 = 0,  h_i = δ̄ + γλ P_π h_{i−1}
    (the finite-window form of ``tabular.gae_expected_gradient``, λ = 1 the bootstrapped return minus u);
    step k's state is distributed as p_k = αᵀP_π^k, and for the softmax
    Σ_a ∇_θ[s] π(a|s) c(s, a) = π(·|s) (c(s, ·) − Σ_a π(a|s) c(s, a))."""
    P, r, alpha = (np.asarray(x) for x in (mdp.P, mdp.r, mdp.alpha))
    gamma, u, w = float(mdp.gamma), np.asarray(value_table), np.asarray(weights)
    pi = np.exp(np.asarray(theta) - np.max(np.asarray(theta), -1, keepdims=True))
    pi /= pi.sum(-1, keepdims=True)
    P_pi = np.einsum("sa,sat->st", pi, P)
    delta = r + gamma * P @ u - u[:, None]
    delta_bar = np.sum(pi * delta, -1)
    n = len(w)
    h = [np.zeros(S)]
    for _ in range(n - 1):
        h.append(delta_bar + gamma * lam * P_pi @ h[-1])
    p, total = alpha, np.zeros((S, A))
    for k in range(n):
        c = delta + gamma * lam * P @ h[n - k - 1]
        total += w[k] * p[:, None] * pi * (c - np.sum(pi * c, -1, keepdims=True))
        p = P_pi.T @ p
    return total


def _agent_reference(mdp, theta, u, lam):
    """The exact mean of one agent's unroll: K_CUTS cut episodes of L_CUT steps + one of L_END steps."""
    return (K_CUTS * _window_mean_gradient(mdp, theta, u, lam, np.ones(L_CUT))
            + _window_mean_gradient(mdp, theta, u, lam, np.ones(L_END)))


def _check_unbiased(g, target, name):
    z, cos = _z(g, target)
    assert z < Z_MAX and cos > COS_MIN, (name, z, cos)


def _check_biased(g, target, name):
    z, _ = _z(g, target)
    assert z > Z_BIASED, (name, z)


# ------------------------------------------------------------------ tests

def test_window_reference_against_the_closed_forms(problem):
    """``_window_mean_gradient`` reproduces the closed forms: γ^k weights over L steps →
    ``gae_expected_gradient`` (any table, any λ) and ``policy_gradient`` (λ = 1) up to O(γ^L); uniform weights
    with the true v → Σ_s d_n(s) π(b|s)(q(s, b) − v(s)), d_n = Σ_{k<n} αᵀP_π^k, for every λ, and that
    direction is not ∇J's."""
    mdp, theta, v, wrong, refs = problem
    w = GAMMA ** np.arange(L)
    for name, u in (("true", v), ("wrong", wrong)):
        for lam in (0.0, 0.5, 0.95):
            np.testing.assert_allclose(_window_mean_gradient(mdp, theta, u, lam, w), refs[f"gae_{name}_{lam}"],
                                       atol=2e-6)   # the O(γ^L) tail: 4e-7 measured
    np.testing.assert_allclose(_window_mean_gradient(mdp, theta, wrong, 1.0, w), refs["grad"], atol=2e-6)
    d = sum(np.linalg.matrix_power(refs["P_pi"].T, k) @ np.asarray(mdp.alpha) for k in range(L_CUT))
    undiscounted = d[:, None] * refs["pi"] * (refs["q"] - np.asarray(v)[:, None])
    for lam in (0.0, 0.5, 1.0):
        np.testing.assert_allclose(_window_mean_gradient(mdp, theta, v, lam, np.ones(L_CUT)), undiscounted,
                                   rtol=1e-10, atol=1e-12)
    exact = refs["grad"]
    cos = np.sum(undiscounted * exact) / (np.linalg.norm(undiscounted) * np.linalg.norm(exact))
    assert np.sqrt(1.0 - cos ** 2) > 0.1, cos   # > 10 % of it orthogonal to ∇J: not a rescaled ∇J
    assert np.max(np.abs(exact)) > 0.05  # not a vacuous problem


@pytest.fixture(scope="module")
def discounted(problem, unrolls):
    """Per-unroll gradients on the γ^k-weighted unrolls (and the wrong variants) of the same episodes."""
    mdp, theta, v, wrong, _ = problem
    un = unrolls["discounted"]
    out = {f"gae_true_{lam}": _gae(theta, un, v, lam) for lam in (0.0, 0.5, 0.95)}
    out["gae_wrong_0.5"] = _gae(theta, un, wrong, 0.5)
    out["gae_wrong_1.0"] = _gae(theta, un, wrong, 1.0)
    for name, u in (("none", jnp.zeros(S)), ("wrong", wrong), ("true", v)):
        out[f"reinforce_{name}"] = _reinforce(theta, un, u)
    # wrong variants: an action-dependent baseline b(s, a); the agent's uniform weights
    b_sa = np.random.default_rng(6).normal(size=(S, A))
    out["reinforce_action_baseline"] = _reinforce(theta, un, wrong, baseline_sa=b_sa)
    out["reinforce_uniform"] = _reinforce(theta, unrolls["uniform"], wrong)
    return {k: np.asarray(g) for k, g in out.items()}


def test_reinforce_with_any_state_baseline_is_unbiased_for_the_discounted_gradient(problem, discounted):
    """advantage="reward_to_go", γ^k weights: no baseline, a random table, the true v — each unbiased for ∇J
    (a wrong table's bootstrap at the cut costs O(γ^L)); the reward_to_go path equals GAE with λ = 1 sample
    by sample, and the true v as baseline lowers the variance."""
    exact = problem[4]["grad"]
    for name in ("reinforce_none", "reinforce_wrong", "reinforce_true"):
        _check_unbiased(discounted[name], exact, name)
    np.testing.assert_allclose(discounted["gae_wrong_1.0"], discounted["reinforce_wrong"], rtol=1e-9, atol=1e-12)
    var = {k: float(np.sum(np.var(discounted[k], 0))) for k in ("reinforce_none", "reinforce_true")}
    assert var["reinforce_true"] < 0.7 * var["reinforce_none"], var


@pytest.mark.parametrize("name", ["reinforce_uniform", "reinforce_action_baseline"])
def test_reinforce_wrong_variants_are_detected(problem, discounted, name):
    """Dropping the γ^k weights (PPO's convention) and an action-dependent baseline b(s, a) are biased for ∇J."""
    _check_biased(discounted[name], problem[4]["grad"], name)


@pytest.mark.parametrize("lam", [0.0, 0.5, 0.95])
def test_gae_with_the_true_values_is_unbiased_for_every_lambda(problem, discounted, lam):
    _check_unbiased(discounted[f"gae_true_{lam}"], problem[4]["grad"], lam)


def test_gae_with_a_wrong_table_matches_its_exact_mean_not_the_gradient(problem, discounted):
    """λ = 0.5 with a random table: the mean is ``gae_expected_gradient`` (biased), detectably not ∇J."""
    refs = problem[4]
    g = discounted["gae_wrong_0.5"]
    _check_unbiased(g, refs["gae_wrong_0.5"], "gae_wrong")
    _check_biased(g, refs["grad"], "gae_wrong vs ∇J")


def test_terminating_episodes_with_uniform_weights_are_unbiased_for_the_discounted_gradient(problem, unrolls):
    """Episodes ending with probability 1 − γ after each step; terminal flags, γ = 1 in the advantages, the alive
    mask as weights: REINFORCE with a random baseline and GAE(0.5) with the true v estimate ∇J, GAE(0) with a
    random table estimates ``gae_expected_gradient`` (and is detectably not ∇J)."""
    mdp, theta, v, wrong, refs = problem
    un = unrolls["terminating"]
    assert 0.0 < np.mean(un[4]) < 1.0   # some episodes end inside the unroll, some at its end
    _check_unbiased(_reinforce(theta, un, wrong, gamma=1.0), refs["grad"], "reinforce_wrong")
    _check_unbiased(_gae(theta, un, v, 0.5, gamma=1.0), refs["grad"], "gae_true")
    g_wrong = _gae(theta, un, wrong, 0.0, gamma=1.0)
    _check_unbiased(g_wrong, refs["gae_wrong_0.0"], "gae_wrong")
    _check_biased(g_wrong, refs["grad"], "gae_wrong vs ∇J")


def _segment_advantages(unroll, u, lam, ends):
    """Numpy GAE restarted after every episode end: δ_t = r_t + γ u(o'_t) − u(o_t) (a cut and the unroll's end
    both bootstrap), A_t = δ_t at an episode's last step (t in ``ends``), δ_t + γλ A_{t+1} before it."""
    obs, next_obs, _, rewards = (np.asarray(x) for x in unroll[:4])
    u = np.asarray(u)
    adv = rewards + GAMMA * u[next_obs] - u[obs]
    for t in reversed(range(adv.shape[1])):
        if t not in ends:
            adv[:, t] += GAMMA * lam * adv[:, t + 1]
    return adv


def test_agent_convention_matches_its_exact_mean_and_is_not_the_discounted_gradient(problem, unrolls):
    """As the agent runs it: uniform weights, episodes cut at L_CUT steps and reset inside the unroll, the unroll
    ending mid-episode. The losses' advantages restart at each reset (equal to a per-episode computation; with
    the time-limit flags forgotten they run on across the reset and differ). GAE(0.95) and reward-to-go with a
    random table and GAE(0.95) with the true v match their exact finite-window means, and none is a multiple
    of ∇J."""
    mdp, theta, v, wrong, refs = problem
    un, leaky = unrolls["agent"], unrolls["leaky"]
    ends = set(range(L_CUT - 1, K_CUTS * L_CUT, L_CUT)) | {L - 1}
    few = lambda x: tuple(y[:N_FEW] for y in x)
    for mode, lam in (("gae", 0.95), ("reward_to_go", 1.0)):   # reward-to-go − u = GAE(λ = 1)
        per_episode = _segment_advantages(few(un), wrong, lam, ends)
        np.testing.assert_allclose(_advantages(few(un), wrong, lam, mode), per_episode, rtol=1e-10, atol=1e-12)
        assert not np.allclose(_advantages(few(leaky), wrong, lam, mode), per_episode, rtol=1e-3), mode
    for name, g, target in (("gae_wrong", _gae(theta, un, wrong, 0.95), _agent_reference(mdp, theta, wrong, 0.95)),
                            ("reinforce_wrong", _reinforce(theta, un, wrong), _agent_reference(mdp, theta, wrong, 1.0)),
                            ("gae_true", _gae(theta, un, v, 0.95), _agent_reference(mdp, theta, v, 0.95))):
        _check_unbiased(g, target, name)
        _check_biased(g, _best_multiple(g, refs["grad"]), name + " vs c·∇J")


@functools.partial(jax.jit, static_argnames="mode")
def _advantages(unrolls, value_table, lam, mode="gae"):
    """``losses.advantages_and_targets`` of each unroll [n, L], V = ``value_table``."""
    obs, next_obs, _, rewards, terminal, truncated, _ = unrolls
    return jax.vmap(lambda *a: losses.advantages_and_targets(*a, GAMMA, lam, mode)[0])(
        rewards, value_table[obs], value_table[next_obs], terminal, truncated)


@jax.jit
def _surrogate_gradients(theta, theta_old, obs, actions, adv, weights):
    """(∇ clipped_surrogate, ∇ ratio_surrogate) at θ, log ρ = log π_θ − sg(log π_old); the clip fraction."""
    logp = lambda th: jax.vmap(tb.log_prob, in_axes=(None, 0, 0))(th, obs, actions)
    log_ratio = lambda th: logp(th) - sg(logp(theta_old))
    g_clip = jax.grad(lambda th: losses.clipped_surrogate(log_ratio(th), adv, CLIP_EPS, weights))(theta)
    g_plain = jax.grad(lambda th: losses.ratio_surrogate(log_ratio(th), adv, weights))(theta)
    return g_clip, g_plain, losses.clip_fraction(log_ratio(theta), CLIP_EPS, weights)


def test_clipped_surrogate_gradient_at_ratio_one_equals_the_unclipped_one(problem, unrolls):
    """On the same samples (the agent's unrolls, GAE(0.95) advantages of a random table, not normalised): at
    ρ = 1, ∇ clipped_surrogate = ∇ ratio_surrogate = −mean(A ∇log π) with ∇_θ[s] log π(a|s) = e_a − π(·|s),
    to rounding; at a perturbed θ the clipped one drops exactly the samples pushed outside [1 − ε, 1 + ε]."""
    _, theta, _, wrong, refs = problem
    un = tuple(x[:N_FEW] for x in unrolls["agent"])
    adv = np.asarray(_advantages(un, wrong, 0.95)).reshape(-1)
    obs, actions, w = (x.reshape(-1) for x in (un[0], un[2], un[6]))
    g_clip, g_plain, frac = _surrogate_gradients(theta, theta, obs, actions, adv, w)
    by_hand = np.zeros((S, A))
    np.add.at(by_hand, obs, -adv[:, None] * (np.eye(A)[actions] - refs["pi"][obs]) / len(obs))
    assert float(frac) == 0.0
    np.testing.assert_allclose(g_clip, g_plain, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(g_clip, by_hand, rtol=1e-10, atol=1e-14)
    assert np.max(np.abs(by_hand)) > 1e-2
    # away from ρ = 1: a sample contributes −ρ A ∇log π / n unless its ratio left [1 − ε, 1 + ε] in the direction
    # its advantage pushes (then nothing), and the two surrogates differ
    theta_far = np.asarray(theta) + 0.5 * np.random.default_rng(41).normal(size=(S, A))
    g_clip, g_plain, frac = _surrogate_gradients(theta_far, theta, obs, actions, adv, w)
    logp = lambda th: th[obs, actions] - np.log(np.sum(np.exp(th[obs]), -1))
    rho = np.exp(logp(theta_far) - logp(np.asarray(theta)))
    keep = ~(((rho > 1 + CLIP_EPS) & (adv > 0)) | ((rho < 1 - CLIP_EPS) & (adv < 0)))
    pi_far = np.exp(theta_far) / np.exp(theta_far).sum(-1, keepdims=True)
    by_hand = np.zeros((S, A))
    np.add.at(by_hand, obs, -(keep * rho * adv)[:, None] * (np.eye(A)[actions] - pi_far[obs]) / len(obs))
    assert float(frac) > 0.1 and 0.05 < np.mean(~keep) < 0.95
    np.testing.assert_allclose(g_clip, by_hand, rtol=1e-10, atol=1e-14)
    assert not np.allclose(g_clip, g_plain, rtol=1e-3)
