"""DPMB-SF against exact enumeration on systems the other tests do not use (issue 12, item 2).

A three-mode hybrid system whose mode probabilities depend on (s, a): the estimator's Monte-Carlo mean
matches jax.grad of the exact enumeration for a state-action reward r(s, a) and for a transition reward
r(s, a, s') (which reads s_{t+1} and therefore z_t); the old factor (rewards after t only) is biased for the
transition reward. A system undefined past its terminal state (sqrt(1 − s) in step, reward and mode
logits, done = s ≥ 0.95) has a finite gradient equal to float64 finite differences.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import score_function as sf


@pytest.fixture(scope="module")
def x64():
    with jax.enable_x64(True):
        yield


def _max_z(g, target):
    mean, se = g.mean(0), g.std(0, ddof=1) / np.sqrt(g.shape[0])
    return float(np.max(np.abs(mean - target) / se))


def _central_fd(f, theta, h=1e-5):
    f = jax.jit(f)
    return np.array([(float(f(theta + h * e)) - float(f(theta - h * e))) / (2 * h) for e in np.eye(len(theta))])


# ---------------------------------------------------------------------------- three-mode system

K3, T3, GAMMA3 = 3, 4, 0.9
THETA3 = np.array([-0.6, 0.4, 0.3])
S0_3 = np.array([0.7, -0.4])
OFFSET = np.array([[0.0, 0.0], [0.8, 0.3], [-0.6, 0.5]])  # each mode kicks the state its own way


def pol3(th, s, eps):
    return jnp.tanh(th[0] * s[0] + th[1] * s[1] + th[2])[None]


def logits3(s, a):
    a = jnp.reshape(a, ())
    return jnp.stack([jnp.zeros_like(a), 2.0 * a + s[0], 1.5 * a**2 - s[1] - 0.5])


def step3(s, a, z):
    a = jnp.reshape(a, ())
    p, q = s[0], s[1]
    base = jnp.stack([0.9 * p + 0.2 * q + 0.3 * a, -0.2 * p + 0.8 * q + 0.5 * a])
    return base + jnp.asarray(OFFSET, dtype=s.dtype)[z]


def cost(s):
    return s[0] ** 2 + 0.5 * s[1] ** 2


REWARDS = {
    "state_action": lambda s, a: -(cost(s) + 0.1 * jnp.reshape(a, ()) ** 2),
    "transition": mg.transition_reward(lambda s, a, s2: -(cost(s2) + 0.1 * jnp.reshape(a, ()) ** 2)),
}


def _exact3(kind):
    return lambda th: sf.exact_hybrid_return(pol3, th, step3, REWARDS[kind], logits3, jnp.asarray(S0_3),
                                             horizon=T3, num_modes=K3, gamma=GAMMA3)


@jax.jit
def _grads3(theta, noise):
    """Per-trajectory gradients [N, 3]: the public objective (factor from the reward's kind) for both rewards,
    and the surrogate with the factor forced to the other choice."""
    s0 = jnp.asarray(S0_3)

    def public(kind):
        def f(th, g):
            return sf.dpmb_sf_objective(pol3, th, step3, REWARDS[kind], logits3, s0[None], horizon=T3,
                                        mode_noise=g[:, None], gamma=GAMMA3)
        return jax.vmap(jax.grad(f), in_axes=(None, 0))(theta, noise)

    def forced(kind, uses_next):
        def f(th, g):
            tr = sf.hybrid_unroll(pol3, th, step3, REWARDS[kind], logits3, s0, horizon=T3, mode_noise=g)
            disc = jnp.full_like(tr.rewards, GAMMA3)
            return sf.dpmb_sf_surrogate(tr.rewards, tr.log_probs, disc, reward_uses_next_state=uses_next)
        return jax.vmap(jax.grad(f), in_axes=(None, 0))(theta, noise)

    return {"state_action": public("state_action"), "transition": public("transition"),
            "transition_old_factor": forced("transition", False),
            "state_action_inclusive": forced("state_action", True)}


@pytest.fixture(scope="module")
def three_mode(x64):
    theta = jnp.asarray(THETA3)
    exact = {k: np.asarray(jax.jit(jax.grad(_exact3(k)))(theta)) for k in REWARDS}
    noise = jax.random.gumbel(jax.random.PRNGKey(12), (40_000, T3, K3), jnp.float64)
    grads = {k: np.asarray(v) for k, v in _grads3(theta, noise).items()}
    return theta, exact, grads


def test_enumeration_is_exact_on_the_three_mode_system(three_mode):
    theta, exact, _ = three_mode
    # probabilities of the 3^T sequences sum to one: a reward of 1 gives Σ_t γ^t
    ones = sf.exact_hybrid_return(pol3, theta, step3, lambda s, a: jnp.ones(()), logits3, jnp.asarray(S0_3),
                                  horizon=T3, num_modes=K3, gamma=GAMMA3)
    np.testing.assert_allclose(ones, np.sum(GAMMA3 ** np.arange(T3)), rtol=1e-12)
    for kind in REWARDS:
        np.testing.assert_allclose(exact[kind], _central_fd(_exact3(kind), theta), rtol=1e-7, atol=1e-9)
        assert np.linalg.norm(exact[kind]) > 0.3
    # the mode probabilities move with the action: the score terms matter
    s0, a0 = jnp.asarray(S0_3), pol3(theta, jnp.asarray(S0_3), None)
    dp = jax.jacobian(lambda th: jax.nn.softmax(logits3(s0, pol3(th, s0, None))))(theta)
    assert float(jnp.max(jnp.abs(dp))) > 0.05 and a0.shape == (1,)


def test_dpmb_sf_unbiased_for_both_reward_kinds(three_mode):
    """Monte-Carlo mean within 4 standard errors of the exact gradient, component-wise, at 40k trajectories."""
    _, exact, grads = three_mode
    assert _max_z(grads["state_action"], exact["state_action"]) < 4.0
    assert _max_z(grads["transition"], exact["transition"]) < 4.0
    # keeping r_t in its own score's factor is unbiased for a state-action reward too (just noisier)
    assert _max_z(grads["state_action_inclusive"], exact["state_action"]) < 4.0


def test_old_factor_is_biased_for_the_transition_reward(three_mode):
    """The factor Σ_{k>t} w_k r_k drops r_t = r(s_t, a_t, s_{t+1}), which z_t moves: many standard errors off."""
    _, exact, grads = three_mode
    assert _max_z(grads["transition_old_factor"], exact["transition"]) > 10.0


# ---------------------------------------------------------------------------- undefined past the terminal

T_END, GAMMA_END = 6, 0.95
THETA_END = np.array([0.7, 0.2])
KICK = (0.2, 0.35)


def pol_end(th, s, eps):
    return jnp.tanh(th[0] * s[0] + th[1])[None]


def logits_end(s, a):
    return jnp.stack([0.0 * s[0], 2.0 * jnp.reshape(a, ()) + 3.0 * jnp.sqrt(1.0 - s[0]) - 1.5])


def step_end(s, a, z):
    """s' = s + c_z + 0.1·a·sqrt(1 − s): NaN (and a NaN Jacobian) for s > 1, which happens only past the end."""
    return s + jnp.asarray(KICK, dtype=s.dtype)[z] + 0.1 * jnp.reshape(a, ()) * jnp.sqrt(1.0 - s)


def done_end(s):
    return s[0] >= 0.95


REWARDS_END = {
    "state_action": lambda s, a: 0.5 * jnp.sqrt(1.0 - s[0]) - 0.1 * jnp.reshape(a, ()) ** 2,
    "transition": mg.transition_reward(lambda s, a, s2: -(s2[0] - 0.6) ** 2 - 0.1 * jnp.reshape(a, ()) ** 2),
}
S0_END = np.array([0.1])


def _exact_end(kind):
    return lambda th: sf.exact_hybrid_return(pol_end, th, step_end, REWARDS_END[kind], logits_end,
                                             jnp.asarray(S0_END), horizon=T_END, num_modes=2, gamma=GAMMA_END,
                                             done=done_end)


@pytest.mark.parametrize("kind", ["state_action", "transition"])
def test_gradient_finite_and_exact_for_a_system_undefined_past_its_terminal(x64, kind):
    theta = jnp.asarray(THETA_END)
    # the system really is undefined past its terminal: some episode ends above s = 1
    seqs = jnp.asarray(np.ones((1, T_END), np.int32))
    tr = sf.hybrid_unroll(pol_end, theta, step_end, REWARDS_END[kind], logits_end, jnp.asarray(S0_END),
                          horizon=T_END, modes=seqs[0], done=done_end)
    assert float(tr.alive[-1]) == 0.0 and float(tr.states[-1, 0]) > 1.0
    assert np.isnan(float(step_end(tr.states[-1], jnp.zeros(1), 0)[0]))
    assert np.all(np.isfinite(np.asarray(tr.rewards))) and np.all(np.isfinite(np.asarray(tr.log_probs)))

    J, g_exact = jax.jit(jax.value_and_grad(_exact_end(kind)))(theta)
    assert np.isfinite(float(J)) and np.all(np.isfinite(np.asarray(g_exact)))
    np.testing.assert_allclose(g_exact, _central_fd(_exact_end(kind), theta), rtol=1e-7, atol=1e-9)
    assert np.linalg.norm(g_exact) > 0.05

    def est(th, g):
        return sf.dpmb_sf_objective(pol_end, th, step_end, REWARDS_END[kind], logits_end,
                                    jnp.asarray(S0_END)[None], horizon=T_END, mode_noise=g[:, None],
                                    gamma=GAMMA_END, done=done_end)

    noise = jax.random.gumbel(jax.random.PRNGKey(5), (20_000, T_END, 2), jnp.float64)
    g = np.asarray(jax.jit(jax.vmap(jax.grad(est), in_axes=(None, 0)))(theta, noise))
    assert np.all(np.isfinite(g))
    assert _max_z(g, np.asarray(g_exact)) < 4.0
