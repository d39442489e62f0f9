"""Bad input to the engine raises a ValueError / TypeError that names the argument.

Every case starts from a valid call (checked to succeed) and breaks exactly one argument.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mbpo_grad as mg

B, D, M, N = 3, 2, 1, 4


def policy(w, s, eps):
    a = jnp.tanh(w @ s)
    return a if eps is None else a + 0.1 * eps


def step(s, a, xi):
    nxt = 0.9 * s + jnp.concatenate([a, a])
    return nxt if xi is None else nxt + 0.1 * xi


def reward(s, a):
    return -(s @ s) - (a @ a)


def critic(s, a):
    return -(s @ s)


def valid_kwargs(**overrides):
    kw = dict(
        policy=policy,
        params=jnp.ones((M, D)),
        step=step,
        reward=reward,
        states=jnp.ones((B, D)),
        horizon=N,
        gamma=0.9,
        bootstrap=critic,
        policy_noise=jnp.zeros((N + 1, B, M)),
        dynamics_noise=jnp.zeros((N, B, D)),
    )
    kw.update(overrides)
    return kw


def call(**overrides):
    kw = valid_kwargs(**overrides)
    args = [kw.pop(k) for k in ("policy", "params", "step", "reward", "states")]
    return mg.pathwise_objective(*args, **kw)


def test_the_valid_call_works():
    assert np.isfinite(float(call()))
    assert np.isfinite(float(call(horizon=0, dynamics_noise=None, policy_noise=jnp.zeros((1, B, M)))))
    assert np.isfinite(float(call(horizon=np.int64(2), policy_noise=None, dynamics_noise=None)))  # NumPy ints are ints
    assert np.isfinite(float(call(gamma=0.0))) and np.isfinite(float(call(gamma=1)))


@pytest.mark.parametrize("horizon", [-1, -10])
def test_negative_horizon(horizon):
    with pytest.raises(ValueError, match="horizon must be >= 0"):
        call(horizon=horizon)


@pytest.mark.parametrize("horizon", [2.0, "3", None, True, jnp.array(3)])
def test_non_int_horizon(horizon):
    with pytest.raises(TypeError, match="horizon must be an int"):
        call(horizon=horizon)


@pytest.mark.parametrize(
    "name, shape",
    [
        ("policy_noise", (N, B, M)),          # needs horizon + 1 steps
        ("policy_noise", (N + 2, B, M)),
        ("policy_noise", (N + 1, B + 1, M)),  # wrong batch
        ("policy_noise", (N + 1,)),           # no batch axis
        ("dynamics_noise", (N + 1, B, D)),    # needs horizon steps
        ("dynamics_noise", (N, 1, D)),        # wrong batch
        ("dynamics_noise", (B, N, D)),        # axes swapped
    ],
)
def test_noise_leading_axes(name, shape):
    with pytest.raises(ValueError, match=name):
        call(**{name: jnp.zeros(shape)})


def test_noise_pytree_leaf_with_wrong_axes():
    noise = {"ok": jnp.zeros((N, B, D)), "bad": jnp.zeros((N, B + 2, D))}
    with pytest.raises(ValueError, match="dynamics_noise"):
        call(dynamics_noise=noise, step=lambda s, a, xi: step(s, a, xi["ok"]))


def test_integer_noise():
    with pytest.raises(TypeError, match="policy_noise must be floating"):
        call(policy_noise=jnp.zeros((N + 1, B, M), dtype=jnp.int32))


@pytest.mark.parametrize("gamma", [-0.1, 1.0001, 2, float("nan"), float("inf"), np.array([0.5, 1.5])])
def test_gamma_outside_unit_interval(gamma):
    with pytest.raises(ValueError, match="gamma must lie in"):
        call(gamma=gamma)


def test_traced_gamma_is_not_rejected():
    vals = jax.vmap(lambda g: call(gamma=g))(jnp.array([0.0, 0.5, 1.0]))
    assert vals.shape == (3,) and np.all(np.isfinite(vals))


@pytest.mark.parametrize("states", [jnp.ones((B, D), dtype=jnp.int32), np.ones((B, D), dtype=np.int64),
                                    jnp.ones((B, D), dtype=bool)])
def test_non_floating_states(states):
    with pytest.raises(TypeError, match="states must be floating"):
        call(states=states)


def test_pytree_states_without_float_leaf():
    states = {"q": jnp.ones((B, D), dtype=jnp.int32), "t": jnp.zeros((B,), dtype=jnp.int32)}
    with pytest.raises(TypeError, match="states holds no floating"):
        call(states=states, policy_noise=None, dynamics_noise=None)


def test_pytree_states_with_mismatched_batch_axes():
    states = {"q": jnp.ones((B, D)), "qd": jnp.ones((B + 1, D))}
    with pytest.raises(ValueError, match="states: every leaf must share the leading batch axis"):
        call(states=states)


def test_pytree_states_with_int_bookkeeping_leaf_are_fine():
    states = {"q": jnp.ones((B, D)), "steps": jnp.zeros((B,), dtype=jnp.int32)}

    def step_tree(s, a, xi):
        return {"q": step(s["q"], a, xi), "steps": s["steps"] + 1}

    def pol(w, s, eps):
        return policy(w, s["q"], eps)

    value = call(states=states, step=step_tree, policy=pol, reward=lambda s, a: reward(s["q"], a),
                 bootstrap=lambda s, a: critic(s["q"], a))
    assert np.isfinite(float(value))


@pytest.mark.parametrize("states, match", [(jnp.ones(()), "states must carry a leading batch axis"),
                                           ({}, "states is an empty pytree")])
def test_states_without_batch(states, match):
    with pytest.raises(ValueError, match=match):
        call(states=states, policy_noise=None, dynamics_noise=None)


def test_horizon_zero_without_bootstrap():
    with pytest.raises(ValueError, match="horizon=0 needs a bootstrap"):
        call(horizon=0, bootstrap=None, policy_noise=None, dynamics_noise=None)


@pytest.mark.parametrize("name", ["policy", "step", "reward", "bootstrap", "done"])
def test_non_callables(name):
    with pytest.raises(TypeError, match=f"{name} must be a callable"):
        call(**{name: "not a function"})


def test_nstep_needs_bootstrap_and_bad_remat():
    with pytest.raises(ValueError, match="bootstrap"):
        mg.nstep(policy, jnp.ones((M, D)), step, reward, jnp.ones((B, D)), horizon=2, bootstrap=None)
    with pytest.raises(ValueError, match="remat"):
        call(remat="yes")
