"""SHAC's PPO steps for the score-function part (``estimator="score"/"auto"``, ``score_epochs`` ≥ 1).

With one epoch of one minibatch and no critic, the "score" update is one Adam step on PPO's
surrogate at ratio 1, −mean_{b,t}[Â_{b,t} ∇log π(a_{b,t}|o_{b,t})], with Â the normalised
discounted return to the window's end: checked against that formula built here from the
window's own rewards, observations and noise (float64; the first Adam step is −lr ĝ / (|ĝ| + ε)
elementwise after the global-norm clip). "auto" with ``auto_z = 0`` (α = 0) is that update
exactly; bad settings name their field.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbpo_grad.agents import shac
from mbpo_grad.agents.shac.networks import default_policy   # the agent's tanh Gaussian

N_ENVS, H, GAMMA = 64, 4, 0.9


def _config(**kw):
    base = dict(env="lqr", num_envs=N_ENVS, horizon=H, iterations=4, eval_every=4, eval_envs=2, use_critic=False,
                obs_norm=False, stagger=False, x64=True, actor_hidden=(8,), gamma=GAMMA, estimator="score",
                score_epochs=1, score_minibatches=1)
    base.update(kw)
    return shac.SHACConfig(**base)


def _flat(tree):
    return np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(tree)])


def test_one_score_step_is_the_ppo_gradient_step_on_the_window():
    with jax.enable_x64(True):
        cfg = _config()
        agent = shac.make_agent(cfg)
        hp = cfg.hparams()
        state = agent.init(jax.random.PRNGKey(0), hp)
        key = jax.random.PRNGKey(1)
        new, m = jax.jit(agent.update)(state, hp, key)

        batch = agent.actor_batch(state, hp, key)
        _, traj = agent.actor_objective(state.policy_params, batch, return_traj=True)
        r = np.asarray(traj.rewards)                                         # [B, n]
        disc = GAMMA ** np.arange(H)
        G = np.stack([(r[:, t:] * disc[: H - t]).sum(1) for t in range(H)], 1)  # return to the window's end
        A = ((G - G.mean()) / (G.std() + 1e-8)).reshape(-1)                 # b-major, as obs and eps
        obs = np.asarray(traj.states.env_state[:, :H]).reshape(N_ENVS * H, -1)  # lqr observes its state
        eps = np.swapaxes(np.asarray(batch.policy_noise[:H]), 0, 1).reshape(N_ENVS * H, -1)
        policy = default_policy(cfg, obs.shape[1], int(np.asarray(traj.actions).shape[-1]))
        old = state.policy_params
        acts = jax.vmap(lambda o, e: policy.sample(old, o, e))(obs, eps)
        lp_old = jax.vmap(lambda o, a: policy.log_prob(old, o, a))(obs, acts)

        def surrogate(p):
            lp = jax.vmap(lambda o, a: policy.log_prob(p, o, a))(obs, acts)
            return -jnp.mean(jnp.exp(lp - lp_old) * A)

        g = _flat(jax.grad(surrogate)(old))
        g = g * min(1.0, 0.5 / np.linalg.norm(g))                            # clip_by_global_norm(0.5)
        lr = float(np.float32(1e-3))            # the traced hyper-parameters are float32 arrays
        expected = _flat(old) - lr * g / (np.abs(g) + 1e-8)                  # Adam's first step
        np.testing.assert_allclose(_flat(new.policy_params), expected, rtol=1e-9, atol=1e-12)
        assert float(m["score_kl"]) > 0.0 and 0.0 <= float(m["score_clip_frac"]) <= 1.0
        # and the move is the PPO step's alone: the actor's own optimiser took its step with weight 0
        assert np.abs(_flat(new.policy_params) - _flat(old)).max() <= 1e-3 + 1e-12


def test_auto_with_alpha_zero_is_the_score_update():
    """auto_z = 0 forces α = 0 (the bias bound is 0 whenever the two means differ): the pathwise
    step gets weight 0 and the PPO steps weight 1, so "auto" equals "score" on the same key
    (default 10 epochs × 4 minibatches, a critic)."""
    with jax.enable_x64(True):
        out = {}
        for est in ("score", "auto"):
            cfg = _config(estimator=est, score_epochs=10, score_minibatches=4, use_critic=True, auto_z=0.0)
            agent = shac.make_agent(cfg)
            hp = cfg.hparams()
            state = agent.init(jax.random.PRNGKey(3), hp)
            out[est] = jax.jit(agent.update)(state, hp, jax.random.PRNGKey(4))
        (s_score, _), (s_auto, m_auto) = out["score"], out["auto"]
        assert float(m_auto["alpha"]) == 0.0 and float(m_auto["alpha_effective"]) == 0.0
        np.testing.assert_allclose(_flat(s_auto.policy_params), _flat(s_score.policy_params), rtol=1e-9, atol=1e-12)
        moved = np.abs(_flat(s_auto.policy_params) - _flat(state.policy_params)).max()
        assert moved > 1e-4, moved


def test_score_epochs_zero_keeps_the_one_step_mixture():
    cfg = _config(estimator="auto", score_epochs=0, x64=False)
    agent = shac.make_agent(cfg)
    hp = cfg.hparams()
    state = agent.init(jax.random.PRNGKey(0), hp)
    assert state.score_opt is None
    new, m = jax.jit(agent.update)(state, hp, jax.random.PRNGKey(1))
    assert "score_kl" not in m and np.isfinite(float(m["grad_norm"]))


@pytest.mark.parametrize("kw, match", [
    (dict(score_epochs=-1), "score_epochs"),
    (dict(score_minibatches=0), "score_minibatches"),
    (dict(score_minibatches=N_ENVS * H + 1), "score_minibatches"),
    (dict(score_lr=0.0), "score_lr"),
    (dict(score_clip=-0.1), "score_clip"),
    (dict(score_max_grad_norm=float("inf")), "score_max_grad_norm"),
])
def test_bad_score_step_settings_name_the_field(kw, match):
    with pytest.raises(ValueError, match=match):
        shac.make_agent(_config(x64=False, **kw))
