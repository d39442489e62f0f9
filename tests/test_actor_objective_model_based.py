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


MODEL, CRITIC = MB.default_model(CFG, 3, 1), MB.value_critic(CFG, 3)  # the bundles make_algo builds by default


def _setup():
    """The pieces of one ``learn`` call: algo, policy, hp, the learner before and after, learn's
    metrics, its batch (``batch``: the one its only update draws) and another update key's (``other``)."""
    env, _ = MB.validate(CFG)
    policy = gaussian(env.obs_size, env.action_size, CFG.actor_hidden)
    algo = MB.make_algo(CFG, env, policy)
    hp = CFG.hparams()
    k_init, k_buf, k_learn = jax.random.split(jax.random.PRNGKey(0), 3)
    learner = jax.jit(algo.init)(k_init, hp)
    learner = learner._replace(critic_target=jax.tree_util.tree_map(lambda x: 0.9 * x + 0.05, learner.critic))

    @jax.jit
    def random_transitions(key):  # 40 pendulum transitions from uniform states and actions
        k_s, k_a = jax.random.split(key)
        s = jax.random.uniform(k_s, (40, 2), minval=-1.0, maxval=1.0) * jnp.array([np.pi, 3.0])
        a = jax.random.uniform(k_a, (40, 1), minval=-1.0, maxval=1.0)
        s1 = jax.vmap(env.step, in_axes=(0, 0, None))(s, a, None)
        tr = {"obs": jax.vmap(env.observe)(s), "action": a, "reward": jax.vmap(env.reward)(s, a),
              "next_obs": jax.vmap(env.observe)(s1), "discount": jnp.ones((40,))}
        tr = jax.tree_util.tree_map(lambda x: x.astype(jnp.float32), tr)
        return replay.add(replay.init(CFG.buffer_size, OP.transition_example(env)), tr)

    buf = random_transitions(k_buf)
    learned, metrics = jax.jit(algo.learn)(learner, buf, hp, k_learn)
    # learn's only update: the fitted model and statistics (kept in its output), its own update key
    fitted = learner._replace(model=learned.model, obs_stats=learned.obs_stats)
    update_key = MB.learn_keys(k_learn, CFG.updates_per_iteration)[2][0]
    actor_batch = jax.jit(algo.actor_batch)
    return dict(algo=algo, policy=policy, hp=hp, learner=learner, learned=learned, metrics=metrics, buf=buf,
                fitted=fitted, update_key=update_key, batch=actor_batch(fitted, buf, hp, update_key),
                other=actor_batch(fitted, buf, hp, jax.random.PRNGKey(7)))


@pytest.fixture(scope="module")
def setup():
    return _setup()


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
        s, r = jax.vmap(MODEL.sample, in_axes=(None, 0, 0, 0))(mp, s, a, xi)
        J = J + batch.gamma ** t * (r - batch.alpha * lp)
    v = jax.vmap(lambda x: critic_apply(batch.target_params, N.normalize(stats, x)))(s)
    return J + batch.gamma ** H * v


def test_actor_objective_is_the_step_by_step_model_rollout_return_and_per_sample_grads_average(setup):
    algo, policy, batch = setup["algo"], setup["policy"], setup["batch"]
    assert batch.policy_noise.shape == (H + 1, CFG.batch_size, 1) and batch.dynamics_noise["member"].shape == (H, 8)
    jax.tree_util.tree_map(np.testing.assert_array_equal, batch.target_params, setup["learner"].critic_target)  # V'

    @jax.jit
    def everything(pp, b):  # one program: the objective, the references, the per-sample gradients
        J_ps, G = common.per_sample_grads(algo.actor_objective, pp, b)
        return {"J": algo.actor_objective(pp, b), "ref": reference_returns(policy, pp, b, CRITIC.apply),
                "no_entropy": reference_returns(policy, pp, b._replace(alpha=0.0), CRITIC.apply),
                "J_ps": J_ps, "G": G, "g_mean": jax.grad(lambda p: jnp.mean(algo.actor_objective(p, b)))(pp)}

    with jax.enable_x64(True):
        out = everything(_f64(setup["learned"].policy), _f64(batch))
    J = np.asarray(out["J"])
    assert J.dtype == np.float64 and J.shape == (CFG.batch_size,)
    np.testing.assert_allclose(J, np.asarray(out["ref"]), rtol=1e-12, atol=1e-12)
    assert np.min(np.abs(J - np.asarray(out["no_entropy"]))) > 1e-3      # the entropy term is seen
    np.testing.assert_allclose(np.asarray(out["J_ps"]), J, rtol=1e-12, atol=1e-12)
    jax.tree_util.tree_map(lambda g, m: np.testing.assert_allclose(np.asarray(g).mean(0), np.asarray(m),
                                                                   rtol=1e-10, atol=1e-13), out["G"], out["g_mean"])


def _adam_mu(opt_state):
    found = [x for x in jax.tree_util.tree_leaves(opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
             if isinstance(x, optax.ScaleByAdamState)]
    assert len(found) == 1
    return found[0].mu


def _close(a, b, rtol=2e-5):
    """|a − b| <= rtol |b| + 1e-6 max|b| elementwise (float32 programs compiled apart)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all(np.abs(a - b) <= rtol * np.abs(b) + 1e-6 * np.max(np.abs(b))))


def _trees_close(x, y):
    return all(_close(a, b) for a, b in zip(jax.tree_util.tree_leaves(x), jax.tree_util.tree_leaves(y), strict=True))


def test_learn_actor_step_applies_the_gradient_of_minus_mean_actor_objective(setup):
    """The optimiser of ``actor_optimizer(config)`` on ∇ of −mean_b J_b / n (learn's batch) gives
    learn's new Adam state and policy; a neighbouring objective's gradient does not."""
    algo, learner, learned, metrics, batch = (setup[k] for k in ("algo", "learner", "learned", "metrics", "batch"))

    @jax.jit
    def reference_step(pp, opt_state, b):
        loss, g = jax.value_and_grad(lambda p: MB.actor_loss(algo.actor_objective(p, b), H))(pp)
        upd, new_state = MB.actor_optimizer(CFG).update(g, opt_state, pp, value=loss)
        return optax.apply_updates(pp, upd), new_state, loss, g

    pp, opt, loss, g = reference_step(learner.policy, learner.actor_opt, batch)
    assert int(metrics["skipped_updates"]) == 0
    np.testing.assert_allclose(float(metrics["actor_loss"]), float(loss), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["grad_norm"]), float(optax.global_norm(g)), rtol=1e-5)
    assert _trees_close(learned.actor_opt, opt) and _trees_close(learned.policy, pp)
    # from zero moments with b1 = 0.9 and no clipping, learn's μ is 0.1 × the gradient of −mean J / n
    assert _trees_close(_adam_mu(learned.actor_opt), jax.tree_util.tree_map(lambda x: 0.1 * x, g))
    # and the comparison tells neighbouring objectives apart: no entropy term / another update's noise
    for b in (batch._replace(alpha=jnp.zeros_like(batch.alpha)), setup["other"]):
        _, opt_b, _, _ = reference_step(learner.policy, learner.actor_opt, b)
        assert not _trees_close(_adam_mu(learned.actor_opt), _adam_mu(opt_b))


def test_agent_actor_batch_is_the_algorithms_on_the_state(setup):
    agent = MB.make_agent(CFG, policy=setup["policy"])
    assert agent.actor_objective is not None
    state = OP.OffPolicyState(setup["fitted"], setup["buf"], None, (), None, None, None, None, None)
    b_agent = jax.jit(agent.actor_batch)(state, setup["hp"], setup["update_key"])
    jax.tree_util.tree_map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), b_agent,
                           setup["batch"])
