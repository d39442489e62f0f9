"""Fitted Q iteration with embedded optimisation over continuous actions, and its amortised version.

Fitted Q iteration (Ernst et al. 2005; Riedmiller 2005) regresses Q on Bellman targets
from a frozen copy Q_k:

    y = r + γ d max_{a' ∈ [−1,1]^m} Q_k(s', a').

With continuous actions the max is itself an optimisation, embedded in every target:
``maximize_q`` runs a few steps of projected gradient ascent on a ↦ Q_k(s', a) from
several starts and keeps the best point it visited (the inner problem is non-concave, so
several starts). The greedy policy is the same maximisation at s.

Amortised version (``amortized=True``): a policy network π_φ is fitted by regression to
the maximisers a*(s') that the targets produced over a sliding window of the last
``window`` fitted-Q iterations (a ring buffer of (s', a*) pairs),

    min_φ  mean_{(s', a*) ∈ window} ‖π_φ(s') − a*‖²,

and then serves as a warm start of the inner maximisation (so fewer steps suffice) and as
the behaviour and evaluation policy (no inner optimisation when acting). This is the bridge
from FQI to the actor-critic members of the family: an actor that amortises the argmax.

One iteration (shared loop in ``offpolicy``): collect (greedy action + Gaussian noise),
then ``q_iterations`` times: freeze Q_k ← Q; ``q_steps`` minibatch Adam steps on
mean (Q(s, a) − y)²; (amortised) add this fit's last (s', a*) batch to the window and take
``policy_steps`` regression steps.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Tuple

import jax
import jax.numpy as jnp
import optax

from mbpo_grad import critics as C
from mbpo_grad import exploration as X
from mbpo_grad import replay
from mbpo_grad.agents import offpolicy as OP
from mbpo_grad.agents import hyperparams
from mbpo_grad.agents.hyperparams import traced
from mbpo_grad.agents.common import Agent
from mbpo_grad.validation import check_int
from mbpo_grad.nn import mlp

PyTree = Any


# --------------------------------------------------------------------------- the embedded optimiser
def maximize_q(q: Callable[[jax.Array], jax.Array], starts: jax.Array, *, steps: int, step_size: Any = 0.5,
               decay: Any = 0.8, normalize: bool = True) -> Tuple[jax.Array, jax.Array]:
    """max_{a ∈ [−1,1]^m} q(a) by projected gradient ascent from each row of ``starts`` [M, m].

    Iterates a ← Π(a + η_k u_k), Π = clip to [−1, 1], η_k = step_size · decay^k, with
    u_k = P∇q(a) / ‖P∇q(a)‖ (``normalize=True``: the step length does not depend on the scale
    of Q) or u_k = P∇q(a); P zeroes the components that point out of the box at an active
    bound (the projected gradient, so steps move along a face). One start travels at most
    step_size / (1 − decay); keep it ≳ 2 (the box width) or use several starts.
    Returns (a*, q(a*)), the best point among all starts and all iterates (so the result is
    never worse than the best start). One observation: ``q`` closes over it; batch with
    ``jax.vmap``.
    """
    check_int(steps, "steps", minimum=0)
    starts = jnp.asarray(starts)
    if starts.ndim != 2:
        raise ValueError(f"starts must have shape [M, act_dim], got {starts.shape}")
    vg = jax.vmap(jax.value_and_grad(q))
    dtype = starts.dtype
    a = jnp.clip(starts, -1.0, 1.0)

    def body(carry, k):
        a, best_a, best_q = carry
        val, g = vg(a)
        better = val > best_q
        best_a = jnp.where(better[:, None], a, best_a)
        best_q = jnp.where(better, val, best_q)
        # projected gradient: drop components that push out of the box at an active bound
        g = jnp.where(((a >= 1.0) & (g > 0)) | ((a <= -1.0) & (g < 0)), 0.0, g)
        if normalize:
            g = g / jnp.maximum(jnp.linalg.norm(g, axis=-1, keepdims=True), 1e-12)
        eta = jnp.asarray(step_size, dtype) * jnp.asarray(decay, dtype) ** k.astype(dtype)
        return (jnp.clip(a + eta * g, -1.0, 1.0), best_a, best_q), None

    init = (a, a, jnp.full((a.shape[0],), -jnp.inf, dtype))
    (a, best_a, best_q), _ = jax.lax.scan(body, init, jnp.arange(steps))
    last = jax.vmap(q)(a)
    better = last > best_q
    best_a = jnp.where(better[:, None], a, best_a)
    best_q = jnp.where(better, last, best_q)
    i = jnp.argmax(best_q)
    return best_a[i], best_q[i]


def fqi_targets(q: Callable[[jax.Array, jax.Array], jax.Array], batch, starts: jax.Array, gamma: Any, *,
                steps: int, step_size: Any = 0.5, decay: Any = 0.8) -> Tuple[jax.Array, jax.Array]:
    """Bellman targets with the embedded maximisation, for a batch.

        y_b = r_b + γ d_b max_{a'} q(s'_b, a'),    the max by ``maximize_q`` from starts [B, M, m].

    ``q(obs, a) -> scalar`` is the frozen Q_k. Returns (y [B], maximisers a* [B, m]).
    """
    def one(obs, st):
        return maximize_q(lambda a: q(obs, a), st, steps=steps, step_size=step_size, decay=decay)

    a_star, q_star = jax.vmap(one)(batch["next_obs"], starts)
    return C.one_step_targets(batch["reward"], batch["discount"], gamma, q_star), a_star


# --------------------------------------------------------------------------- agent
@hyperparams.derive
@dataclasses.dataclass(frozen=True)
class FQIConfig(OP.OffPolicyConfig):
    """``OffPolicyConfig`` + fitted-Q schedule + the embedded optimiser + amortisation.

    q_iterations × q_steps: frozen-target fits per iteration and minibatch steps per fit
    (``updates_per_iteration`` is unused). inner_starts, inner_steps: the embedded
    maximisation (random starts; the amortised policy adds one warm start).
    amortized: fit π_φ to the maximisers over the last ``window`` fits (``policy_steps``
    regression steps per fit) and act with it.
    """

    updates_per_iteration: int = 0
    q_iterations: int = 2
    q_steps: int = 25
    inner_starts: int = 4
    inner_steps: int = 8
    amortized: bool = False
    window: int = 8
    policy_steps: int = 25
    critic_lr: float = traced(1e-3)
    policy_lr: float = traced(1e-3)
    gamma: float = traced(0.99)
    explore_noise: float = traced(0.2)
    inner_step_size: float = traced(0.5)
    inner_decay: float = traced(0.8)


HParams = FQIConfig.HPARAMS


class FQILearner(NamedTuple):
    critic: PyTree
    critic_opt: PyTree
    policy: PyTree             # amortised maximiser π_φ (untrained when amortized=False)
    policy_opt: PyTree
    window: replay.ReplayBuffer  # (s', a*) pairs of the last `window` fits


def check_hparams(hp):
    OP.check_hparams(hp, unit=("gamma",), positive=("critic_lr", "policy_lr", "inner_step_size"),
                     nonneg=("explore_noise",))
    OP.check_hparams(hp, unit=("inner_decay",))


def validate(config: FQIConfig, env=None):
    env, episode_length = OP.validate(config, FQIConfig, env)
    for name in ("q_iterations", "q_steps", "inner_starts", "window", "policy_steps"):
        OP.pos_int(getattr(config, name), name)
    OP.pos_int(config.inner_steps, "inner_steps", minimum=0)
    check_hparams(config)
    return env, episode_length


def _networks(config: FQIConfig, obs_size: int, action_size: int):
    """(Q critic bundle, amortised-maximiser MLP bundle, π_φ(params, obs) = tanh(MLP))."""
    critic = C.q_critic(obs_size, action_size, config.critic_hidden)
    net = mlp(obs_size, action_size, config.actor_hidden)

    def pi(params, obs):
        return jnp.tanh(net.apply(params, obs))

    return critic, net, pi


def greedy_policy(config: FQIConfig, obs_size: int, action_size: int):
    """(policy_params, eval_act) of the evaluation policy: argmax_a Q(s, a) by ``maximize_q`` from
    fixed, evenly spread starts (key-free), or π_φ(s) when amortised."""
    critic, _, pi = _networks(config, obs_size, action_size)
    S, T = int(config.inner_starts), int(config.inner_steps)
    fixed_starts = jax.random.uniform(jax.random.PRNGKey(0), (S, action_size), jnp.float32, -1.0, 1.0)
    if action_size == 1:
        fixed_starts = jnp.linspace(-1.0, 1.0, S, dtype=jnp.float32)[:, None]

    if config.amortized:
        def policy_params(learner, hp):
            del hp
            return {"policy": learner.policy}

        def eval_act(params, obs):
            return pi(params["policy"], obs)
    else:
        def policy_params(learner, hp):
            return {"critic": learner.critic, "inner_step_size": hp.inner_step_size, "inner_decay": hp.inner_decay}

        def eval_act(params, obs):
            return maximize_q(lambda a: critic.apply(params["critic"], obs, a), fixed_starts, steps=T,
                              step_size=params["inner_step_size"], decay=params["inner_decay"])[0]

    return policy_params, eval_act


def make_algo(config: FQIConfig, env) -> OP.OffPolicyAlgo:
    critic, net, pi = _networks(config, env.obs_size, env.action_size)
    m = env.action_size
    bs, K, n_q = int(config.batch_size), int(config.q_iterations), int(config.q_steps)
    S, T = int(config.inner_starts), int(config.inner_steps)
    amortized = bool(config.amortized)
    policy_params, eval_act = greedy_policy(config, env.obs_size, env.action_size)

    def random_starts(pp, obs, key):
        starts = jax.random.uniform(key, (obs.shape[0], S, m), jnp.float32, -1.0, 1.0)
        if amortized:  # the amortised maximiser's guess as a warm start
            starts = jnp.concatenate([starts, jax.vmap(lambda o: pi(pp, o))(obs)[:, None]], 1)
        return starts

    def batched_argmax(cp, pp, obs, key, hp):
        starts = random_starts(pp, obs, key)
        return jax.vmap(lambda o, s: maximize_q(lambda a: critic.apply(cp, o, a), s, steps=T,
                                                step_size=hp.inner_step_size, decay=hp.inner_decay))(obs, starts)

    adam = OP.adam()  # built once: each state holds its learning rate (set from hp in init)

    def init(key, hp):
        kc, kp = jax.random.split(key)
        cp, pp = critic.init(kc), net.init(kp)
        win = replay.init(int(config.window) * bs, {"obs": jnp.zeros((env.obs_size,)), "action": jnp.zeros((m,))})
        return FQILearner(cp, OP.adam_init(adam, cp, hp.critic_lr), pp, OP.adam_init(adam, pp, hp.policy_lr), win)

    def explore_init(n):
        return ()

    def act(learner, obs, carry, key, hp):
        k_s, k_n = jax.random.split(key)
        if amortized:
            a = jax.vmap(lambda o: pi(learner.policy, o))(obs)
        else:
            a, _ = batched_argmax(learner.critic, learner.policy, obs, k_s, hp)
        return jnp.clip(a + X.gaussian_noise(k_n, a.shape, hp.explore_noise), -1.0, 1.0), carry

    def explore_reset(carry, mask):
        return carry

    def fit(l: FQILearner, key, buf, hp):
        k_b, k_s, k_p = jax.random.split(key, 3)
        frozen = l.critic   # Q_k
        batches = OP.sample_batches(buf, k_b, n_q, bs)

        def q_step(carry, xs):
            cp, c_opt = carry
            batch, k = xs
            y, a_star = fqi_targets(lambda o, a: critic.apply(frozen, o, a), batch,
                                    random_starts(l.policy, batch["next_obs"], k), hp.gamma, steps=T,
                                    step_size=hp.inner_step_size, decay=hp.inner_decay)
            loss, g = jax.value_and_grad(lambda p: C.q_loss(critic, p, batch["obs"], batch["action"], y))(cp)
            upd, c_opt = adam.update(g, c_opt, cp)
            return (optax.apply_updates(cp, upd), c_opt), (loss, a_star)

        (cp, c_opt), (losses, a_stars) = jax.lax.scan(q_step, (l.critic, l.critic_opt),
                                                      (batches, jax.random.split(k_s, n_q)))
        l = l._replace(critic=cp, critic_opt=c_opt)
        p_loss = jnp.zeros(())
        if amortized:
            win = replay.add(l.window, {"obs": batches["next_obs"][-1], "action": a_stars[-1]})

            def p_step(carry, pairs):
                pp, p_opt = carry
                loss, g = jax.value_and_grad(
                    lambda p: jnp.mean(jnp.sum((jax.vmap(lambda o: pi(p, o))(pairs["obs"]) - pairs["action"]) ** 2,
                                               -1)))(pp)
                upd, p_opt = adam.update(g, p_opt, pp)
                return (optax.apply_updates(pp, upd), p_opt), loss

            (pp, p_opt), p_losses = jax.lax.scan(
                p_step, (l.policy, l.policy_opt), OP.sample_batches(win, k_p, int(config.policy_steps), bs))
            l = l._replace(policy=pp, policy_opt=p_opt, window=win)
            p_loss = jnp.mean(p_losses)
        return l, {"critic_loss": jnp.mean(losses), "policy_loss": p_loss}

    def learn(learner, buf, hp, key):
        learner, met = jax.lax.scan(lambda l, k: fit(l, k, buf, hp), learner, jax.random.split(key, K))
        return learner, jax.tree_util.tree_map(lambda x: x[-1], met)

    return OP.OffPolicyAlgo(init, explore_init, act, explore_reset, learn,
                            "fqi-amortized" if amortized else "fqi", policy_params, eval_act)


def make_agent(config: FQIConfig, *, env=None, policy=None) -> Agent:
    """The fitted-Q-iteration ``Agent`` on ``env`` (default ``config.env``); it has no policy bundle."""
    if policy is not None:
        raise ValueError("policy: fitted Q iteration acts by maximising Q (or its amortised maximiser); "
                         "it takes no policy bundle")
    env, episode_length = validate(config, env)
    return OP.make_agent(config, make_algo(config, env), env, episode_length)


def make_train_fn(config: FQIConfig, *, env=None):
    """A pure ``train_fn(key, hparams) -> (state, metrics, eval_returns)`` (jit / vmap / sweeps)."""
    return OP.make_train_fn(make_agent(config, env=env), config)


def run(config: FQIConfig, key: jax.Array, **kw):
    """(final ``OffPolicyState``, metrics); keywords as ``train``."""
    return OP.run_agent(make_agent, check_hparams, config, key, **kw)


def train(config: FQIConfig, key: jax.Array, **kw):
    """Train fitted Q iteration (amortised with ``config.amortized``): ``(make_policy, params, metrics)``.

    Keywords: ``hparams``, ``env`` and ``driver.run``'s (``progress``, ``progress_fn``,
    ``checkpoint_dir`` / ``checkpoint_every`` / ``resume``, ``run_dir``, ...).
    """
    return OP.train(make_agent, check_hparams, config, key, **kw)


def make_act_for(config: FQIConfig, spec, policy=None):
    """``act(params, obs)`` of a saved run (``mg.load_policy``)."""
    del policy
    return OP.float32_obs(greedy_policy(config, int(spec["obs_size"]), int(spec["action_size"]))[1])


__all__ = ["maximize_q", "fqi_targets", "FQIConfig", "HParams", "FQILearner", "make_algo", "make_agent",
           "make_train_fn", "run", "train", "make_act_for", "greedy_policy", "validate"]
