"""``actor_objective`` / ``actor_batch`` of the replay agents (DDPG, TD3, SAC, NFQCA).

For each agent, on a learner past its first ``learn`` calls (pendulum sizes, a replay buffer of
random transitions, float32 as the agents run):

1. ``actor_objective`` on ``Agent.actor_batch`` is the objective written out from the networks:
   Q(s, π(s)) (DDPG, NFQCA), Q_1(s, π(s)) (TD3: the first head, not the twin minimum), and
   min_j Q_j(s, ã) − α log π(ã|s), ã = π(s, ε) (SAC, with the bundle's ``log_prob`` of ã);
2. ``learn`` applies the gradient of −mean(``actor_objective``) on ``actor_batch(learner, buffer,
   hp, key)``: one Adam step of that gradient from the learner's actor and optimiser state gives
   ``learn(learner, buffer, hp, key)``'s actor and Adam moments; the same step on 2·J or −J does
   not (Adam's moments carry earlier steps, so a rescaled gradient shows); SAC's trust-region
   step is ``trust_region.step`` on mean J with learn's KL key (``heavy``: ~10 s);
3. ``common.per_sample_grads`` returns J and per-sample gradients whose mean is ``jax.grad`` of
   the batch mean of J.
"""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import critics as C
from mbpo_grad import replay
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


class Setup(NamedTuple):
    mod: Any
    cfg: Any
    env: Any
    algo: OP.OffPolicyAlgo
    agent: Any
    hp: Any
    state: OP.OffPolicyState
    learn: Any
    actor_batch: Any


@functools.lru_cache(maxsize=None)
def _setup(name, **replace):
    """The agent's state with a buffer of 64 random transitions (obs, uniform actions, rewards,
    next obs) and a learner after two ``learn`` calls on it (so Adam's moments hold earlier
    steps); ``learn`` = jit(algo.learn), ``actor_batch`` = jit(agent.actor_batch)."""
    mod, cfg = CASES[name]
    cfg = cfg.replace(**replace) if replace else cfg
    env, episode_length = mod.validate(cfg)
    algo = mod.make_algo(cfg, env)
    agent = OP.make_agent(cfg, algo, env, episode_length)
    hp = cfg.hparams()
    state = agent.init(jax.random.PRNGKey(0), hp)
    k = jax.random.split(jax.random.PRNGKey(1), 4)
    n, d, a = 64, env.obs_size, env.action_size
    obs = jax.random.normal(k[0], (n, d))
    items = {"obs": obs, "action": jax.random.uniform(k[1], (n, a), minval=-1.0, maxval=1.0),
             "reward": -jnp.sum(obs ** 2, axis=1) + 0.1 * jax.random.normal(k[2], (n,)),
             "next_obs": obs + 0.1 * jax.random.normal(k[3], (n, d)), "discount": jnp.ones((n,))}
    buf = replay.add(state.buffer, items)
    learn = jax.jit(algo.learn)
    learner = state.learner
    for i in range(2):
        learner, _ = learn(learner, buf, hp, jax.random.PRNGKey(10 + i))
    return Setup(mod, cfg, env, algo, agent, hp, state._replace(learner=learner, buffer=buf), learn,
                 jax.jit(agent.actor_batch))


def _abs_err(a, b):
    """max |a − b| over two pytrees."""
    leaves = zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    return max(float(jnp.max(jnp.abs(x - y))) for x, y in leaves)


def _rel_err(a, b):
    """max |a − b| / max |b| over two pytrees."""
    return _abs_err(a, b) / max(float(jnp.max(jnp.abs(y))) for y in jax.tree_util.tree_leaves(b))


@pytest.mark.parametrize("name", NAMES)
def test_actor_objective_is_the_q_objective_written_out(name):
    S = _setup(name)
    cfg, env, state = S.cfg, S.env, S.state
    batch = S.actor_batch(state, S.hp, jax.random.PRNGKey(7))
    M = cfg.batch_size
    assert batch.obs.shape == (M, env.obs_size)
    stored = np.asarray(state.buffer.data["obs"][: int(state.buffer.size)])
    assert all(np.any(np.all(stored == o, axis=1)) for o in np.asarray(batch.obs))  # replay observations
    policy = S.mod.default_policy(cfg, env.obs_size, env.action_size)
    objective = S.agent.actor_objective
    actor = state.learner.actor

    if name in ("ddpg", "nfqca"):
        assert batch.policy_noise is None and batch.alpha is None
        critic = C.q_critic(env.obs_size, env.action_size, cfg.critic_hidden)

        @jax.jit
        def both(actor, batch):
            q = jax.vmap(lambda o: critic.apply(batch.critic, o, policy.sample(actor, o, None)))(batch.obs)
            return objective(actor, batch), q

        J, want = both(actor, batch)
        np.testing.assert_allclose(np.asarray(J), np.asarray(want), rtol=1e-6, atol=1e-6)
    elif name == "td3":
        assert batch.policy_noise is None and batch.alpha is None
        twin = C.twin_q(env.obs_size, env.action_size, cfg.critic_hidden)

        @jax.jit
        def both(actor, batch):
            q = jax.vmap(lambda o: twin.apply(batch.critic, o, policy.sample(actor, o, None)))(batch.obs)
            # the heads swapped: Q_1 is then the other network
            swapped = batch._replace(critic=jax.tree_util.tree_map(lambda x: x[::-1], batch.critic))
            return objective(actor, batch), objective(actor, swapped), q

        J, J_swapped, q = (np.asarray(x) for x in both(actor, batch))
        np.testing.assert_allclose(J, q[:, 0], rtol=1e-6, atol=1e-6)
        # Q_1, not the twin minimum (nor Q_2): J follows the first head when the heads are swapped
        np.testing.assert_allclose(J_swapped, q[:, 1], rtol=1e-6, atol=1e-6)
        assert np.max(np.abs(q[:, 0] - q[:, 1])) > 1e-3
    else:
        assert batch.policy_noise.shape == (M, env.action_size)
        alpha = float(jnp.exp(state.learner.log_alpha))
        np.testing.assert_allclose(float(batch.alpha), alpha, rtol=1e-6)
        twin = C.twin_q(env.obs_size, env.action_size, cfg.critic_hidden)

        @jax.jit
        def both(actor, batch):
            a = jax.vmap(lambda o, e: policy.sample(actor, o, e))(batch.obs, batch.policy_noise)
            lp = jax.vmap(lambda o, x: policy.log_prob(actor, o, x))(batch.obs, a)  # the density of ã, inverted
            q = jax.vmap(lambda o, x: twin.apply(batch.critic, o, x))(batch.obs, a)
            return objective(actor, batch), q, lp

        J, q, lp = (np.asarray(x) for x in both(actor, batch))
        np.testing.assert_allclose(J, q.min(axis=1) - alpha * lp, rtol=1e-4, atol=1e-4)
        assert np.max(np.abs(alpha * lp)) > 1e-2  # the entropy term matters at this tolerance
        assert np.max(np.abs(q[:, 0] - q.min(axis=1))) > 1e-3 and np.max(np.abs(q[:, 1] - q.min(axis=1))) > 1e-3


def _adam_moments(opt_state):
    found = [s for s in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(s, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu, found[0].nu


@functools.partial(jax.jit, static_argnums=0)
def _adam_steps(objective, learner, batch, scales):
    """For each c in ``scales``: the actor and its Adam state after one step (the agents' optimiser,
    ``OP.adam``) on −c · mean_i J_i from the learner's actor and optimiser state."""
    def one(c):
        g = jax.grad(lambda p: -c * jnp.mean(objective(p, batch)))(learner.actor)
        upd, opt = OP.adam().update(g, learner.actor_opt, learner.actor)
        return optax.apply_updates(learner.actor, upd), opt

    return jax.vmap(one)(scales), jnp.mean(objective(learner.actor, batch))


@pytest.mark.parametrize("name", NAMES + ["td3_odd_step"])
def test_learn_applies_the_gradient_of_actor_objective(name):
    S = _setup(name.replace("_odd_step", ""))
    learner, buf, hp, key = S.state.learner, S.state.buffer, S.hp, jax.random.PRNGKey(8)
    if name == "td3_odd_step":  # the actor step falls on the first of learn's two critic steps
        learner = learner._replace(step=learner.step + 1)
    assert max(float(jnp.max(jnp.abs(m))) for m in jax.tree_util.tree_leaves(_adam_moments(learner.actor_opt)[0])) > 0
    new, metrics = S.learn(learner, buf, hp, key)
    batch = S.actor_batch(S.state._replace(learner=learner), hp, key)
    scales = jnp.array([1.0, 2.0, -1.0])
    (aps, opts), mean_J = _adam_steps(S.algo.actor_objective, learner, batch, scales)
    pick = lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree)
    new_mu, new_nu = _adam_moments(new.actor_opt)
    errs = []
    for i in range(len(scales)):
        mu, nu = _adam_moments(pick(opts, i))
        # the parameters' error relative to the step (float32 parameters: a few ulp of θ)
        errs.append({"mu": _rel_err(new_mu, mu), "nu": _rel_err(new_nu, nu),
                     "params": _abs_err(new.actor, pick(aps, i)) / _abs_err(pick(aps, i), learner.actor)})
    assert errs[0]["mu"] < 1e-5 and errs[0]["nu"] < 1e-5 and errs[0]["params"] < 1e-3, errs[0]
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), new.actor,
                           pick(aps, 0))
    np.testing.assert_allclose(float(metrics["actor_loss"]), -float(mean_J), rtol=1e-5)
    # the check can fail: the gradient of 2·J or of −J is another step (Adam's moments carry
    # earlier steps, so the scale shows in μ)
    assert min(errs[1]["mu"], errs[2]["mu"], errs[2]["params"]) > 1e-2, errs


@pytest.mark.heavy
def test_sac_trust_region_steps_on_actor_objective():
    """``trust_region=True``: learn's actor is ``trust_region.step`` on mean J over ``actor_batch``
    (KL on the batch's observations, learn's KL key); its actor_loss is −mean J. (~10 s: heavy.)"""
    S = _setup("sac", trust_region=True)
    learner, buf, hp, key = S.state.learner, S.state.buffer, S.hp, jax.random.PRNGKey(8)
    new, metrics = S.learn(learner, buf, hp, key)
    batch = S.actor_batch(S.state, hp, key)
    policy = S.mod.default_policy(S.cfg, S.env.obs_size, S.env.action_size)
    k_kl = jax.random.split(jax.random.split(jax.random.split(key)[1], 1)[0], 3)[2]   # learn's splits

    @jax.jit
    def tr_step(pp, tr, batch):
        J = lambda p: jnp.mean(S.algo.actor_objective(p, batch))
        return TR.step(J, TR.policy_kl(policy, pp, batch.obs, k_kl), pp, tr), J(pp)

    (ap, tr, info), mean_J = tr_step(learner.actor, learner.tr, batch)
    assert bool(info.accepted)
    assert _abs_err(new.actor, ap) / _abs_err(ap, learner.actor) < 1e-3
    np.testing.assert_allclose(float(metrics["actor_loss"]), -float(mean_J), rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_per_sample_grads_average_to_the_batch_gradient(name):
    S = _setup(name)
    batch = S.actor_batch(S.state, S.hp, jax.random.PRNGKey(9))
    objective = S.agent.actor_objective

    @jax.jit
    def grads(actor, batch):
        J_i, G = common.per_sample_grads(objective, actor, batch)
        J, g = jax.value_and_grad(lambda p: jnp.mean(objective(p, batch)))(actor)
        return J_i, G, objective(actor, batch), g

    J_i, G, J, g = grads(S.state.learner.actor, batch)
    np.testing.assert_allclose(np.asarray(J_i), np.asarray(J), rtol=1e-6, atol=1e-6)
    assert _rel_err(jax.tree_util.tree_map(lambda x: jnp.mean(x, axis=0), G), g) < 1e-6
    # the per-sample gradients differ from sample to sample (the mean is not trivially equal)
    assert max(float(jnp.max(jnp.std(x, axis=0))) for x in jax.tree_util.tree_leaves(G)) > 1e-3
