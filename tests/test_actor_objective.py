"""``Agent.actor_objective`` of SHAC: the per-env window objective J_b, checked against a
step-by-step reference (time-limit truncation inside the window bootstrapped with γ^k V'(s_k),
a terminal state not, the window end with γ^n V'(s_n)), and shown to be the very function
whose gradient ``update`` applies (read back from Adam's first moment with b1 = 0, no clipping).

The system is a small noisy drift env with a terminal set, written here (no other test uses
it), with a Gaussian policy: policy noise, dynamics noise, truncations and terminations all
occur inside one window. Float64 throughout.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad.envs.base import Env
from mbpo_grad import critics as C
from mbpo_grad import normalizer as N
from mbpo_grad.agents import shac
from mbpo_grad.agents.common import TimedState
from mbpo_grad.policies import gaussian

T, H, DT = 5, 4, 0.2  # time limit, window n, step size


def drift_env() -> Env:
    """s = (x, v): v' = v + DT·a + 0.05 ξ, x' = x + DT·v'; r = 1 − x² + 0.3 v − 0.1 a²;
    terminal when |x| > 1; observation (x, v, x·v)."""
    def reset(key):
        return 0.3 * jax.random.normal(key, (2,))

    def step(s, a, xi):
        v = s[1] + DT * a[0] + 0.05 * xi[0]
        return jnp.stack([s[0] + DT * v, v])

    def reward(s, a):
        return 1.0 - s[0] ** 2 + 0.3 * s[1] - 0.1 * jnp.sum(a ** 2)

    def done(s):
        return jnp.abs(s[0]) > 1.0

    def observe(s):
        return jnp.stack([s[0], s[1], s[0] * s[1]])

    return Env("drift", 3, 1, T, reset, step, reward, observe, done, (1,))


CFG = shac.SHACConfig(num_envs=5, horizon=H, episode_length=T, iterations=4, eval_every=2, actor_hidden=(8,),
                      critic_hidden=(8,), critic_iterations=1, critic_minibatches=2, eval_envs=2, x64=True,
                      adam_b1=0.0, max_grad_norm=0.0)  # b1 = 0: Adam's μ is the gradient; no clipping


def _setup(config=CFG):
    env, policy = drift_env(), gaussian(3, 1, (8,))
    return env, policy, shac.make_agent(config, env=env, policy=policy)


def reference_window(env, policy, critic, pp, s0, t0, eps, xi, stats, target, gamma, n, end=None):
    """One env's J step by step: (J, how the window ended, at which step k).

    Σ_{t<k} γ^t r_t, then + γ^k V'(s_k) when the window ended at k = n or the time limit cut
    the episode at k; nothing after a terminal state. ``end`` fixes the (non-differentiable)
    branch found by a concrete pass, so that ``jax.grad`` can trace the same sum.
    """
    obs = lambda s: N.normalize(stats, env.observe(s))
    J, s, t = 0.0, s0, int(t0)
    for k in range(n):
        a = policy.sample(pp, obs(s), eps[k])
        J = J + gamma ** k * env.reward(s, a)
        s = env.step(s, a, xi[k])
        t += 1
        if end is not None:
            if k + 1 == end[1] and end[0] == "terminal":
                return J, "terminal", k + 1
            if k + 1 == end[1] and end[0] == "truncated":
                return J + gamma ** (k + 1) * critic.apply(target, obs(s)), "truncated", k + 1
            continue
        if bool(env.done(s)):
            return J, "terminal", k + 1
        if t >= T:
            return J + gamma ** (k + 1) * critic.apply(target, obs(s)), "truncated", k + 1
    return J + gamma ** n * critic.apply(target, obs(s)), "window", n


def _env_slice(batch, b):
    return (batch.env_state.env_state[b], batch.env_state.t[b], batch.policy_noise[:, b], batch.dynamics_noise[:, b])


def test_actor_objective_equals_the_step_by_step_window_with_truncation_bootstrap():
    with jax.enable_x64(True):
        env, policy, agent = _setup()
        critic = C.v_critic(3, CFG.critic_hidden)
        hp = CFG.hparams(gamma=0.9)
        state = agent.init(jax.random.PRNGKey(0), hp)
        # starts: runs to the window end; time limit at k = 2; terminal at k = 1; time limit at
        # k = 1; time limit exactly at the window end (k = n)
        s0 = jnp.array([[0.0, 0.0], [0.1, -0.2], [0.95, 0.8], [-0.2, 0.3], [0.05, 0.1]])
        t0 = jnp.array([0, 3, 0, 4, 1], jnp.int32)
        raw = jax.random.normal(jax.random.PRNGKey(1), (64, 3)) * jnp.array([0.5, 2.0, 0.3]) + jnp.array([0.1, -0.3, 0.0])
        stats = N.update(N.init(3, jnp.float64), raw)
        batch = agent.actor_batch(state, hp, jax.random.PRNGKey(2))._replace(env_state=TimedState(s0, t0),
                                                                             obs_stats=stats)
        pp = state.policy_params
        J = jax.jit(agent.actor_objective)(pp, batch)
        J2, G = jax.jit(lambda p, b: shac.per_env_grads(agent.actor_objective, p, b))(pp, batch)
        np.testing.assert_allclose(np.asarray(J2), np.asarray(J), rtol=1e-13)
        gamma = float(batch.gamma)
        ends, no_boot = [], []
        for b in range(5):
            s, t, e, x = _env_slice(batch, b)
            ref, kind, k = reference_window(env, policy, critic, pp, s, t, e, x, stats, state.target_params, gamma, H)
            ends.append((kind, k))
            np.testing.assert_allclose(float(J[b]), float(ref), rtol=1e-12, atol=1e-12)
            g_ref = jax.grad(lambda p: reference_window(env, policy, critic, p, s, t, e, x, stats, state.target_params,
                                                        gamma, H, end=(kind, k))[0])(pp)
            jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(np.asarray(a[b]), np.asarray(r), rtol=1e-10,
                                                                           atol=1e-12), G, g_ref)
            if kind == "truncated" and k < H:
                # the objective without the in-window bootstrap (what the flagship's probe used to take)
                no_boot.append(jax.grad(lambda p: reference_window(env, policy, critic, p, s, t, e, x, stats,
                                                                   state.target_params, gamma, H,
                                                                   end=("terminal", k))[0])(pp))
                diff = jax.tree_util.tree_map(lambda a, r: float(jnp.max(jnp.abs(a[b] - r))), G, no_boot[-1])
                assert max(jax.tree_util.tree_leaves(diff)) > 1e-3, diff
        assert ends == [("window", 4), ("truncated", 2), ("terminal", 1), ("truncated", 1), ("truncated", 4)], ends
        assert len(no_boot) == 2


def _adam_mu(opt_state):
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu


@pytest.mark.parametrize("guard", ["per_env", "batch"])
def test_update_applies_the_gradient_of_actor_objective(guard):
    """∇θ [−mean_b J_b / n] on ``actor_batch(state, hp, key)`` is the gradient ``update(state, hp, key)``
    hands Adam (its first moment with b1 = 0), with truncations inside the window."""
    with jax.enable_x64(True):
        config = CFG.replace(guard=guard)
        env, policy, agent = _setup(config)
        hp = config.hparams()
        update = jax.jit(agent.update)
        state = agent.init(jax.random.PRNGKey(3), hp)
        state, _ = update(state, hp, jax.random.PRNGKey(4))  # fitted critic, non-trivial obs statistics
        key = jax.random.PRNGKey(5)
        batch = agent.actor_batch(state, hp, key)
        J, traj = agent.actor_objective(state.policy_params, batch, return_traj=True)
        alive, t = np.asarray(traj.alive), np.asarray(traj.states.t)
        cut = (alive[:, :-1] > 0) & (alive[:, 1:] == 0) & (t[:, 1:] >= T)
        assert cut[:, :-1].any(), "no time limit falls inside the window"
        g = jax.grad(lambda p: -jnp.mean(agent.actor_objective(p, batch)) / H)(state.policy_params)
        new, m = update(state, hp, key)
        assert int(m["masked_envs"]) == 0 and int(m["skipped_updates"]) == 0
        np.testing.assert_allclose(float(m["window_return"]), float(jnp.mean(J)), rtol=1e-6)  # metrics: float32
        jax.tree_util.tree_map(lambda a, r: np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-11,
                                                                       atol=1e-15), _adam_mu(new.actor_opt), g)
