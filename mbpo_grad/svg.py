"""Stochastic value gradients (Heess et al. 2015) as thin functions over ``mg.pathwise_objective``.

On-policy SVG(n) (docs/theory.md §1): sample ε_0..ε_n ~ N(0, I), ξ_0..ξ_{n−1}, and average

    J_n^α(w) = Σ_{t<n} γ^t [ r(s_t, a_t) − α log π(a_t|s_t) ] + γ^n [ Q(s_n, a_n) − α log π(a_n|s_n) ],
    a_t = π(s_t, ε_t; w),   s_{t+1} = f(s_t, a_t, ξ_t).

SVG(0) is n = 0 (the SAC actor objective with α > 0), SVG(n) a short model
rollout with a critic, SVG(∞) the whole episode without a critic. The entropy
terms differentiate through both the parameters of log π and the
reparameterised action. ``temperature_loss`` learns α (Haarnoja et al. 2018b).

SVG on replayed data (SVG(1)-ER style, docs/theory.md §4): a stored transition
(s, a, r, s') is replayed under the CURRENT policy and model by inferring

    ε = π⁻¹(a; s, w)        (policy.infer_noise),     ξ = f⁻¹(s', r; s, a)   (model.infer_noise),

holding ε, ξ fixed (stop-gradient) and recomputing a = π(s, ε; w), (s', r) = f(s, a, ξ):
the values reproduce the data while gradients flow through π and f. The one-step
objective ρ̄ [ r + γ Q(s', π(s', ε')) ] is importance-weighted with truncated,
stop-gradient weights ρ̄ = min(π_w(a|s) / μ(a|s), c) for data from a behaviour policy μ.

Policies are bundles (``mg.policies``: init / sample / infer_noise / log_prob /
noise_shape); ``observe(state)`` gives what the policy and the critic see
(``model.observe`` for ``ModelState`` rollouts). Critics are ``critic(obs, action) -> scalar``.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad import validation as V
from mbpo_grad.objectives import pathwise_objective, pathwise_returns
from mbpo_grad.policies.base import sample_and_log_prob
from mbpo_grad.replay import TRANSITION_FIELDS, transition_field
from mbpo_grad.rollout import transition_reward

PyTree = Any


def _identity(x):
    return x


def sample_policy_noise(policy, key: jax.Array, horizon: int, batch: int, dtype=None) -> jax.Array:
    """ε_0..ε_n ~ N(0, I) with shape [horizon + 1, batch, *policy.noise_shape]."""
    horizon = V.check_horizon(horizon)
    dtype = dtype or jnp.result_type(float)
    return jax.random.normal(key, (horizon + 1, batch) + tuple(policy.noise_shape), dtype)


def _engine_policy(policy, observe):
    def pi(params, state, eps):
        return policy.sample(params, observe(state), eps)

    return pi


def _uses_entropy(alpha) -> bool:
    """False for None or a concrete 0 (then log π is never called); True otherwise (traced α included)."""
    if alpha is None:
        return False
    if all(V.is_concrete(leaf) for leaf in jax.tree_util.tree_leaves(alpha)):
        return bool(np.any(np.asarray(alpha) != 0))
    return True


def soft_rollout(policy, step, reward, bootstrap, alpha, observe=_identity, *, bonus_on_bootstrap=True):
    """The engine's ``(policy, step, reward, bootstrap)`` for the entropy-regularised J^α.

    With no entropy term (``alpha`` None or a concrete 0) these are the plain parts and
    ``log π`` is never evaluated (deterministic policies have none). Otherwise the engine's
    "action" is the pair ``(a, log π(a|s))`` from ``sample_and_log_prob`` — the density
    computed forward from ε, exact even where float32 ``tanh`` has rounded ``a`` to ±1 —
    and the wrappers read it: ``step(s, a, ξ)``, ``reward(s, a) − α log π(a|s)`` and, with
    ``bonus_on_bootstrap``, ``bootstrap(s_n, a_n) − α log π(a_n|s_n)`` (a soft Q; leave it
    off for a soft state value V(s_n), which already holds the entropy of its future).
    ``bootstrap(state, action)`` or None; ``alpha`` may be a traced array.
    """
    if not _uses_entropy(alpha):
        return _engine_policy(policy, observe), step, reward, bootstrap

    def pi(params, state, eps):
        return sample_and_log_prob(policy, params, observe(state), eps)

    def soft_step(state, action_and_lp, xi):
        return step(state, action_and_lp[0], xi)

    if getattr(reward, "uses_next_state", False):
        soft_reward = transition_reward(
            lambda s, al, s_next: reward(s, al[0], s_next) - alpha * al[1])
    else:
        def soft_reward(s, al):
            return reward(s, al[0]) - alpha * al[1]

    soft_bootstrap = None
    if bootstrap is not None:
        def soft_bootstrap(state, al):
            value = bootstrap(state, al[0])
            return value - alpha * al[1] if bonus_on_bootstrap else value

    return pi, soft_step, soft_reward, soft_bootstrap


def _critic_bootstrap(critic, observe):
    return None if critic is None else (lambda state, action: critic(observe(state), action))


def svg_objective(
    policy,
    params: PyTree,
    model_step: Callable,
    reward: Callable,
    states: PyTree,
    *,
    horizon: int,
    gamma: Any = 1.0,
    critic: Optional[Callable] = None,
    key: Optional[jax.Array] = None,
    alpha: Any = None,
    observe: Callable = _identity,
    sample_dynamics_noise: Optional[Callable] = None,
    policy_noise: Optional[jax.Array] = None,
    dynamics_noise: Optional[PyTree] = None,
    done: Optional[Callable] = None,
    remat: Any = False,
) -> jax.Array:
    """Monte-Carlo SVG(n) objective J_n^α (batch mean); ``jax.grad`` w.r.t. ``params`` is the estimator.

    Args:
      policy: a policy bundle (``sample(params, obs, eps)``, ``log_prob``, ``noise_shape``).
      params: policy parameters.
      model_step: ``step(state, action, xi) -> next_state`` (simulator, or ``model.as_step(mparams)``).
      reward: ``reward(state, action)`` or a ``mg.transition_reward`` (``model.as_reward()``).
      states: start states, leading batch axis B.
      horizon: n (static). 0 needs a critic (SVG(0)); the episode length without a critic is SVG(∞).
      gamma: discount (may be traced).
      critic: ``critic(obs, action) -> scalar`` for the tail γ^n Q(s_n, a_n), or None.
      key: PRNG key for the noise not given explicitly.
      alpha: entropy temperature α (None: no entropy term; may be a traced array).
      observe: ``observe(state) -> obs`` for policy, critic and log π (``model.observe`` for models).
      sample_dynamics_noise: ``fn(key, (horizon, B)) -> ξ`` (e.g. ``model.sample_noise``); None with no
        ``dynamics_noise`` runs the step deterministically (ξ = None).
      policy_noise / dynamics_noise: explicit noise [n+1, B, ...] / [n, B, ...] (common random numbers).
      done, remat: as in ``mg.pathwise_objective``.
    """
    batch = V.check_states(states, "states")
    horizon = V.check_horizon(horizon)
    need_eps = policy_noise is None and tuple(policy.noise_shape) != (0,)
    need_xi = dynamics_noise is None and sample_dynamics_noise is not None and horizon > 0
    if (need_eps or need_xi) and key is None:
        raise ValueError("key: a PRNG key is needed to sample the policy / dynamics noise not passed explicitly")
    if need_eps or need_xi:
        k_eps, k_xi = jax.random.split(key)
    if policy_noise is None and need_eps:
        policy_noise = sample_policy_noise(policy, k_eps, horizon, batch)
    if need_xi:
        dynamics_noise = sample_dynamics_noise(k_xi, (horizon, batch))
    pi, step, soft_reward, bootstrap = soft_rollout(policy, model_step, reward, _critic_bootstrap(critic, observe),
                                                    alpha, observe)
    return pathwise_objective(
        pi, params, step, soft_reward, states, horizon=horizon, gamma=gamma,
        bootstrap=bootstrap, policy_noise=policy_noise, dynamics_noise=dynamics_noise, done=done, remat=remat,
    )


def svg0(policy, params, critic, states, *, key=None, alpha=None, observe=_identity, policy_noise=None):
    """SVG(0): mean_b [ Q(s_b, π(s_b, ε_b)) − α log π(π(s_b, ε_b)|s_b) ] (the SAC actor objective, negated)."""

    def no_step(s, a, xi):  # never called at horizon 0
        return s

    def no_reward(s, a):
        return jnp.zeros(())

    return svg_objective(policy, params, no_step, no_reward, states, horizon=0, critic=critic, key=key,
                         alpha=alpha, observe=observe, policy_noise=policy_noise)


def svg_inf(policy, params, model_step, reward, states, *, episode_length, **kw):
    """SVG(∞): the whole episode through the model or simulator, no critic."""
    if kw.get("critic") is not None:
        raise ValueError("critic: SVG(∞) has no critic; use svg_objective with a horizon for SVG(n)")
    return svg_objective(policy, params, model_step, reward, states, horizon=episode_length, **kw)


def temperature_loss(log_alpha: jax.Array, log_probs: jax.Array, target_entropy: Any) -> jax.Array:
    """Loss for a learned entropy temperature α = exp(log α), parametrised in log α (SAC v2 style):

        L(log α) = −log α · mean[ sg(log π(a|s)) + H̄ ],   ∂L/∂log α = −mean[ log π + H̄ ] = Ĥ(π) − H̄

    Haarnoja et al. (2018b, eq. 18) write the objective linearly in α, −α (log π + H̄), whose
    log-α gradient α (Ĥ − H̄) vanishes as α → 0; this form has the same sign and the same
    fixed point (entropy = H̄) with a step that does not shrink with α. Descent raises α when
    the entropy −E[log π] is below the target H̄ and lowers it above. ``log_probs`` (any shape)
    are constants (stop-gradient). Typical H̄ = −act_dim. The one temperature loss of the
    library (``mbpo_grad.agents.sac`` uses this function).
    """
    if jnp.ndim(log_alpha) != 0:
        raise ValueError(f"log_alpha must be a scalar (shape ()), got shape {jnp.shape(log_alpha)}")
    if jnp.ndim(target_entropy) != 0:
        raise ValueError(f"target_entropy must be a scalar (shape ()), got shape {jnp.shape(target_entropy)}")
    log_probs = jax.lax.stop_gradient(jnp.asarray(log_probs))
    return -log_alpha * jnp.mean(log_probs + target_entropy)


# ------------------------------------------------------------------------- SVG on replayed data

def importance_weights(log_prob: jax.Array, behaviour_log_prob: jax.Array, cap: Any) -> jax.Array:
    """Truncated importance weights ρ̄ = min(exp(log π − log μ), c), stop-gradient (constants for the gradient).

    ``behaviour_log_prob`` must have the shape of ``log_prob`` (one value per sample, e.g. [B]);
    a [B, 1] against a [B] would broadcast to [B, B] weights, so a mismatch raises ``ValueError``.
    ``cap`` is a scalar or an array that broadcasts to that shape without changing it.
    """
    V.check_same_shape(behaviour_log_prob, "behaviour_log_prob", log_prob, "log_prob")
    shape = tuple(jnp.shape(log_prob))
    try:
        joint = tuple(jnp.broadcast_shapes(shape, jnp.shape(cap)))
    except ValueError:
        joint = None
    if joint != shape:
        raise ValueError(f"cap must be a scalar or broadcast to the shape of log_prob {shape}, "
                         f"got shape {tuple(jnp.shape(cap))}")
    ratio = jnp.exp(jnp.asarray(log_prob) - jnp.asarray(behaviour_log_prob))
    return jax.lax.stop_gradient(jnp.minimum(ratio, cap))


def _field(batch, name):
    return transition_field(batch, name, "batch")


def replay_noise(policy, params, model, model_params, batch, *, member):
    """Noise that reproduces stored transitions under the current policy and model (stop-gradient).

    Returns ``(eps [B, *noise_shape], xi)`` with ε_b = π⁻¹(a_b; s_b) and ξ_b = f⁻¹(s'_b, r_b; s_b, a_b)
    for elite slot ``member[b]`` (array [B]).
    """
    s, a, r, s_next = (_field(batch, n) for n in TRANSITION_FIELDS)
    eps = jax.vmap(policy.infer_noise, in_axes=(None, 0, 0))(params, s, a)
    xi = jax.vmap(model.infer_noise, in_axes=(None, 0, 0, 0, 0, 0))(model_params, s, a, s_next, r, member)
    return jax.lax.stop_gradient(eps), jax.lax.stop_gradient(xi)


def replay_log_ratio(policy, params, obs, eps_hat, *, behaviour_log_prob=None, behaviour_params=None,
                     behaviour_noise=None):
    """log ρ_b = log π_w(a_b|s_b) − log μ(a_b|s_b) [B] for replayed actions (no gradient: weights only).

    Two routes, chosen by what the buffer kept about the behaviour policy μ:

    * ``behaviour_log_prob`` [B] (log μ of the stored action a_b): the numerator is the current
      policy's density of the replayed action â_b = π(s_b, ε̂_b; w), computed FORWARD from the
      inferred noise ε̂_b = π⁻¹(a_b; s_b, w) (``sample_and_log_prob``) — the same evaluation as the
      entropy term of the replayed return, and the action the return is computed at. Where float32
      tanh has rounded a_b to ±1 the stored action has lost its pre-squash value, so ε̂_b (and
      any density "of a_b") describes the clipped action ±(1 − 1e-6) (``mbpo_grad.policies._squash``);
      the forward form then equals the inverse ``log_prob(a_b)`` and no route from a_b alone
      recovers the density of the sample μ actually drew. ``behaviour_log_prob`` must therefore
      be evaluated at the stored action too (e.g. ``log_prob(w_μ, s_b, a_b)``): a density recorded
      forward from μ's own noise is that of a different point wherever a_b saturated, and the
      ratio is then wrong by orders of magnitude (see the tests).
    * ``behaviour_params`` w_μ and ``behaviour_noise`` ε_b [B, *noise_shape] (μ is the same policy
      family at w_μ and drew a_b = π(s_b, ε_b; w_μ)): the ratio at μ's actual sample,
      ``policy.log_ratio(w_μ, w, s_b, ε_b)`` — before the squash, whose Jacobian cancels, so exact
      where a_b saturated. A bundle without ``log_ratio`` falls back to ``log_prob(w, s_b, a_b) −
      log_prob(w_μ, s_b, a_b)`` at a_b = π(s_b, ε_b; w_μ), one path on both sides (so ρ = 1 at
      w = w_μ exactly; at a saturated a_b it is the ratio at the clipped action).
    """
    obs = jnp.asarray(obs)
    eps_hat = jnp.asarray(eps_hat)
    if behaviour_params is not None or behaviour_noise is not None:
        if behaviour_log_prob is not None:
            raise ValueError("behaviour_log_prob: pass either behaviour_log_prob or behaviour_params with "
                             "behaviour_noise, not both")
        if behaviour_params is None or behaviour_noise is None:
            raise ValueError("behaviour_params / behaviour_noise: the exact route needs both (the behaviour "
                             "policy's parameters and the noise it drew each stored action with)")
        noise = jnp.asarray(behaviour_noise)
        if noise.shape != eps_hat.shape:
            raise ValueError(f"behaviour_noise must have shape [B, *noise_shape] = {eps_hat.shape} "
                             f"(batch['obs'] {obs.shape}), got {noise.shape}")
        bp = jax.lax.stop_gradient(behaviour_params)
        if getattr(policy, "log_ratio", None) is not None:
            log_r = jax.vmap(policy.log_ratio, in_axes=(None, None, 0, 0))(bp, params, obs, noise)
        else:
            a = jax.vmap(policy.sample, in_axes=(None, 0, 0))(bp, obs, noise)
            log_r = (jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(params, obs, a)
                     - jax.vmap(policy.log_prob, in_axes=(None, 0, 0))(bp, obs, a))
        return jax.lax.stop_gradient(log_r)
    if behaviour_log_prob is None:
        raise ValueError("behaviour_log_prob: needed (or behaviour_params with behaviour_noise)")
    _, lp = jax.vmap(lambda o, e: sample_and_log_prob(policy, params, o, e))(obs, eps_hat)
    V.check_same_shape(behaviour_log_prob, "behaviour_log_prob", lp, "log_prob")
    return jax.lax.stop_gradient(lp - jnp.asarray(behaviour_log_prob))


def svg_replay_returns(
    policy, params, model, model_params, batch, *, critic=None, gamma: Any = 1.0, key=None,
    behaviour_log_prob=None, cap: Any = 5.0, alpha: Any = None, member=None, next_policy_noise=None,
    behaviour_params=None, behaviour_noise=None,
):
    """Per-transition replayed one-step returns and their weights: ``(J [B], weights [B])``.

    J_b = r̂_b − α log π(â_b|s_b) + γ [Q(ŝ'_b, π(ŝ'_b, ε'_b)) − α log π(·|ŝ'_b)] on the replayed
    (â_b, ŝ'_b, r̂_b), which equal the stored (a_b, s'_b, r_b) in value; both log π forward from
    the noise (inferred ε̂_b at s_b, drawn ε'_b at ŝ'_b). Weights: ``replay_log_ratio``, truncated
    at ``cap``. See ``svg_replay_objective``.
    """
    s = jnp.asarray(_field(batch, "obs"))
    for name in TRANSITION_FIELDS[1:]:
        _field(batch, name)
    V.check_states(s, "batch['obs']")
    B = s.shape[0]
    k_member, k_next = (None, None) if key is None else jax.random.split(key)
    if member is None:
        if key is None:
            raise ValueError("key: needed to draw the model member for each transition (or pass member)")
        member = model.sample_noise(k_member, (B,))["member"]
    member = jnp.broadcast_to(jnp.asarray(member, jnp.result_type(float)), (B,))
    eps, xi = replay_noise(policy, params, model, model_params, batch, member=member)
    if next_policy_noise is None:
        if tuple(policy.noise_shape) == (0,):
            next_policy_noise = jnp.zeros_like(eps)
        elif key is None:
            raise ValueError("key: needed to sample the policy noise at s' (or pass next_policy_noise)")
        else:
            next_policy_noise = jax.random.normal(k_next, eps.shape, eps.dtype)
    noise = jnp.stack([eps, jnp.asarray(next_policy_noise, eps.dtype)])
    xi = jax.tree_util.tree_map(lambda x: x[None], xi)
    pi, step, soft_reward, bootstrap = soft_rollout(
        policy, model.as_step(model_params), model.as_reward(model_params),
        _critic_bootstrap(critic, model.observe), alpha, model.observe,
    )
    returns, _ = pathwise_returns(
        pi, params, step, soft_reward,
        model.initial_state(s), horizon=1, gamma=gamma, bootstrap=bootstrap,
        policy_noise=noise, dynamics_noise=xi,
    )
    if behaviour_log_prob is None and behaviour_params is None and behaviour_noise is None:
        weights = jnp.ones((B,), returns.dtype)
    else:
        log_r = replay_log_ratio(policy, params, s, eps, behaviour_log_prob=behaviour_log_prob,
                                 behaviour_params=behaviour_params, behaviour_noise=behaviour_noise)
        weights = importance_weights(log_r, jnp.zeros_like(log_r), cap)
    return returns, weights


def svg_replay_objective(
    policy, params, model, model_params, batch, *, critic=None, gamma: Any = 1.0, key=None,
    behaviour_log_prob=None, cap: Any = 5.0, alpha: Any = None, member=None, next_policy_noise=None,
    behaviour_params=None, behaviour_noise=None,
) -> jax.Array:
    """SVG(1)-ER objective on replayed transitions: mean_b ρ̄_b J_b; ``jax.grad`` w.r.t. ``params``.

    Args:
      policy: a policy bundle with ``infer_noise`` and ``log_prob``.
      params: the CURRENT policy parameters (the noise is inferred under them).
      model, model_params: a model bundle (``mg.models.gaussian_ensemble``) and its parameters.
      batch: stored transitions (``replay.TRANSITION_FIELDS``), mapping/NamedTuple with obs [B, obs],
        action [B, act], reward [B], next_obs [B, obs].
      critic: ``critic(obs, action)`` evaluated at (ŝ', π(ŝ', ε')), or None (immediate reward only).
      gamma: discount.
      key: PRNG key for ε' at s' and (if ``member`` is None) the model member per transition.
      behaviour_log_prob: log μ(a_b|s_b) [B] of the stored actions under the policy that collected
        the data (evaluated at the stored action; see ``replay_log_ratio``); None: weights 1.
      behaviour_params, behaviour_noise: instead of ``behaviour_log_prob``, the behaviour policy's
        parameters (same family) and the noise ε_b [B, *noise_shape] it drew a_b with: the
        weights are then exact where float32 tanh rounded a_b to ±1 (``replay_log_ratio``).
      cap: truncation c of the importance weights (may be an array).
      alpha: entropy temperature (None: no entropy terms).
      member: elite slot per transition [B] (or scalar) used to infer ξ; None draws it uniformly.
      next_policy_noise: explicit ε' [B, *noise_shape] (common random numbers), else drawn from ``key``.
    """
    returns, weights = svg_replay_returns(
        policy, params, model, model_params, batch, critic=critic, gamma=gamma, key=key,
        behaviour_log_prob=behaviour_log_prob, cap=cap, alpha=alpha, member=member,
        next_policy_noise=next_policy_noise, behaviour_params=behaviour_params, behaviour_noise=behaviour_noise,
    )
    return jnp.mean(weights * returns)
