"""The agents' optimiser (``common.make_optimizer``): optax's clip_by_global_norm → scale_by_adam →
scheduled learning rate inside ``optax.inject_hyperparams``, built once, with the learning rate and
clip norm held in its state (``common.init_optimizer`` sets a run's traced values).

Reference: a frozen copy of the hand-written optimiser it replaced (the copy below, rebuilt from
the current hyper-parameters inside every jitted update). Over 50 steps of random gradients —
about half of them above the clip norm — with the learning rate and clip norm traced (jit) and
vmapped over two values, the new optimiser's updates and parameters equal the old ones to float
rounding, for every schedule and for a disabled clip (max_grad_norm <= 0).
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbpo_grad import guards
from mbpo_grad.agents import common

STEPS, TOTAL = 50, 40        # the schedules reach their end inside the run (k > K keeps the final value)
B1, B2 = 0.8, 0.95


# --------------------------------------------------------------------------- frozen old implementation
def _old_lr_multiplier(schedule, count, total_steps):
    frac = jnp.clip(jnp.asarray(count, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    if schedule == "constant":
        return jnp.ones_like(frac)
    if schedule == "linear":
        return 1.0 - frac
    if schedule == "cosine":
        return 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    raise ValueError(schedule)


def _old_make_optimizer(lr, max_grad_norm, *, total_steps, schedule="linear", b1=0.9, b2=0.999, eps=1e-8):
    def clip_update(updates, state, params=None):
        del params
        norm = optax.tree.norm(updates)
        limit = jnp.asarray(max_grad_norm, jnp.float32)
        factor = jnp.where((limit > 0) & (norm > limit), limit / jnp.maximum(norm, 1e-12), 1.0)
        return jax.tree_util.tree_map(lambda g: g * factor.astype(g.dtype), updates), state

    clip = optax.GradientTransformation(lambda params: optax.EmptyState(), clip_update)
    return optax.chain(
        clip,
        optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
        optax.scale_by_schedule(lambda count: -jnp.asarray(lr) * _old_lr_multiplier(schedule, count, total_steps)),
    )


# --------------------------------------------------------------------------- helpers
def _problem(dtype=jnp.float32):
    """Params and STEPS random gradients whose global norms straddle 1 (≈ half are clipped at 1)."""
    k_p, k_g, k_s = jax.random.split(jax.random.key(11), 3)
    params = {"w": jax.random.normal(k_p, (4, 3), dtype), "b": jnp.zeros((3,), dtype)}
    g = {"w": jax.random.normal(k_g, (STEPS, 4, 3), dtype), "b": jax.random.normal(jax.random.fold_in(k_g, 1), (STEPS, 3), dtype)}
    norms = jnp.sqrt(jnp.sum(g["w"] ** 2, axis=(1, 2)) + jnp.sum(g["b"] ** 2, axis=1))
    scale = jnp.exp(jax.random.uniform(k_s, (STEPS,), dtype, -1.5, 1.5)) / norms   # norms in [e^-1.5, e^1.5]
    return params, jax.tree_util.tree_map(lambda x: x * scale.reshape((STEPS,) + (1,) * (x.ndim - 1)), g)


def _runs(schedule, dtype=jnp.float32):
    """run(lr, max_grad_norm) -> (updates new, updates old, final params new, final params old)."""
    params, grads = _problem(dtype)
    tx = common.make_optimizer(total_steps=TOTAL, schedule=schedule, b1=B1, b2=B2)   # built once

    def run(lr, max_grad_norm):
        def step(carry, g):
            (p_new, s_new), (p_old, s_old) = carry
            u_new, s_new = tx.update(g, s_new, p_new)
            old = _old_make_optimizer(lr, max_grad_norm, total_steps=TOTAL, schedule=schedule, b1=B1, b2=B2)
            u_old, s_old = old.update(g, s_old, p_old)
            return ((optax.apply_updates(p_new, u_new), s_new), (optax.apply_updates(p_old, u_old), s_old)), (u_new, u_old)

        s_new = common.init_optimizer(tx, params, learning_rate=lr, max_grad_norm=max_grad_norm)
        s_old = _old_make_optimizer(lr, max_grad_norm, total_steps=TOTAL, schedule=schedule, b1=B1, b2=B2).init(params)
        ((p_new, s_new), (p_old, _)), (u_new, u_old) = jax.lax.scan(step, ((params, s_new), (params, s_old)), grads)
        return u_new, u_old, p_new, p_old, s_new

    return run, params, grads


def _rel(a, b):
    a, b = (np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree_util.tree_leaves(t)]) for t in (a, b))
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# --------------------------------------------------------------------------- equality with the old optimiser
@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
@pytest.mark.parametrize("max_grad_norm", [1.0, 0.0, -1.0])
def test_equals_the_old_optimizer_under_jit_with_traced_hparams(schedule, max_grad_norm):
    run, _, _ = _runs(schedule)
    u_new, u_old, p_new, p_old, state = jax.jit(run)(jnp.float32(0.03), jnp.float32(max_grad_norm))
    # every step's update, and the parameters after 50 steps, to float32 rounding
    assert _rel(u_new, u_old) < 1e-6 and _rel(p_new, p_old) < 1e-6
    # the linear/cosine rate has decayed to 0 past K (to float32 rounding: XLA turns count / K into
    # count · (1/K), so optax's 1 − k/K at k >= K is about −1.5e-8 where the old clip gave exactly 0)
    if schedule != "constant":
        first, last = (float(jnp.max(jnp.abs(u_new["w"][i]))) for i in (0, -1))
        assert last < 1e-6 * first
    # the state holds the (traced) hyper-parameters and counts the steps once per update
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.03)
    assert float(state.hyperparams["max_grad_norm"]) == max_grad_norm and int(state.count) == STEPS


def test_clipping_acts_on_the_steps_above_the_norm_only():
    """The gradients are such that the clipped and unclipped runs differ (else the test above proves nothing)."""
    run, _, grads = _runs("constant")
    clipped, unclipped = jax.jit(run)(0.03, 1.0), jax.jit(run)(0.03, 0.0)
    norms = np.sqrt(np.sum(np.asarray(grads["w"]) ** 2, axis=(1, 2)) + np.sum(np.asarray(grads["b"]) ** 2, axis=1))
    assert 10 < np.sum(norms > 1.0) < 40
    assert _rel(clipped[2], unclipped[2]) > 1e-2


def test_equals_the_old_optimizer_in_float64():
    with jax.enable_x64(True):
        run, _, _ = _runs("linear", jnp.float64)
        u_new, u_old, p_new, p_old, state = jax.jit(run)(jnp.float32(0.03), jnp.float32(1.0))
        assert p_new["w"].dtype == jnp.float64 and state.hyperparams["learning_rate"].dtype == jnp.float64
        # the old schedule factor was computed in float32, the new one in float64: float32 rounding
        assert _rel(u_new, u_old) < 1e-6 and _rel(p_new, p_old) < 1e-6


def test_vmap_over_learning_rates_and_clip_norms_equals_separate_runs():
    run, _, _ = _runs("linear")
    lrs, clips = jnp.array([0.03, 0.1], jnp.float32), jnp.array([1.0, 0.0], jnp.float32)
    u_new, u_old, p_new, p_old, state = jax.jit(jax.vmap(run))(lrs, clips)
    assert _rel(u_new, u_old) < 1e-6 and _rel(p_new, p_old) < 1e-6
    # the state carries the batched hyper-parameters; each lane is the unbatched run
    np.testing.assert_array_equal(np.asarray(state.hyperparams["learning_rate"]), np.asarray(lrs))
    for i in range(2):
        single = jax.jit(run)(lrs[i], clips[i])[2]
        assert _rel(jax.tree_util.tree_map(lambda x: x[i], p_new), single) < 1e-6
    assert _rel(jax.tree_util.tree_map(lambda x: x[0], p_new), jax.tree_util.tree_map(lambda x: x[1], p_new)) > 1e-3


def test_new_hyperparameter_values_do_not_recompile():
    params, grads = _problem()
    tx = common.make_optimizer(total_steps=TOTAL, schedule="cosine")
    traces = []

    @jax.jit
    def first_step(lr, clip):
        traces.append(1)
        s = common.init_optimizer(tx, params, learning_rate=lr, max_grad_norm=clip)
        return tx.update(jax.tree_util.tree_map(lambda x: x[0], grads), s, params)[0]

    a = first_step(jnp.float32(0.01), jnp.float32(1.0))
    b = first_step(jnp.float32(0.02), jnp.float32(1.0))
    first_step(jnp.float32(0.02), jnp.float32(0.0))
    assert len(traces) == 1
    np.testing.assert_allclose(np.asarray(b["w"]), 2 * np.asarray(a["w"]), rtol=1e-6)  # the update scales with lr


# --------------------------------------------------------------------------- inside the skip guard
def test_inside_skip_nonfinite_equals_the_old_wrapped_optimizer():
    """guards.skip_nonfinite around both; NaN gradients at some steps are skipped by both alike
    (the schedule does not advance on a skipped step)."""
    params, grads = _problem()
    bad = (jnp.arange(STEPS) % 7 == 3)
    grads = jax.tree_util.tree_map(lambda g: jnp.where(bad.reshape((STEPS,) + (1,) * (g.ndim - 1)), jnp.nan, g), grads)
    tx = guards.skip_nonfinite(common.make_optimizer(total_steps=TOTAL, schedule="linear"), max_grad_norm_to_skip=1e3)

    @jax.jit
    def run(lr, clip):
        old = guards.skip_nonfinite(_old_make_optimizer(lr, clip, total_steps=TOTAL, schedule="linear"),
                                    max_grad_norm_to_skip=1e3)

        def step(carry, g):
            (p1, s1), (p2, s2) = carry
            u1, s1 = tx.update(g, s1, p1)
            u2, s2 = old.update(g, s2, p2)
            return ((optax.apply_updates(p1, u1), s1), (optax.apply_updates(p2, u2), s2)), None

        s1 = common.init_optimizer(tx, params, learning_rate=lr, max_grad_norm=clip)
        ((p1, s1), (p2, s2)), _ = jax.lax.scan(step, ((params, s1), (params, old.init(params))), grads)
        return p1, p2, s1, s2

    p1, p2, s1, s2 = run(jnp.float32(0.03), jnp.float32(1.0))
    assert _rel(p1, p2) < 1e-6
    assert int(s1.total_skipped) == int(s2.total_skipped) == int(jnp.sum(bad))
    assert int(s1.inner_state.count) == STEPS - int(jnp.sum(bad))


# --------------------------------------------------------------------------- schedules and errors
def test_lr_schedule_closed_forms():
    k = np.arange(0, 13)
    K, lr = 10, 0.5
    ref = {"constant": np.full(k.shape, lr), "linear": lr * (1 - np.minimum(k, K) / K),
           "cosine": lr * 0.5 * (1 + np.cos(np.pi * np.minimum(k, K) / K))}
    for name, r in ref.items():
        got = np.asarray([common.lr_schedule(name, lr, K)(jnp.int32(c)) for c in k])
        np.testing.assert_allclose(got, r, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(np.asarray(common.lr_multiplier(name, jnp.asarray(k), K)), r / lr,
                                   rtol=1e-6, atol=1e-7)


def test_unset_learning_rate_is_nan_and_bad_arguments_are_named():
    params = {"w": jnp.ones((2,))}
    tx = common.make_optimizer(total_steps=5)
    u, _ = tx.update({"w": jnp.ones((2,))}, tx.init(params), params)
    assert np.all(np.isnan(np.asarray(u["w"])))
    with pytest.raises(ValueError, match="lr_schedule"):
        common.make_optimizer(total_steps=5, schedule="step")
    with pytest.raises(ValueError, match="'momentum'"):
        common.init_optimizer(tx, params, momentum=0.9)
    with pytest.raises(ValueError, match=r"learning_rate must be a scalar, got shape \(2,\)"):
        common.init_optimizer(tx, params, learning_rate=jnp.ones((2,)))
