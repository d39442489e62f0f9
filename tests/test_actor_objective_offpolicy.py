"""``actor_objective`` / ``actor_batch`` of the replay agents (DDPG, TD3, SAC, NFQCA).

For each agent, on a state past warm-up (tiny pendulum runs, float32 as the agents run):

1. ``actor_objective`` on ``Agent.actor_batch`` is the objective written out from the networks:
   Q(s, π(s)) (DDPG, NFQCA), Q_1(s, π(s)) (TD3: the first head, not the twin minimum), and
   min_j Q_j(s, ã) − α log π(ã|s), ã = π(s, ε) (SAC, with the bundle's ``log_prob`` of ã);
2. ``learn`` applies the gradient of −mean(``actor_objective``) on ``actor_batch(learner, buffer,
   hp, key)``: one Adam step of that gradient from the learner's actor and optimiser state gives
   ``learn(learner, buffer, hp, key)``'s actor and Adam moments; the same step on 2·J or −J does
   not (Adam's moments carry earlier steps, so a rescaled gradient shows); SAC's trust-region
   step is ``trust_region.step`` on mean J with learn's KL key;
3. ``common.per_sample_grads`` returns J and per-sample gradients whose mean is ``jax.grad`` of
   the batch mean of J.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import critics as C
from mbpo_grad import trust_region as TR
from mbpo_grad.agents import common, ddpg, nfqca, sac, td3
from mbpo_grad.agents import offpolicy as OP

SMALL = dict(env="pendulum", num_envs=4, steps_per_iteration=4, batch_size=16, warmup_steps=16, buffer_size=256,
             actor_hidden=(8,), critic_hidden=(8,), episode_length=20, eval_envs=2)
# one actor step per learn call (TD3: two critic steps, the actor on one of them)
CASES = {
    "ddpg": (ddpg, ddpg.DDPGConfig(updates_per_iteration=1, **SMALL)),
    "td3": (td3, td3.TD3Config(updates_per_iteration=2, policy_delay=2, **SMALL)),
    "sac": (sac, sac.SACConfig(updates_per_iteration=1, **SMALL)),
    "nfqca": (nfqca, nfqca.NFQCAConfig(q_iterations=1, q_steps=2, actor_steps=1, **SMALL)),
}
NAMES = list(CASES)


@functools.lru_cache(maxsize=None)
def _setup(name, **replace):
    """(module, config, env, algo, agent, hp, state): the agent after 3 iterations (2 learning)."""
    mod, cfg = CASES[name]
    cfg = cfg.replace(**replace) if replace else cfg
    env, episode_length = mod.validate(cfg)
    algo = mod.make_algo(cfg, env)
    agent = OP.make_agent(cfg, algo, env, episode_length)
    hp = cfg.hparams()
    state = agent.init(jax.random.PRNGKey(0), hp)
    update = jax.jit(agent.update)
    for i in range(3):
        state, _ = update(state, hp, jax.random.PRNGKey(10 + i))
    return mod, cfg, env, algo, agent, hp, state


def _rel_err(a, b):
    """max |a − b| / max |b| over a pytree."""
    num = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))
    den = max(float(jnp.max(jnp.abs(y))) for y in jax.tree_util.tree_leaves(b))
    return num / den


@pytest.mark.parametrize("name", NAMES)
def test_actor_objective_is_the_q_objective_written_out(name):
    mod, cfg, env, algo, agent, hp, state = _setup(name)
    key = jax.random.PRNGKey(7)
    batch = jax.jit(agent.actor_batch)(state, hp, key)
    ref = jax.jit(algo.actor_batch)(state.learner, state.buffer, hp, key)
    jax.tree_util.tree_map(np.testing.assert_array_equal, batch, ref)
    M = cfg.batch_size
    assert batch.obs.shape == (M, env.obs_size)
    # the observations are replay observations
    stored = np.asarray(state.buffer.data["obs"][: int(state.buffer.size)])
    assert all(np.any(np.all(stored == o, axis=1)) for o in np.asarray(batch.obs))
    policy = mod.default_policy(cfg, env.obs_size, env.action_size)
    actor = state.learner.actor
    J = np.asarray(jax.jit(agent.actor_objective)(actor, batch))
    assert J.shape == (M,)
    obs = batch.obs
    if name in ("ddpg", "nfqca"):
        assert batch.policy_noise is None and batch.alpha is None
        critic = C.q_critic(env.obs_size, env.action_size, cfg.critic_hidden)
        want = jax.vmap(lambda o: critic.apply(batch.critic, o, policy.sample(actor, o, None)))(obs)
        np.testing.assert_allclose(J, np.asarray(want), rtol=1e-6, atol=1e-6)
    elif name == "td3":
        assert batch.policy_noise is None and batch.alpha is None
        twin = C.twin_q(env.obs_size, env.action_size, cfg.critic_hidden)
        both = np.asarray(jax.vmap(lambda o: twin.apply(batch.critic, o, policy.sample(actor, o, None)))(obs))
        np.testing.assert_allclose(J, both[:, 0], rtol=1e-6, atol=1e-6)
        assert np.max(np.abs(both[:, 0] - both.min(axis=1))) > 1e-3  # Q_1, not the twin minimum
    else:
        eps = batch.policy_noise
        assert eps.shape == (M, env.action_size)
        alpha = float(jnp.exp(state.learner.log_alpha))
        np.testing.assert_allclose(float(batch.alpha), alpha, rtol=1e-6)
        twin = C.twin_q(env.obs_size, env.action_size, cfg.critic_hidden)
        a = jax.vmap(lambda o, e: policy.sample(actor, o, e))(obs, eps)
        lp = np.asarray(jax.vmap(lambda o, x: policy.log_prob(actor, o, x))(obs, a))
        q_min = np.asarray(jax.vmap(lambda o, x: jnp.min(twin.apply(batch.critic, o, x)))(obs, a))
        np.testing.assert_allclose(J, q_min - alpha * lp, rtol=1e-4, atol=1e-4)
        assert np.max(np.abs(alpha * lp)) > 1e-2  # the entropy term matters at this tolerance
        q1 = np.asarray(jax.vmap(lambda o, x: twin.apply(batch.critic, o, x)[0])(obs, a))
        assert np.max(np.abs(q1 - q_min)) > 1e-3  # the minimum, not one head


def _adam_step(objective, learner, batch, scale=1.0):
    """Learner's actor and optimiser state after one Adam step on −scale·mean J (the agents' optimiser)."""
    g = jax.grad(lambda p: -scale * jnp.mean(objective(p, batch)))(learner.actor)
    upd, opt = OP.adam().update(g, learner.actor_opt, learner.actor)
    return optax.apply_updates(learner.actor, upd), opt


def _adam_moments(opt_state):
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu, found[0].nu


@pytest.mark.parametrize("name", NAMES + ["td3_odd_step"])
def test_learn_applies_the_gradient_of_actor_objective(name):
    mod, cfg, env, algo, agent, hp, state = _setup(name.replace("_odd_step", ""))
    learner, buf, key = state.learner, state.buffer, jax.random.PRNGKey(8)
    if name == "td3_odd_step":  # the actor step falls on the first of learn's two critic steps
        learner = learner._replace(step=learner.step + 1)
    mu0, _ = _adam_moments(learner.actor_opt)
    assert max(float(jnp.max(jnp.abs(m))) for m in jax.tree_util.tree_leaves(mu0)) > 0  # earlier steps in Adam
    new, metrics = jax.jit(algo.learn)(learner, buf, hp, key)
    batch = jax.jit(algo.actor_batch)(learner, buf, hp, key)
    step = jax.jit(_adam_step, static_argnums=(0, 3))
    ap, opt = step(algo.actor_objective, learner, batch)
    mu, nu = _adam_moments(opt)
    new_mu, new_nu = _adam_moments(new.actor_opt)
    errs = {"mu": _rel_err(new_mu, mu), "nu": _rel_err(new_nu, nu),
            "step": _rel_err(jax.tree_util.tree_map(jnp.subtract, new.actor, learner.actor),
                             jax.tree_util.tree_map(jnp.subtract, ap, learner.actor))}
    assert max(errs.values()) < 1e-5, errs
    J = jnp.mean(algo.actor_objective(learner.actor, batch))
    np.testing.assert_allclose(float(metrics["actor_loss"]), -float(J), rtol=1e-5)
    # the check can fail: a rescaled or sign-flipped objective gives another step
    for scale in (2.0, -1.0):
        ap_x, opt_x = step(algo.actor_objective, learner, batch, scale)
        assert _rel_err(_adam_moments(new.actor_opt)[0], _adam_moments(opt_x)[0]) > 1e-2, scale


def test_sac_trust_region_steps_on_actor_objective():
    """``trust_region=True``: learn's actor is ``trust_region.step`` on mean J over ``actor_batch``
    (KL on the batch's observations, learn's KL key); its actor_loss is −mean J."""
    mod, cfg, env, algo, agent, hp, state = _setup("sac", trust_region=True)
    learner, buf, key = state.learner, state.buffer, jax.random.PRNGKey(8)
    new, metrics = jax.jit(algo.learn)(learner, buf, hp, key)
    batch = jax.jit(algo.actor_batch)(learner, buf, hp, key)
    policy = mod.default_policy(cfg, env.obs_size, env.action_size)
    k_kl = jax.random.split(jax.random.split(jax.random.split(key)[1], 1)[0], 3)[2]   # learn's splits

    @jax.jit
    def tr_step(pp, tr, batch):
        return TR.step(lambda p: jnp.mean(algo.actor_objective(p, batch)), TR.policy_kl(policy, pp, batch.obs, k_kl),
                       pp, tr)

    ap, tr, info = tr_step(learner.actor, learner.tr, batch)
    assert bool(info.accepted)
    delta = lambda p: jax.tree_util.tree_map(jnp.subtract, p, learner.actor)
    assert _rel_err(delta(new.actor), delta(ap)) < 1e-4
    np.testing.assert_allclose(float(metrics["actor_loss"]), -float(jnp.mean(algo.actor_objective(learner.actor,
                                                                                                  batch))), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_grads_average_to_the_batch_gradient(name):
    mod, cfg, env, algo, agent, hp, state = _setup(name)
    batch = jax.jit(agent.actor_batch)(state, hp, jax.random.PRNGKey(9))
    actor = state.learner.actor
    J, G = jax.jit(lambda p, b: common.per_sample_grads(agent.actor_objective, p, b))(actor, batch)
    np.testing.assert_allclose(np.asarray(J), np.asarray(agent.actor_objective(actor, batch)), rtol=1e-6, atol=1e-6)
    g = jax.jit(jax.grad(lambda p, b: jnp.mean(agent.actor_objective(p, b))))(actor, batch)
    mean = jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), G)
    assert _rel_err(mean, g) < 1e-6
    # per-sample gradients differ from sample to sample (so the mean is not trivially equal)
    spread = jax.tree_util.tree_map(lambda x: float(jnp.max(jnp.std(x, axis=0))), G)
    assert max(jax.tree_util.tree_leaves(spread)) > 1e-3
