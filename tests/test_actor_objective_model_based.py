"""``Agent.actor_objective`` of the model-based agent: the per-rollout J_b through the learned
model, checked against a step-by-step reference in float64

    J_b = Σ_{t<n} γ^t (r_t − α log π(a_t|s_t)) + γ^n V'(s_n),   (s_{t+1}, r_t) = f̂(s_t, a_t, ξ_t),

and shown to be the very function whose gradient ``learn``'s actor step applies: the same optax
optimiser on ∇ of −mean_b J_b / n reproduces learn's new Adam moments and parameters (no
clipping, so the first moment carries the raw gradient), while the gradient of a neighbouring
function (no entropy term, other noise) does not. ``common.per_sample_grads`` averages to the
batch gradient.

Pendulum observations, a tiny ensemble fitted by one ``learn`` call on random transitions,
entropy on with model noise (random elite + aleatoric noise) and the learned reward.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import normalizer as N
from mbpo_grad import replay
from mbpo_grad.agents import common
from mbpo_grad.agents import model_based as MB
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.policies import gaussian
from mbpo_grad.policies.base import sample_and_log_prob

H = 3
CFG = MB.ModelBasedConfig(env="pendulum", num_envs=2, steps_per_iteration=8, iterations=2, updates_per_iteration=1,
                          batch_size=8, buffer_size=64, warmup_steps=0, eval_every=2, eval_envs=2, horizon=H,
                          ensemble_size=3, elites=2, model_hidden=(16,), model_epochs=1, fit_size=32, model_batch=16,
                          actor_hidden=(8,), critic_hidden=(8,), critic_iterations=1, entropy=True,
                          alpha=0.2, gamma=0.9, max_grad_norm=0.0)  # no clipping: Adam's μ is (1 − b1)·gradient


@pytest.fixture(scope="module")
def setup():
    """(algo, hp, learner before, learner after one ``learn``, buffer, learn key)."""
    env, _ = MB.validate(CFG)
    policy = gaussian(env.obs_size, env.action_size, CFG.actor_hidden)
    algo = MB.make_algo(CFG, env, policy)
    hp = CFG.hparams()
    k_init, k_s, k_a, k_xi, k_learn = jax.random.split(jax.random.PRNGKey(0), 5)
    learner = algo.init(k_init, hp)
    s = jnp.stack([jax.random.uniform(k_s, (40,), minval=-np.pi, maxval=np.pi),
                   jax.random.uniform(jax.random.fold_in(k_s, 1), (40,), minval=-3.0, maxval=3.0)], -1)
    a = jax.random.uniform(k_a, (40, 1), minval=-1.0, maxval=1.0)
    s1 = jax.vmap(env.step, in_axes=(0, 0, None))(s, a, None)
    tr = {"obs": jax.vmap(env.observe)(s), "action": a, "reward": jax.vmap(env.reward)(s, a),
          "next_obs": jax.vmap(env.observe)(s1), "discount": jnp.ones((40,))}
    buf = replay.add(replay.init(CFG.buffer_size, OP.transition_example(env)),
                     jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tr))
    learned, metrics = jax.jit(algo.learn)(learner, buf, hp, k_learn)
    return algo, policy, hp, learner, learned, metrics, buf, k_learn


def _first_update_batch(algo, hp, learner, learned, buf, k_learn):
    """The batch of learn's (only) update: its fitted model and statistics, its own update key."""
    fitted = learner._replace(model=learned.model, obs_stats=learned.obs_stats)
    return fitted, algo.actor_batch(fitted, buf, hp, MB.learn_keys(k_learn, CFG.updates_per_iteration)[2][0])


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


def reference_returns(policy, pp, batch, critic_apply):
    """J [M] step by step: a_t, log π from ε_t; (s_{t+1}, r_t) from the model's ``sample`` with ξ_t."""
    stats, mp = batch.obs_stats, batch.model
    s, J = batch.start_obs, 0.0
    for t in range(H):
        o = jax.vmap(lambda x: N.normalize(stats, x))(s)
        a, lp = jax.vmap(lambda oo, e: sample_and_log_prob(policy, pp, oo, e))(o, batch.policy_noise[t])
        xi = jax.tree_util.tree_map(lambda x: x[t], batch.dynamics_noise)
        s, r = jax.vmap(MB_MODEL.sample, in_axes=(None, 0, 0, 0))(mp, s, a, xi)
        J = J + batch.gamma ** t * (r - batch.alpha * lp)
    v = jax.vmap(lambda x: critic_apply(batch.target_params, N.normalize(stats, x)))(s)
    return J + batch.gamma ** H * v


MB_MODEL = MB.default_model(CFG, 3, 1)
CRITIC = MB.value_critic(CFG, 3)


def test_actor_objective_is_the_step_by_step_model_rollout_return_and_per_sample_grads_average(setup):
    algo, policy, hp, learner, learned, _, buf, k_learn = setup
    _, batch = _first_update_batch(algo, hp, learner, learned, buf, k_learn)
    assert batch.policy_noise.shape == (H + 1, CFG.batch_size, 1) and batch.dynamics_noise["member"].shape == (H, 8)
    with jax.enable_x64(True):
        pp, b64 = _f64(learned.policy), _f64(batch)
        J = jax.jit(algo.actor_objective)(pp, b64)
        ref = reference_returns(policy, pp, b64, CRITIC.apply)
        assert J.dtype == jnp.float64 and J.shape == (CFG.batch_size,)
        np.testing.assert_allclose(np.asarray(J), np.asarray(ref), rtol=1e-12, atol=1e-12)
        # the entropy term and the bootstrap both matter at this size (the check sees them)
        no_ent = reference_returns(policy, pp, b64._replace(alpha=0.0), CRITIC.apply)
        assert np.min(np.abs(np.asarray(J - no_ent))) > 1e-3
        J_ps, G = jax.jit(lambda p, b: common.per_sample_grads(algo.actor_objective, p, b))(pp, b64)
        g_mean = jax.grad(lambda p: jnp.mean(algo.actor_objective(p, b64)))(pp)
        np.testing.assert_allclose(np.asarray(J_ps), np.asarray(J), rtol=1e-12, atol=1e-12)
        jax.tree_util.tree_map(lambda g, m: np.testing.assert_allclose(np.asarray(jnp.mean(g, 0)), np.asarray(m),
                                                                       rtol=1e-10, atol=1e-13), G, g_mean)
        g0 = jax.grad(lambda p: reference_returns(policy, p, jax.tree_util.tree_map(
            lambda x, ax: x if ax is None else jax.lax.index_in_dim(x, 0, ax, keepdims=True),
            b64, b64.axes(), is_leaf=lambda x: x is None), CRITIC.apply)[0])(pp)
        jax.tree_util.tree_map(lambda g, r: np.testing.assert_allclose(np.asarray(g[0]), np.asarray(r),
                                                                       rtol=1e-10, atol=1e-13), G, g0)


def test_learn_actor_step_applies_the_gradient_of_minus_mean_actor_objective(setup):
    """The optimiser of ``actor_optimizer(config)`` on ∇ of −mean_b J_b / n (learn's batch) gives
    learn's new Adam state and policy; a neighbouring objective's gradient does not."""
    algo, policy, hp, learner, learned, metrics, buf, k_learn = setup
    _, batch = _first_update_batch(algo, hp, learner, learned, buf, k_learn)

    @jax.jit
    def reference_step(pp, opt_state, b):
        loss, g = jax.value_and_grad(lambda p: MB.actor_loss(algo.actor_objective(p, b), H))(pp)
        upd, new_state = MB.actor_optimizer(CFG).update(g, opt_state, pp, value=loss)
        return optax.apply_updates(pp, upd), new_state, loss, g

    pp, opt, loss, g = reference_step(learner.policy, learner.actor_opt, batch)
    assert float(metrics["skipped_updates"]) == 0
    np.testing.assert_allclose(float(metrics["actor_loss"]), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(g)), rtol=1e-5)

    def close(a, b, rtol=2e-5):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return bool(np.all(np.abs(a - b) <= rtol * np.abs(b) + 1e-6 * np.max(np.abs(b)) + 1e-30))

    mu = lambda s: [x.mu for x in jax.tree_util.tree_leaves(s, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                    if isinstance(x, optax.ScaleByAdamState)][0]
    for a, b in zip(jax.tree_util.tree_leaves(learned.actor_opt), jax.tree_util.tree_leaves(opt)):
        assert close(a, b), (a, b)
    for a, b in zip(jax.tree_util.tree_leaves(learned.policy), jax.tree_util.tree_leaves(pp)):
        assert close(a, b), (a, b)
    for a, b in zip(jax.tree_util.tree_leaves(mu(learned.actor_opt)), jax.tree_util.tree_leaves(g)):
        assert close(a, 0.1 * np.asarray(b)), (a, b)              # b1 = 0.9 from zero moments
    # the comparison tells neighbouring objectives apart: no entropy term / another update's noise
    other_key = jax.random.PRNGKey(7)
    for b in (batch._replace(alpha=None),
              algo.actor_batch(learner._replace(model=learned.model, obs_stats=learned.obs_stats), buf, hp,
                               other_key)):
        _, opt_b, _, _ = reference_step(learner.policy, learner.actor_opt, b)
        assert not all(close(x, y) for x, y in zip(jax.tree_util.tree_leaves(mu(learned.actor_opt)),
                                                   jax.tree_util.tree_leaves(mu(opt_b))))


def test_agent_exposes_the_algorithms_actor_objective_and_batch(setup):
    algo, policy, hp, learner, learned, _, buf, k_learn = setup
    agent = MB.make_agent(CFG, policy=policy)
    assert agent.actor_objective is not None and agent.actor_batch is not None
    state = OP.OffPolicyState(learned, buf, None, (), None, None, None, None, None)
    key = jax.random.PRNGKey(3)
    b_agent, b_algo = agent.actor_batch(state, hp, key), algo.actor_batch(learned, buf, hp, key)
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), b_agent, b_algo)
