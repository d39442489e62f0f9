"""Outer constraint-solver iterations per MJX step, float32 against float64 (docs/mjx_gradients.md).

    python scripts/mjx_solver_iterations.py            # both precisions, each in its own process

MJX 3.17's ``solver.solve`` does not record ``solver_niter`` in the Data it returns, so the count is
read from its ``while_loop``'s final Context (``jax.lax.while_loop`` wrapped while ``solve`` is
traced). States: 32 envs after 30 steps of fixed actions a ~ U(−1, 1) from resets of
``PRNGKey(0)``, for Brax's inverted pendulum and hopper (``mjx`` backend) and the MJX cart-pole.
"""
import subprocess
import sys


def count(x64: bool) -> None:
    import jax
    if x64:
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    import numpy as np
    from mujoco.mjx._src import solver

    from mbpo_grad import envs

    orig, cap = jax.lax.while_loop, {}

    def counting(cond, body, init):
        out = orig(cond, body, init)
        cap["n"] = out.solver_niter
        return out

    for name, kw in (("brax:inverted_pendulum", dict(backend="mjx")), ("brax:hopper", dict(backend="mjx")),
                     ("mjx:inverted_pendulum", {})):
        env = envs.make(name, x64=x64, **kw)
        s = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), 32))
        a = jax.random.uniform(jax.random.PRNGKey(1), (32, env.action_size), jnp.float64 if x64 else jnp.float32,
                               -1, 1)
        step = jax.jit(jax.vmap(lambda s, a: env.step(s, a, None)))
        for _ in range(30):
            s = step(s, a)
        d, m = (s.pipeline_state, env.info["brax_env"].sys) if "brax_env" in env.info else (s, env.info["mjx_model"])

        def niter(d):
            jax.lax.while_loop = counting
            try:
                solver.solve(m, d)
            finally:
                jax.lax.while_loop = orig
            return cap["n"]

        it = np.asarray(jax.jit(jax.vmap(niter))(d))
        print(f"{name:24s} {'float64' if x64 else 'float32'}  opt.iterations {int(m.opt.iterations):3d}  "
              f"solver iterations per env: mean {it.mean():.2f}  min {it.min()}  max {it.max()}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        count(sys.argv[1] == "float64")
    else:
        for precision in ("float32", "float64"):
            subprocess.run([sys.executable, __file__, precision], check=True)
