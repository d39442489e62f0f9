"""Helpers shared by the policy tests (test_gaussian, test_flow): random parameters without
compiling, seeded normal draws, and one compiled pass of the bundle's exactness checks."""
import jax
import jax.numpy as jnp
import numpy as np

from mbpo_grad.bijectors import standard_normal_log_prob


def random_params(init, seed, scale=0.5, dtype=np.float32):
    """NumPy random values for every parameter leaf, zero-initialised last layers included
    (shapes from ``jax.eval_shape``; nothing compiles)."""
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(lambda s: jnp.asarray(scale * rng.standard_normal(s.shape), dtype), shapes)


def normal(seed, shape, dtype=np.float32):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def checks(pol):
    """One compiled pass over a batch: round trips, log_prob, and the jacfwd reference
    ``log N(ε) − log|det ∂sample/∂ε|``. Returns ``(x, eps_back, lp, lp_ref, a_back)``."""

    @jax.jit
    def run(params, obs, eps, actions):
        def one(o, e, a):
            x = pol.sample(params, o, e)
            e_back = pol.infer_noise(params, o, x)
            lp = pol.log_prob(params, o, x)
            jac = jax.jacfwd(lambda v: pol.sample(params, o, v))(e)
            lp_ref = standard_normal_log_prob(e) - jnp.linalg.slogdet(jac)[1]
            a_back = pol.sample(params, o, pol.infer_noise(params, o, a))
            return x, e_back, lp, lp_ref, a_back

        return jax.vmap(one)(obs, eps, actions)

    return run
