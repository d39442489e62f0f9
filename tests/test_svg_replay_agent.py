"""The model-based agent with ``svg="replay"`` (SVG(1)-ER on stored transitions, noise inference).

Checked in float64 against a step-by-step reference and against a direct ``svg.svg_replay_returns``
call on the same transitions, elite slots and behaviour densities:

    ε̂ = π⁻¹(a; (s − μ)/σ),  ξ̂ = f̂⁻¹(s', r; s, a),  â = π((s − μ)/σ, ε̂),  (ŝ', r̂) = f̂(s, â, ξ̂),
    J_b = r̂ − α log π(â|s) + γ d V'((ŝ' − μ)/σ),   ρ̄_b = min(exp(log π(â|s) − log μ_b), c),

the replayed (â, ŝ', r̂) reproduce the stored (a, s', r), the gradient of the agent's objective is
the float64 central difference of J with the noise held at its inferred value, the buffer keeps
the behaviour log-density of each stored action, and a few training iterations run.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad import normalizer as N
from mbpo_grad import svg
from mbpo_grad.agents import common
from mbpo_grad.agents import model_based as MB
from mbpo_grad.agents.model_based import losses
from mbpo_grad.policies import deterministic, gaussian
from mbpo_grad.policies.base import sample_and_log_prob

TINY = dict(env="pendulum", num_envs=2, steps_per_iteration=8, iterations=3, updates_per_iteration=1,
            batch_size=8, buffer_size=64, warmup_steps=8, eval_every=3, eval_envs=2, ensemble_size=3, elites=2,
            model_hidden=(16,), model_epochs=1, fit_size=32, model_batch=16, actor_hidden=(8,), critic_hidden=(8,),
            critic_iterations=1, svg="replay")
CFG = MB.ModelBasedConfig(**{**TINY, "entropy": True, "alpha": 0.2, "gamma": 0.9, "replay_cap": 1.5})
MODEL, CRITIC = MB.default_model(CFG, 3, 1), MB.value_critic(CFG, 3)


def _f64(tree):
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, jnp.float64) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)


@pytest.fixture(scope="module")
def run():
    """A few real training iterations on pendulum (entropy on, cap c = 1.5) and the actor batch
    of one update drawn from the final state (its buffer's transitions and behaviour densities)."""
    policy = gaussian(3, 1, CFG.actor_hidden)
    agent = MB.make_agent(CFG, policy=policy)
    hp = CFG.hparams()
    init, update = jax.jit(agent.init), jax.jit(agent.update)
    states, metrics = [init(jax.random.key(0), hp)], []
    for k in jax.random.split(jax.random.key(1), CFG.iterations):
        s, m = update(states[-1], hp, k)
        states.append(s)
        metrics.append(jax.device_get(m))
    batch = jax.jit(agent.actor_batch)(states[-1], hp, jax.random.key(2))
    return dict(agent=agent, policy=policy, states=states, metrics=metrics, batch=batch,
                pp=states[-1].learner.policy)


def reference(policy, pp, batch, noise=None):
    """(J [M], ρ̄ [M], (â, ŝ', r̂), (ε̂, ξ̂)) step by step; ``noise`` holds (ε̂, ξ̂) fixed instead of inferring them."""
    tr, stats, mp = batch.transitions, batch.obs_stats, batch.model
    s, a = tr["obs"], tr["action"]
    o = jax.vmap(lambda x: N.normalize(stats, x))(s)
    if noise is None:
        eps = jax.vmap(policy.infer_noise, in_axes=(None, 0, 0))(pp, o, a)
        xi = jax.vmap(MODEL.infer_noise, in_axes=(None, 0, 0, 0, 0, 0))(mp, s, a, tr["next_obs"], tr["reward"],
                                                                         batch.member)
        noise = (eps, xi)
    eps, xi = noise
    a_hat, lp = jax.vmap(lambda oo, e: sample_and_log_prob(policy, pp, oo, e))(o, eps)
    s1_hat, r_hat = jax.vmap(MODEL.sample, in_axes=(None, 0, 0, 0))(mp, s, a_hat, xi)
    v = jax.vmap(lambda x: CRITIC.apply(batch.target_params, N.normalize(stats, x)))(s1_hat)
    alpha = 0.0 if batch.alpha is None else batch.alpha
    J = r_hat - alpha * lp + batch.gamma * tr["discount"] * v
    w = jnp.minimum(jnp.exp(lp - batch.behaviour_log_prob), batch.cap)
    return J, w, (a_hat, s1_hat, r_hat), noise


def direct_svg(policy, pp, batch):
    """``svg.svg_replay_returns`` itself on the batch (no entropy): the policy bundle handed the
    normalised observation by hand, the critic V'((o − μ)/σ) ignoring its action."""
    stats = batch.obs_stats
    nrm = lambda o: N.normalize(stats, o)
    pol = policy._replace(sample=lambda p, o, e: policy.sample(p, nrm(o), e),
                          infer_noise=lambda p, o, a: policy.infer_noise(p, nrm(o), a),
                          log_prob=lambda p, o, a: policy.log_prob(p, nrm(o), a),
                          sample_and_log_prob=lambda p, o, e: policy.sample_and_log_prob(p, nrm(o), e))
    M = batch.member.shape[0]
    return svg.svg_replay_returns(pol, pp, MODEL, batch.model, batch.transitions,
                                  critic=lambda o, a: CRITIC.apply(batch.target_params, nrm(o)), gamma=batch.gamma,
                                  behaviour_log_prob=batch.behaviour_log_prob, cap=batch.cap, member=batch.member,
                                  next_policy_noise=jax.random.normal(jax.random.PRNGKey(3), (M, 1)))


def test_replay_objective_is_svg_replay_returns_and_its_gradient_holds_the_inferred_noise(run):
    algo, policy, setup = run["agent"], run["policy"], run
    M = CFG.batch_size

    @jax.jit
    def everything(pp, b, v_dir):
        plain = b._replace(alpha=None)
        J_ref, w_ref, _, noise = reference(policy, pp, b)
        J_svg, w_svg = direct_svg(policy, pp, plain)

        def fixed(p):  # the replayed return with (ε̂, ξ̂) held at their values inferred under pp
            return jnp.mean(w_ref * reference(policy, p, b, noise)[0])

        h = 1e-5
        step = lambda sgn: jax.tree_util.tree_map(lambda x, d: x + sgn * h * d, pp, v_dir)
        g = jax.grad(lambda p: jnp.mean(algo.actor_objective(p, b)))(pp)
        J_ps, G = common.per_sample_grads(algo.actor_objective, pp, b)
        obj, aux = algo.actor_objective(pp, b, return_traj=True)
        return {"obj": obj, "aux": aux,
                "obj_plain": algo.actor_objective(pp, plain), "J_ref": J_ref, "w_ref": w_ref, "J_svg": J_svg,
                "w_svg": w_svg, "gv": sum(jnp.vdot(a, d) for a, d in zip(jax.tree_util.tree_leaves(g),
                                                                         jax.tree_util.tree_leaves(v_dir))),
                "fd": (fixed(step(1.0)) - fixed(step(-1.0))) / (2 * h), "g": g, "J_ps": J_ps, "G": G,
                "J_ref_plain": reference(policy, pp, plain)[0]}

    with jax.enable_x64(True):
        pp = _f64(setup["pp"])
        leaves, tdef = jax.tree_util.tree_flatten(pp)
        keys = jax.random.split(jax.random.PRNGKey(5), len(leaves))
        v_dir = tdef.unflatten([jax.random.normal(k, x.shape, jnp.float64) for k, x in zip(keys, leaves)])
        out = jax.device_get(everything(pp, _f64(setup["batch"]), v_dir))
    J, w = out["aux"]
    assert J.dtype == np.float64 and J.shape == (M,) and w.shape == (M,)
    # the weights vary and the cap c = 1.5 binds for some transitions
    assert np.any(w == 1.5) and np.any(w < 1.0) and np.std(w) > 0.1
    np.testing.assert_allclose(w, out["w_ref"], rtol=1e-12)
    np.testing.assert_allclose(J, out["J_ref"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out["obj"], w * J, rtol=1e-12, atol=1e-12)
    # without entropy: exactly svg.svg_replay_returns (ε' at s' does not matter to a V critic)
    np.testing.assert_allclose(out["obj_plain"], out["w_svg"] * out["J_svg"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out["obj_plain"], out["w_ref"] * out["J_ref_plain"], rtol=1e-10, atol=1e-10)
    assert np.min(np.abs(out["J_ref"] - out["J_ref_plain"])) > 1e-3          # the entropy term is seen
    # gradient: the float64 central difference of mean ρ̄ J with the inferred noise held fixed
    assert abs(out["gv"]) > 1e-3
    np.testing.assert_allclose(out["gv"], out["fd"], rtol=1e-6)
    np.testing.assert_allclose(out["J_ps"], out["obj"], rtol=1e-12, atol=1e-12)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a.mean(0), b, rtol=1e-10, atol=1e-13),
                           out["G"], out["g"])


def test_replayed_transition_reproduces_the_stored_one_and_terminals_cut_the_bootstrap(run):
    policy, batch, algo = run["policy"], run["batch"], run["agent"]

    @jax.jit
    def everything(pp, b):
        _, _, (a_hat, s1_hat, r_hat), _ = reference(policy, pp, b)
        plain = b._replace(alpha=None, behaviour_log_prob=None)
        tr = b.transitions
        v1 = jax.vmap(lambda x: CRITIC.apply(b.target_params, N.normalize(b.obs_stats, x)))(tr["next_obs"])
        half = tr["discount"].at[::2].set(0.0)
        ended = plain._replace(transitions={**tr, "discount": half})
        J_end, _ = losses.replay_return(policy, MODEL, CRITIC, pp, ended, obs_norm=True, terminal=True)
        return {"a": a_hat, "s1": s1_hat, "r": r_hat, "J0": algo.actor_objective(pp, plain._replace(gamma=0.0)),
                "J": algo.actor_objective(pp, plain), "v1": v1, "J_end": J_end, "half": half}

    with jax.enable_x64(True):
        b = _f64(batch)
        out = jax.device_get(everything(_f64(run["pp"]), b))
    tr = jax.device_get(b.transitions)
    np.testing.assert_allclose(out["a"], tr["action"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["s1"], tr["next_obs"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["r"], tr["reward"], rtol=0, atol=1e-10)
    # through the agent's objective (unit weights, no entropy): γ = 0 gives the stored reward,
    # γ = 0.9 adds γ V' at the stored next observation, and d = 0 drops it
    np.testing.assert_allclose(out["J0"], tr["reward"], rtol=0, atol=1e-10)
    gamma = float(b.gamma)                                               # 0.9 as float32
    np.testing.assert_allclose(out["J"], tr["reward"] + gamma * out["v1"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(out["J_end"], tr["reward"] + gamma * out["half"] * out["v1"], rtol=0, atol=1e-10)
    assert np.min(np.abs(gamma * out["v1"])) > 1e-3


def test_bad_replay_settings_are_named():
    with pytest.raises(ValueError, match="svg"):
        MB.make_agent(MB.ModelBasedConfig(**{**TINY, "svg": "rollouts"}))
    with pytest.raises(ValueError, match="svg"):
        MB.make_agent(MB.ModelBasedConfig(**{**TINY, "svg": 1}))
    with pytest.raises(ValueError, match="model_noise"):
        MB.make_agent(MB.ModelBasedConfig(**{**TINY, "model_noise": False}))
    with pytest.raises(ValueError, match="replay_cap"):
        MB.make_agent(MB.ModelBasedConfig(**{**TINY, "replay_cap": 0.0}))
    with pytest.raises(ValueError, match="replay_cap"):
        MB.check_hparams(MB.ModelBasedConfig(**TINY).hparams(replay_cap=-1.0))
    with pytest.raises(ValueError, match="policy: svg='replay'"):
        MB.make_agent(MB.ModelBasedConfig(**TINY), policy=deterministic(3, 1))


def test_replay_training_runs_stores_behaviour_densities_and_moves_the_policy(run):
    states, metrics = run["states"], run["metrics"]
    last = metrics[-1]
    assert all(np.isfinite(float(last[k])) for k in ("actor_loss", "critic_loss", "grad_norm", "model_return",
                                                       "replay_weight", "model_mse"))
    assert float(last["replay_weight"]) > 0 and int(last["skipped_updates"]) == 0
    moved = [float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree_util.tree_leaves(states[-1].learner.policy),
                                                            jax.tree_util.tree_leaves(states[1].learner.policy))]
    assert max(moved) > 1e-6
    # the buffer's behaviour log-densities: −log 2 for the 8 warm-up actions, then log π at the stored
    # action under the learner that collected it (the last iteration's 16 transitions: states[-2])
    data = jax.device_get(states[-1].buffer.data)
    np.testing.assert_allclose(data["behaviour_log_prob"][:8], -np.log(2.0), rtol=1e-6)
    l = states[-2].learner
    new = slice(2 * 16, 3 * 16)
    o = jax.vmap(lambda x: N.normalize(l.obs_stats, x))(data["obs"][new])
    lp = jax.vmap(run["policy"].log_prob, in_axes=(None, 0, 0))(l.policy, o, data["action"][new])
    np.testing.assert_allclose(data["behaviour_log_prob"][new], np.asarray(lp), rtol=1e-4, atol=1e-4)
