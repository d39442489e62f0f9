"""The PPO (and REINFORCE-with-baseline) ``Agent`` bundle: ``init``, ``update`` (one iteration),
``evaluate``.

One ``update`` is four pure steps on the ``PPOState`` (losses in ``losses.py``):

    collect      ``unroll_length`` steps of the stochastic policy in ``num_envs`` envs (``lax.scan``,
                 plain forward passes: no gradient through the env), auto-reset at episode ends;
                 stores o_t, ε_t, log π_old(a_t|o_t), r_t, o'_t (before the reset), terminal/truncated
    targets      V(o_t), V(o'_t); GAE advantages (or reward-to-go minus V) and value targets per env,
                 advantages normalised over the batch
    sgd          ``epochs`` passes of ``minibatches`` shuffled minibatches of the total loss (clipped
                 surrogate + c_v value loss − c_e entropy), one clipped Adam over policy and value,
                 guarded (``guards.skip_nonfinite``)
    bookkeeping  observation statistics (held fixed during the iteration, updated afterwards),
                 episode returns, metrics
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import guards
from mbpo_grad import normalizer as N
from mbpo_grad.agents import common
from mbpo_grad.agents.common import Agent, TimedState
from mbpo_grad.agents.ppo import losses
from mbpo_grad.agents.ppo.config import HParams, PPOConfig, validate
from mbpo_grad.agents.ppo.networks import default_policy, make_act, value_critic
from mbpo_grad.policies.base import Policy, log_ratio, sample_and_log_prob

PyTree = Any
sg = jax.lax.stop_gradient


class PPOState(NamedTuple):
    params: PyTree             # {"policy": θ, "value": φ}
    opt_state: PyTree
    obs_stats: N.RunningStats
    env_state: TimedState
    ep_return: jax.Array       # [B] undiscounted (unscaled) return of the running episode so far
    last_return: jax.Array     # [B] return of each env's last finished episode
    finished: jax.Array        # [B] bool: has finished an episode
    env_steps: jax.Array       # int: environment transitions taken
    iteration: jax.Array


class Rollout(NamedTuple):
    """One iteration's data, time on axis 0 and env on axis 1 ([T, B, ...])."""

    obs: jax.Array             # raw o_t
    next_obs: jax.Array        # raw o'_t (before any reset; zeros where not ``ok``)
    noise: jax.Array           # ε_t of a_t = sample(θ_old, o_t, ε_t)
    actions: jax.Array
    log_probs: jax.Array       # log π_old(a_t | o_t)
    rewards: jax.Array         # raw r_t (zeros where not ``ok``)
    terminal: jax.Array        # bool: o'_t is a terminal state (or the step was not ``ok``)
    truncated: jax.Array       # bool: the time limit was reached at o'_t
    ok: jax.Array              # bool: r_t and o'_t are finite


ENV_AXES = PPOState(params=None, opt_state=None, obs_stats=None, env_state=0, ep_return=0, last_return=0,
                    finished=0, env_steps=None, iteration=None)


class AgentParts(NamedTuple):
    """The pieces ``update`` is made of, for tests and diagnostics (``build``)."""

    collect: Any       # collect(policy_params, obs_stats, ts, ep_return, last_return, finished, key)
    targets: Any       # targets(params, obs_stats, rollout, hp) -> (advantages, value targets) [T, B]
    loss_fn: Any       # loss_fn(params, policy_params_old, batch, hp) -> (L, aux)
    policy: Policy
    critic: Any
    episode_length: int


def make_agent(config: PPOConfig, *, env=None, policy: Optional[Policy] = None) -> Agent:
    """The PPO ``Agent`` (init, update, evaluate) for ``config``.

    env: an ``envs.Env`` to use instead of ``config.env``. policy: any stochastic ``Policy``
    bundle with a density (default: a tanh-squashed Gaussian MLP with ``policy_hidden``); it
    acts with ε = None (its mode) in evaluation.
    """
    return build(config, env=env, policy=policy)[0]


def build(config: PPOConfig, *, env=None, policy: Optional[Policy] = None):
    """(``Agent``, ``AgentParts``): ``make_agent`` and the functions its ``update`` is made of."""
    env, episode_length = validate(config, env)
    T, B = int(config.unroll_length), int(config.num_envs)
    policy = common.policy_for(env, policy, lambda: default_policy(config, env.obs_size, env.action_size),
                               density_error="policy: PPO needs a stochastic policy bundle with a density "
                                             "(noise_shape != (0,)), e.g. policies.gaussian")
    noise_shape = tuple(policy.noise_shape)
    dyn_noise = tuple(env.noise_shape) != ()
    critic = value_critic(config, env.obs_size)
    step, reward, _, terminal_fn = common.timed_env(env, episode_length)
    uses_next = getattr(reward, "uses_next_state", False)
    n_mb = int(config.minibatches)
    n_samples = T * B
    mb_size = n_samples // n_mb
    fdtype = jnp.float64 if config.x64 else jnp.float32
    mode = config.advantage

    opt = guards.skip_nonfinite(
        common.make_optimizer(total_steps=config.iterations * config.epochs * n_mb, schedule=config.lr_schedule,
                              b1=config.adam_b1, b2=config.adam_b2),
        max_grad_norm_to_skip=float(config.max_grad_norm_to_skip))

    def to_float(tree):
        return jax.tree_util.tree_map(
            lambda x: x.astype(fdtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree)

    def normalise(stats, obs):
        return N.normalize(stats, obs) if config.obs_norm else obs

    def init(key, hp):
        k_pol, k_val, k_env = jax.random.split(key, 3)
        params = {"policy": to_float(policy.init(k_pol)), "value": to_float(critic.init(k_val))}
        ts = common.reset_timed(env, jax.random.split(k_env, B))
        if config.stagger:
            ts = ts._replace(t=(jnp.arange(B) * episode_length // B).astype(jnp.int32))
        zeros = jnp.zeros((B,), fdtype)
        return PPOState(params, common.init_optimizer(opt, params, learning_rate=hp.lr,
                                                      max_grad_norm=hp.max_grad_norm),
                        N.init(env.obs_size, fdtype), ts, zeros, zeros, jnp.zeros((B,), bool),
                        jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def collect(pp, stats, ts, ep_return, last_return, finished, key):
        """``lax.scan`` of ``unroll_length`` batched steps: (Rollout, final carry)."""
        def one_step(carry, k):
            ts, ep_ret, last_ret, fin = carry
            k_eps, k_xi, k_reset = jax.random.split(k, 3)
            obs = jax.vmap(lambda s: env.observe(s.env_state))(ts)
            eps = jax.random.normal(k_eps, (B,) + noise_shape, fdtype)
            act, logp = jax.vmap(lambda o, e: sample_and_log_prob(policy, pp, normalise(stats, o), e))(obs, eps)
            xi = jax.random.normal(k_xi, (B,) + tuple(env.noise_shape), fdtype) if dyn_noise else None
            ts_next = jax.vmap(step, in_axes=(0, 0, 0 if dyn_noise else None))(ts, act, xi)
            r = jax.vmap(reward)(ts, act, ts_next) if uses_next else jax.vmap(reward)(ts, act)
            next_obs = jax.vmap(lambda s: env.observe(s.env_state))(ts_next)
            ok = jnp.isfinite(r) & jnp.all(jnp.isfinite(next_obs), axis=-1)
            term = jax.vmap(terminal_fn)(ts_next) | ~ok
            trunc = (ts_next.t >= episode_length) & ~term
            ended = term | trunc
            r = jnp.where(ok, r, 0.0).astype(fdtype)
            next_obs = jnp.where(ok[:, None], next_obs, 0.0)
            acc = ep_ret + r
            counted = ended & ok
            last_ret = jnp.where(counted, acc, last_ret)
            fin = fin | counted
            ep_ret = jnp.where(ended, 0.0, acc)
            ts_new = common.reset_where(env, ts_next, ended, k_reset)
            return (ts_new, ep_ret, last_ret, fin), Rollout(obs, next_obs, eps, act, logp, r, term, trunc, ok)

        carry, ro = jax.lax.scan(one_step, (ts, ep_return, last_return, finished), jax.random.split(key, T))
        return jax.tree_util.tree_map(sg, ro), carry

    def targets(params, stats, ro: Rollout, hp):
        """(advantages [T, B], value targets [T, B]) of a rollout (no gradient)."""
        v_apply = jax.vmap(jax.vmap(lambda o: critic.apply(params["value"], normalise(stats, o))))
        v = v_apply(ro.obs)
        v_next = jnp.where(ro.ok, v_apply(ro.next_obs), 0.0)
        r = ro.rewards * jnp.asarray(hp.reward_scale, fdtype)
        adv, y = jax.vmap(lambda *a: losses.advantages_and_targets(*a, hp.gamma, hp.lam, mode), in_axes=1,
                          out_axes=1)(r, v, v_next, ro.terminal, ro.truncated)
        return sg(adv), sg(y)

    def loss_fn(params, pp_old, batch, hp):
        obs, eps, act, logp_old, adv, y, w = batch
        lr = jax.vmap(lambda o, e, a, l: log_ratio(policy, pp_old, params["policy"], o, e, a, l))(
            obs, eps, act, logp_old)
        if config.clip:
            pi_loss = losses.clipped_surrogate(lr, adv, hp.clip_eps, w)
        else:
            pi_loss = losses.ratio_surrogate(lr, adv, w)
        values = jax.vmap(lambda o: critic.apply(params["value"], o))(obs)
        v_loss = losses.value_loss(values, y, w)
        _, logp_new = jax.vmap(lambda o, e: sample_and_log_prob(policy, params["policy"], o, e))(obs, eps)
        ent = losses.entropy_estimate(logp_new, w)
        total = losses.total_loss(pi_loss, v_loss, ent, hp.value_cost, hp.entropy_cost)
        return total, {"policy_loss": pi_loss, "value_loss": v_loss, "entropy": ent,
                       "approx_kl": losses.approx_kl(lr, w), "clip_fraction": losses.clip_fraction(lr, hp.clip_eps, w)}

    def sgd(params, opt_state, data, hp, key):
        """``epochs`` × ``minibatches`` guarded Adam steps on the flattened batch ``data``."""
        pp_old = params["policy"]

        def minibatch(carry, idx):
            params, ostate = carry
            mb = jax.tree_util.tree_map(lambda x: x[idx], data)
            (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(params, pp_old, mb, hp)
            upd, ostate = opt.update(g, ostate, params, value=loss)
            return (optax.apply_updates(params, upd), ostate), dict(aux, loss=loss)

        def epoch(carry, k):
            perm = jax.random.permutation(k, n_samples)[: n_mb * mb_size].reshape((n_mb, mb_size))
            return jax.lax.scan(minibatch, carry, perm)

        (params, opt_state), aux = jax.lax.scan(epoch, (params, opt_state), jax.random.split(key, config.epochs))
        return params, opt_state, aux

    def update(state: PPOState, hp: HParams, key):
        k_collect, k_sgd = jax.random.split(key)
        stats, params = state.obs_stats, state.params
        ro, (ts, ep_ret, last_ret, fin) = collect(params["policy"], stats, state.env_state, state.ep_return,
                                                  state.last_return, state.finished, k_collect)
        adv, y = targets(params, stats, ro, hp)
        w = ro.ok.astype(fdtype)
        if config.normalize_advantage:
            adv = losses.normalize_advantages(adv, w)
        flat = lambda x: x.reshape((n_samples,) + x.shape[2:])
        data = tuple(flat(x) for x in (jax.vmap(jax.vmap(lambda o: normalise(stats, o)))(ro.obs), ro.noise,
                                       ro.actions, ro.log_probs, adv, y, w))
        params, opt_state, aux = sgd(params, state.opt_state, data, hp, k_sgd)

        new_stats = N.update(stats, ro.obs) if config.obs_norm else stats
        env_steps = state.env_steps + jnp.sum(ro.ok).astype(jnp.int32)
        n_fin = jnp.sum(fin)
        episode_return = jnp.where(n_fin > 0, jnp.sum(jnp.where(fin, last_ret, 0.0)) / jnp.maximum(n_fin, 1),
                                   jnp.nan)
        skip = guards.skip_stats(opt_state)
        new_state = PPOState(params, opt_state, new_stats, ts, ep_ret, last_ret, fin, env_steps, state.iteration + 1)
        last = jax.tree_util.tree_map(lambda x: x[-1, -1], aux)
        metrics = common.stack_metrics({
            "env_steps": env_steps,
            "episode_return": episode_return,
            "reward_per_step": losses.weighted_mean(ro.rewards, w),
            "loss": jnp.mean(aux["loss"][-1]),
            "policy_loss": jnp.mean(aux["policy_loss"][-1]),
            "value_loss": jnp.mean(aux["value_loss"][-1]),
            "entropy": jnp.mean(aux["entropy"][-1]),
            "approx_kl": last["approx_kl"],
            "clip_fraction": last["clip_fraction"],
            "grad_norm": skip["grad_norm"],
            "skipped_updates": (skip["total_skipped"] - guards.skip_stats(state.opt_state)["total_skipped"]
                                ).astype(jnp.int32),
            "total_skipped": skip["total_skipped"],
            "bad_steps": jnp.sum(~ro.ok).astype(jnp.int32),
        })
        return new_state, metrics

    act = make_act(config, policy)

    def policy_params(state: PPOState, hp: HParams):
        del hp
        return common.normalised_policy_params(state.params["policy"], state.obs_stats)

    def evaluate(state: PPOState, hp: HParams, key):
        return common.evaluate_policy(env, act, policy_params(state, hp), key, num_envs=config.eval_envs,
                                      episode_length=episode_length, dtype=fdtype)

    name = "ppo" if config.clip or config.epochs * n_mb > 1 or mode == "gae" else "reinforce"
    agent = Agent(init, update, evaluate, name, policy_params, act,
                  common.agent_spec(env, policy, episode_length, config.eval_envs), env_axes=ENV_AXES)
    return agent, AgentParts(collect, targets, loss_fn, policy, critic, episode_length)


__all__ = ["PPOState", "Rollout", "AgentParts", "make_agent", "build", "ENV_AXES"]
