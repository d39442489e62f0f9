"""SHAC's ``estimator="dpmb_sf"`` on the switching cart (issue 14, item 4): the agent's window
objective has the sampled return as its value and, without a critic, exactly the gradient of
``score_function.dpmb_sf_objective`` (tested against exact enumeration in test_dpmb_sf_exact.py)
on the same modes; with a critic its baseline V'(o_t) − r_t changes the gradient per env but not
its mean; the pathwise-only gradient differs from it; an env without modes is refused."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import envs
from mbpo_grad import score_function as sf
from mbpo_grad.agents import common, shac
from mbpo_grad.agents.shac.networks import value_critic
from mbpo_grad.envs import switching_cart as sc
from mbpo_grad.policies.deterministic import deterministic

T = 6          # the switching cart's episode; the window spans it
GAMMA = 0.95


def _setup(num_envs, *, horizon=T, use_critic=False, estimator="dpmb_sf", seed=0):
    cfg = shac.SHACConfig(env="switching_cart", estimator=estimator, horizon=horizon, num_envs=num_envs,
                          use_critic=use_critic, obs_norm=False, stagger=False, x64=True, actor_hidden=(8,),
                          critic_hidden=(8,), critic_minibatches=1, gamma=GAMMA)
    policy = deterministic(2, 1, (8,))
    agent = shac.make_agent(cfg, policy=policy)
    hp = cfg.hparams()
    state = agent.init(jax.random.PRNGKey(seed), hp)
    # a policy whose pushes are strong enough that the mode probabilities move with θ
    pp = jax.tree_util.tree_map(lambda x: 3.0 * x, state.policy_params)
    state = state._replace(policy_params=pp)
    return agent, policy, hp, state, agent.actor_batch(state, hp, jax.random.PRNGKey(seed + 1))


def _engine_grads(policy, pp, batch, horizon, bootstrap=None):
    """Per-env value and gradient of the engine's DPMB-SF objective on the agent's noise."""
    gumbel = sc.gumbel_from_normal(batch.dynamics_noise)                  # [n, B, 2]

    def one(p, s0, g):
        return sf.dpmb_sf_objective(lambda q, s, e: policy.sample(q, s, e), p, sc.step_mode, sc.reward,
                                    sc.mode_logits, s0[None], horizon=horizon, mode_noise=g[:, None],
                                    gamma=batch.gamma, bootstrap=bootstrap)

    return jax.vmap(jax.value_and_grad(one), in_axes=(None, 0, 1))(pp, batch.env_state.env_state, gumbel)


def _flat(tree):
    return np.concatenate([np.reshape(x, (x.shape[0], -1)) for x in jax.tree_util.tree_leaves(tree)], axis=1)


def test_without_critic_equals_the_engine_objective_per_env():
    with jax.enable_x64(True):
        agent, policy, hp, state, batch = _setup(16)
        J, g = common.per_sample_grads(agent.actor_objective, state.policy_params, batch)
        J_ref, g_ref = _engine_grads(policy, state.policy_params, batch, T)
        np.testing.assert_allclose(np.asarray(J), np.asarray(J_ref), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(_flat(g), _flat(g_ref), rtol=1e-9, atol=1e-11)
        # the pathwise-only gradient (modes held fixed) is a different number on the same noise
        agent_pw = _setup(16, estimator="pathwise")[0]
        _, g_pw = common.per_sample_grads(agent_pw.actor_objective, state.policy_params, batch)
        gap = np.abs(_flat(g_pw) - _flat(g)).max()
        assert gap > 1e-3, gap


def test_critic_baseline_keeps_the_mean():
    """With a critic (window 3 of 6, bootstrap γ³V'(s_3)): agent − engine per env is
    Σ_t ∇ℓ_t γ^t (r_t − V'(o_t)), nonzero per env, zero in expectation (z-test over 1024 envs)."""
    with jax.enable_x64(True):
        agent, policy, hp, state, batch = _setup(1024, horizon=3, use_critic=True)
        critic = value_critic(shac.SHACConfig(critic_hidden=(8,)), 2)
        tp = jax.tree_util.tree_map(lambda x: 2.0 * x, batch.target_params)   # a critic far from zero
        batch = batch._replace(target_params=tp)
        _, g = common.per_sample_grads(agent.actor_objective, state.policy_params, batch)
        J_ref, g_ref = _engine_grads(policy, state.policy_params, batch, 3,
                                     bootstrap=lambda s: critic.apply(tp, s))
        J = agent.actor_objective(state.policy_params, batch)
        np.testing.assert_allclose(np.asarray(J), np.asarray(J_ref), rtol=1e-12, atol=1e-12)
        d = _flat(g) - _flat(g_ref)
        se = d.std(0, ddof=1) / np.sqrt(d.shape[0])
        assert np.median(np.abs(d).max(0)) > 1e-3                             # the baseline does act
        z = np.abs(d.mean(0)) / np.maximum(se, 1e-300)
        assert z.max() < 4.5, z.max()


def test_needs_an_env_with_modes():
    cfg = shac.SHACConfig(env="pendulum", estimator="dpmb_sf", num_envs=2, horizon=4, actor_hidden=(4,),
                          critic_hidden=(4,), critic_minibatches=1)
    with pytest.raises(ValueError, match=r"env\.info"):
        shac.make_agent(cfg)
    env = envs.make("switching_cart")
    broken = env.__class__(**{**env.__dict__, "info": {**env.info, "mode": lambda s, a, xi: 0.5}})
    with pytest.raises(ValueError, match=r"env\.info\['mode'\]"):
        shac.make_agent(shac.SHACConfig(env="switching_cart", estimator="dpmb_sf", num_envs=2, horizon=4,
                                        actor_hidden=(4,), critic_hidden=(4,), critic_minibatches=1), env=broken)
