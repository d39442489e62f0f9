"""Probabilistic ensemble of Gaussian MLP dynamics models (the PETS / MBPO recipe).

Each of E members is an MLP that maps a normalised input x = (s, a) to the mean
and log-variance of a diagonal Gaussian over the normalised target
y = (Δs, r) = (s' − s, r), D = obs_dim + 1 outputs:

    ŷ ~ N(μ_e(x), diag(exp(ℓ_e(x))))                     (normalised units)
    ℓ ← ℓ_max − softplus(ℓ_max − ℓ)                      soft upper bound
    ℓ ← ℓ_min + softplus(ℓ − ℓ_min)                      soft lower bound

with per-member, per-output learnable bounds ℓ_max, ℓ_min (Chua et al. 2018,
"Deep RL in a handful of trials", appendix A.1; Janner et al. 2019, MBPO).
Training minimises, per member and minibatch, the Gaussian negative
log-likelihood (up to constants) plus a small penalty keeping the bounds tight:

    L_e = mean_{batch, dims} [ (μ_e − ŷ)² e^{−ℓ_e} + ℓ_e ]  +  c · (Σ ℓ_max,e − Σ ℓ_min,e)

Inputs and targets are standardised with statistics of the training split. A
random holdout split measures each member's mean-squared error (in raw target
units); the ``elites`` best members (sorted, best first) are kept for sampling.

Reparameterised sampling for ONE (s, a), with noise ξ = {"member", "eps"}:

    e      = elites[j],   j = floor(member) ∈ {0..k−1}  (an elite slot, stored as a float:
                          the engine's noise leaves must be floating point)
    y      = m_y + σ_y ⊙ (μ_e + exp(ℓ_e / 2) ⊙ eps),     eps ~ N(0, I_D)
    s'     = s + y[:obs_dim],   r = y[obs_dim]

so for a fixed member the map eps ↦ (s', r) is affine with diagonal Jacobian
σ_y ⊙ exp(ℓ_e / 2), and ``infer_noise`` inverts it exactly (docs/theory.md §4):

    eps = (((s' − s, r) − m_y) / σ_y − μ_e) / exp(ℓ_e / 2).

``sample_noise(key, shape)`` draws the member slot uniformly (the PETS "TS-1"
propagation: a fresh member at every step; reuse one slot along a trajectory
for "TS-∞"). ``eps=None`` style deterministic rollouts: ``xi=None`` gives the
mean over elites of the member means.

The model plugs into the engine (``mg.pathwise_objective``) as a ``step`` over a
``ModelState(obs, reward)`` pytree: the model predicts the reward jointly with
the next observation, so ``step`` stores it in the state and ``as_reward()`` reads
it back with ``mg.transition_reward`` — one network evaluation per step, and the
reward shares the step's noise ξ (which a separate ``reward(s, a)`` could not).
Policies and critics see ``observe(state) = state.obs``.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import flax.linen as fnn
import jax
import jax.numpy as jnp
import optax
from jax import lax

from mbpo_grad.nn import mlp
from mbpo_grad.rollout import transition_reward
from mbpo_grad.replay import transition_field
from mbpo_grad.validation import check_int

PyTree = Any
_LOG_2PI = math.log(2.0 * math.pi)


class Standardizer(NamedTuple):
    """Fixed per-feature affine standardisation z = (x − mean) / std (a pytree)."""

    mean: jax.Array
    std: jax.Array


def _standardizer(x: jax.Array, min_std: float = 1e-6) -> Standardizer:
    """Statistics over the leading axis; features with std < ``min_std`` get std 1 (constant features)."""
    mean = jnp.mean(x, axis=0)
    std = jnp.std(x, axis=0)
    return Standardizer(mean, jnp.where(std < min_std, jnp.ones_like(std), std))


class ModelParams(NamedTuple):
    """Everything ``sample`` needs; leaves of ``net``, ``max_logvar``, ``min_logvar`` carry a leading E axis.

    net:         the E members' MLP parameters (vmapped Linen params).
    max_logvar:  [E, D] learnable soft upper bound on the normalised log-variance.
    min_logvar:  [E, D] learnable soft lower bound.
    inputs:      ``Standardizer`` of x = (s, a), [obs_dim + act_dim].
    targets:     ``Standardizer`` of y = (Δs, r), [D].
    elites:      int32 [k] member indices, best (lowest holdout MSE) first.
    """

    net: PyTree
    max_logvar: jax.Array
    min_logvar: jax.Array
    inputs: Standardizer
    targets: Standardizer
    elites: jax.Array


class ModelState(NamedTuple):
    """The engine state when a model is the ``step``: observation and the reward of the step into it."""

    obs: jax.Array
    reward: jax.Array


class GaussianEnsemble(NamedTuple):
    """The model bundle (pure functions, per (s, a); batch with ``jax.vmap``). See module docstring."""

    init: Callable
    fit: Callable
    predict: Callable
    sample: Callable
    infer_noise: Callable
    log_prob: Callable
    member_log_probs: Callable
    sample_noise: Callable
    as_step: Callable
    as_reward: Callable
    initial_state: Callable
    observe: Callable
    noise_shape: Mapping[str, tuple]
    obs_dim: int
    act_dim: int
    ensemble_size: int
    num_elites: int
    name: str = "gaussian_ensemble"


def _get(data, name):
    return transition_field(data, name, "data")


def _check_pos_int(value, name):
    return check_int(value, name)


def gaussian_ensemble(
    obs_dim: int,
    act_dim: int,
    ensemble_size: int = 5,
    elites: int = 3,
    hidden: Sequence[int] = (200, 200, 200),
    activation: Callable = fnn.swish,
    *,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-5,
    batch_size: int = 256,
    epochs: int = 50,
    holdout_fraction: float = 0.2,
    max_holdout: int = 5000,
    bound_penalty: float = 0.01,
    init_max_logvar: float = 0.5,
    init_min_logvar: float = -10.0,
    keep_best: bool = True,
) -> GaussianEnsemble:
    """A probabilistic ensemble of ``ensemble_size`` Gaussian MLPs over (Δs, r), ``elites`` used for sampling.

    Args:
      obs_dim, act_dim: sizes of one observation and one action vector.
      ensemble_size: E members, trained in parallel (vmapped) on independently shuffled minibatches.
      elites: k <= E members kept for sampling, chosen by holdout MSE.
      hidden, activation: the member MLP (``mg.nn.mlp``); MBPO uses swish.
      learning_rate, weight_decay: Adam(W) on the networks (decay on kernels only).
      batch_size, epochs: minibatch size and default number of passes in ``fit``.
      holdout_fraction, max_holdout: size of the random validation split.
      bound_penalty: c in the bound penalty c · (Σ ℓ_max − Σ ℓ_min).
      init_max_logvar, init_min_logvar: initial bounds (normalised units).
      keep_best: ``fit`` returns, per member, the parameters of its epoch with the lowest holdout MSE
        (the snapshot form of MBPO's early stopping) instead of the last epoch's.
    """
    obs_dim = _check_pos_int(obs_dim, "obs_dim")
    act_dim = _check_pos_int(act_dim, "act_dim")
    E = _check_pos_int(ensemble_size, "ensemble_size")
    k = _check_pos_int(elites, "elites")
    if k > E:
        raise ValueError(f"elites must be <= ensemble_size ({E}), got {k}")
    batch_size = _check_pos_int(batch_size, "batch_size")
    default_epochs = _check_pos_int(epochs, "epochs")
    max_holdout = _check_pos_int(max_holdout, "max_holdout")
    if not 0.0 < float(holdout_fraction) < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {holdout_fraction}")
    if init_min_logvar >= init_max_logvar:
        raise ValueError(f"init_min_logvar ({init_min_logvar}) must be < init_max_logvar ({init_max_logvar})")

    D = obs_dim + 1
    in_dim = obs_dim + act_dim
    net = mlp(in_dim, 2 * D, hidden, activation=activation)

    def init(key):
        nets = jax.vmap(net.init)(jax.random.split(key, E))
        return ModelParams(
            net=nets,
            max_logvar=jnp.full((E, D), init_max_logvar, jnp.float32),
            min_logvar=jnp.full((E, D), init_min_logvar, jnp.float32),
            inputs=Standardizer(jnp.zeros((in_dim,)), jnp.ones((in_dim,))),
            targets=Standardizer(jnp.zeros((D,)), jnp.ones((D,))),
            elites=jnp.arange(k, dtype=jnp.int32),
        )

    # ---------------------------------------------------------------- heads
    def _member_heads(net_p, max_lv, min_lv, xn):
        """One member, one normalised input -> (μ, ℓ) in normalised target units, [D] each."""
        out = net.apply(net_p, xn)
        mu, lv = out[:D], out[D:]
        lv = max_lv - jax.nn.softplus(max_lv - lv)
        lv = min_lv + jax.nn.softplus(lv - min_lv)
        return mu, lv

    def _all_heads(params, s, a):
        """All E members for one (s, a): normalised (μ, ℓ), each [E, D]."""
        x = jnp.concatenate([jnp.asarray(s), jnp.asarray(a)], axis=-1)
        xn = (x - params.inputs.mean) / params.inputs.std
        return jax.vmap(_member_heads, in_axes=(0, 0, 0, None))(params.net, params.max_logvar, params.min_logvar, xn)

    def predict(params, s, a):
        """Raw-unit mean and log-variance of (Δs, r) for all E members: two [E, D] arrays."""
        mu, lv = _all_heads(params, s, a)
        t = params.targets
        return t.mean + t.std * mu, lv + 2.0 * jnp.log(t.std)

    def _member(params, xi_member):
        slot = jnp.clip(jnp.floor(xi_member).astype(jnp.int32), 0, k - 1)
        return params.elites[slot]

    def sample(params, s, a, xi):
        """(s', r) = (s, 0) + m_y + σ_y ⊙ (μ_e + exp(ℓ_e/2) ⊙ eps); ``xi=None``: mean over elites of μ_e."""
        mu, lv = _all_heads(params, s, a)
        t = params.targets
        if xi is None:
            yn = jnp.mean(mu[params.elites], axis=0)
        else:
            e = _member(params, xi["member"])
            yn = mu[e] + jnp.exp(0.5 * lv[e]) * xi["eps"]
        y = t.mean + t.std * yn
        return s + y[:obs_dim], y[obs_dim]

    def infer_noise(params, s, a, s_next, r, member=0):
        """The ξ with ``sample(params, s, a, ξ) == (s_next, r)`` for elite slot ``member`` (0 = best elite)."""
        mu, lv = _all_heads(params, s, a)
        t = params.targets
        member = jnp.asarray(member, dtype=jnp.result_type(float))
        e = _member(params, member)
        y = jnp.concatenate([s_next - s, jnp.reshape(r, (1,))], axis=-1)
        yn = (y - t.mean) / t.std
        eps = (yn - mu[e]) * jnp.exp(-0.5 * lv[e])
        return {"member": member, "eps": eps}

    def member_log_probs(params, s, a, s_next, r):
        """log N((s'−s, r); mean_e, var_e) in raw units for each elite slot: [k]."""
        mean, logvar = predict(params, s, a)
        y = jnp.concatenate([s_next - s, jnp.reshape(r, (1,))], axis=-1)
        mean, logvar = mean[params.elites], logvar[params.elites]
        return -0.5 * jnp.sum((y - mean) ** 2 * jnp.exp(-logvar) + logvar + _LOG_2PI, axis=-1)

    def log_prob(params, s, a, s_next, r, member=None):
        """log p(s', r | s, a): of elite slot ``member``, or (None) of the uniform mixture over the elites.

        The mixture is the density that ``sample`` with ``sample_noise`` draws from (slot uniform).
        The density is over (s', r) in raw units (the shift by s has unit Jacobian).
        """
        lps = member_log_probs(params, s, a, s_next, r)
        if member is None:
            return jax.nn.logsumexp(lps) - jnp.log(k)
        slot = jnp.clip(jnp.floor(jnp.asarray(member)).astype(jnp.int32), 0, k - 1)
        return lps[slot]

    def sample_noise(key, shape=()):
        """ξ with leading axes ``shape``: {"member": uniform elite slot (float) shape, "eps": N(0, I) shape + (D,)}."""
        shape = tuple(shape)
        k1, k2 = jax.random.split(key)
        member = jax.random.randint(k1, shape, 0, k).astype(jnp.result_type(float))
        return {"member": member, "eps": jax.random.normal(k2, shape + (D,))}

    # ---------------------------------------------------------------- engine adapters
    def as_step(params):
        """``step(state: ModelState, action, xi) -> ModelState`` for ``mg.pathwise_objective``."""

        def step(state, action, xi):
            s_next, r = sample(params, state.obs, action, xi)
            return ModelState(s_next, r)

        return step

    def as_reward(params=None):
        """The engine reward for ``as_step``: ``transition_reward`` reading ``next_state.reward``."""
        del params
        return transition_reward(lambda state, action, next_state: next_state.reward)

    def initial_state(obs):
        """``ModelState(obs, 0)``; works per observation or on a batch [B, obs_dim]."""
        obs = jnp.asarray(obs)
        return ModelState(obs, jnp.zeros(obs.shape[:-1], obs.dtype))

    def observe(state):
        return state.obs

    # ---------------------------------------------------------------- training
    def _kernel_mask(tree):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: any(getattr(p, "key", None) == "kernel" for p in path), tree
        )

    optimiser = optax.adamw(learning_rate, weight_decay=weight_decay, mask=_kernel_mask)

    def _batch_loss(trainable, inputs_std, targets_std, xb, yb):
        """Summed over members; xb [E, b, in], yb [E, b, D] raw. Returns (loss, mean per-dim NLL)."""
        net_p, max_lv, min_lv = trainable

        def one(np_, mx, mn, x, y):
            xn = (x - inputs_std.mean) / inputs_std.std
            yn = (y - targets_std.mean) / targets_std.std
            mu, lv = jax.vmap(_member_heads, in_axes=(None, None, None, 0))(np_, mx, mn, xn)
            sq = (mu - yn) ** 2 * jnp.exp(-lv)
            loss = jnp.mean(sq + lv) + bound_penalty * (jnp.sum(mx) - jnp.sum(mn))
            nll = 0.5 * jnp.mean(sq + lv + _LOG_2PI)
            return loss, nll

        losses, nlls = jax.vmap(one)(net_p, max_lv, min_lv, xb, yb)
        return jnp.sum(losses), jnp.mean(nlls)

    def _holdout_mse(trainable, inputs_std, targets_std, x, y):
        """Per-member MSE of the mean in raw target units, averaged over samples and dims: [E]."""
        net_p, max_lv, min_lv = trainable
        xn = (x - inputs_std.mean) / inputs_std.std

        def one(np_, mx, mn):
            mu, _ = jax.vmap(_member_heads, in_axes=(None, None, None, 0))(np_, mx, mn, xn)
            pred = targets_std.mean + targets_std.std * mu
            return jnp.mean((pred - y) ** 2)

        return jax.vmap(one)(net_p, max_lv, min_lv)

    def _fit_impl(params, x, y, key, epochs):
        n = x.shape[0]
        n_hold = min(max(1, int(round(n * float(holdout_fraction)))), max_holdout, n - 1)
        n_train = n - n_hold
        bs = min(batch_size, n_train)
        n_batches = n_train // bs

        k_split, k_epochs = jax.random.split(key)
        perm = jax.random.permutation(k_split, n)
        hold_idx, train_idx = perm[:n_hold], perm[n_hold:]
        x_tr, y_tr, x_ho, y_ho = x[train_idx], y[train_idx], x[hold_idx], y[hold_idx]
        in_std, out_std = _standardizer(x_tr), _standardizer(y_tr)

        trainable = (params.net, params.max_logvar, params.min_logvar)
        opt_state = optimiser.init(trainable)
        best_mse = _holdout_mse(trainable, in_std, out_std, x_ho, y_ho)

        def minibatch(carry, idx):
            tr, opt = carry
            (_, nll), grads = jax.value_and_grad(_batch_loss, has_aux=True)(tr, in_std, out_std, x_tr[idx], y_tr[idx])
            updates, opt = optimiser.update(grads, opt, tr)
            return (optax.apply_updates(tr, updates), opt), nll

        def epoch(carry, ek):
            tr, opt, best, best_mse = carry
            perms = jax.vmap(lambda kk: jax.random.permutation(kk, n_train))(jax.random.split(ek, E))
            batches = perms[:, : n_batches * bs].reshape(E, n_batches, bs).transpose(1, 0, 2)
            (tr, opt), nlls = lax.scan(minibatch, (tr, opt), batches)
            mse = _holdout_mse(tr, in_std, out_std, x_ho, y_ho)
            if keep_best:
                better = mse < best_mse

                def pick(b, t):
                    return jnp.where(better.reshape((E,) + (1,) * (t.ndim - 1)), t, b)

                best = jax.tree_util.tree_map(pick, best, tr)
                best_mse = jnp.where(better, mse, best_mse)
            else:
                best, best_mse = tr, mse
            return (tr, opt, best, best_mse), (jnp.mean(nlls), mse)

        init_carry = (trainable, opt_state, trainable, best_mse)
        (_, _, best, best_mse), (train_nll, mse_hist) = lax.scan(
            epoch, init_carry, jax.random.split(k_epochs, epochs)
        )
        order = jnp.argsort(best_mse)
        new_params = ModelParams(best[0], best[1], best[2], in_std, out_std, order[:k].astype(jnp.int32))
        metrics = {
            "train_nll": train_nll,
            "holdout_mse_history": mse_hist,
            "holdout_mse": best_mse,
            "holdout_idx": hold_idx,
            "elites": new_params.elites,
        }
        return new_params, metrics

    _fit_jit = jax.jit(_fit_impl, static_argnames=("epochs",))

    def fit(params, data, key, *, epochs=None):
        """Train on transitions ``data`` (mapping or NamedTuple with obs, action, reward, next_obs —
        ``replay.TRANSITION_FIELDS``, as the replay buffer stores them; leading axis N).

        Returns ``(params, metrics)``: new parameters with the standardisers of the training split and
        the elites (best first); metrics ``train_nll`` [epochs] (per-dimension Gaussian NLL in
        normalised units, mean over members and minibatches), ``holdout_mse_history`` [epochs, E],
        ``holdout_mse`` [E] (of the returned parameters, raw units), ``holdout_idx`` (the validation rows),
        ``elites`` [k]. One jit-compiled program per data size and ``epochs`` (fixed-size data avoids recompiles).
        """
        epochs = default_epochs if epochs is None else _check_pos_int(epochs, "epochs")
        s = jnp.asarray(_get(data, "obs"))
        a = jnp.asarray(_get(data, "action"))
        r = jnp.asarray(_get(data, "reward"))
        s_next = jnp.asarray(_get(data, "next_obs"))
        if s.ndim != 2 or s.shape[1] != obs_dim:
            raise ValueError(f"data['obs'] must have shape [N, {obs_dim}], got {s.shape}")
        n = s.shape[0]
        if n < 2:
            raise ValueError(f"data: need at least 2 transitions (train + holdout), got {n}")
        if a.shape != (n, act_dim):
            raise ValueError(f"data['action'] must have shape [{n}, {act_dim}], got {a.shape}")
        if s_next.shape != (n, obs_dim):
            raise ValueError(f"data['next_obs'] must have shape [{n}, {obs_dim}], got {s_next.shape}")
        if r.shape not in ((n,), (n, 1)):
            raise ValueError(f"data['reward'] must have shape [{n}], got {r.shape}")
        x = jnp.concatenate([s, a], axis=-1).astype(jnp.float32)
        y = jnp.concatenate([s_next - s, r.reshape(n, 1)], axis=-1).astype(jnp.float32)
        return _fit_jit(params, x, y, key, epochs=epochs)

    return GaussianEnsemble(
        init=init, fit=fit, predict=predict, sample=sample, infer_noise=infer_noise, log_prob=log_prob,
        member_log_probs=member_log_probs, sample_noise=sample_noise, as_step=as_step, as_reward=as_reward,
        initial_state=initial_state, observe=observe, noise_shape={"member": (), "eps": (D,)},
        obs_dim=obs_dim, act_dim=act_dim, ensemble_size=E, num_elites=k,
    )
