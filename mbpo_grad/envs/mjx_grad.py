"""``mjx.step`` with the constraint solve differentiated by its optimality condition.

Why (found with ``mbpo_grad.nan_probe``, see docs/mjx_gradients.md): MJX's line search
takes a Newton step  α₀ = −f'(0) / f''(0)  along the solver's search direction
(``solver.py`` ``_linesearch``). When no constraint row is active the warm start already
solves the problem, the search direction is ~1e-10 and f''(0) = |search|²_M ≈ 1e-20.
The forward value is fine (−0 / 2.7e-20 = −0), but reverse mode of u / y multiplies by
y⁻² = 1.4e39, above float32's 3.4e38: inf, then 0 · inf = NaN in the cotangent. Which
starts hit it depends on round-off, hence "6 of 32 envs".

The fix never differentiates the solver's iterations. The solve returns the minimiser
a* of the constraint cost; its gradient condition is

    F(a, d) = M a − qfrc_smooth − qfrc_constraint(J a − aref) = 0        (MuJoCo's ``grad``)

so by the implicit function theorem da*/dd = −H⁻¹ ∂F/∂d with H = ∂F/∂a = M + Jᵀ D J
(the active rows' Hessian). The VJP is one nv × nv solve:

    λ = −H⁻ᵀ ā,   d̄ = (∂F/∂d)ᵀ λ          (evaluated at a*, no division by f'')

The forward pass is MJX's own ``solver.solve`` with the model's own
``opt.iterations`` (the while loop is fine: it is never differentiated), so the
trajectory equals an unmodified ``mjx.step``'s. Limits: the gradient is that of the
exact minimiser (so it differs from autodiff of a truncated 1-iteration solve by the
truncation error); ``qfrc_constraint`` and ``efc_force`` pass their values but not
their gradients (the integrator reads only ``qacc``); where the active set changes
(a limit or contact switching on) F is non-smooth and the one-sided Jacobian is used.

Uses MJX's internal modules (``mujoco.mjx._src``: ``forward``, ``sensor``, ``solver``),
unmodified; pinned to the installed version's layout (``forward.step``) and checked by
tests/test_mjx_grad.py.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _residual(m, d, a):
    """F(a, d) = M a − qfrc_smooth − qfrc_constraint(a): MuJoCo's constraint-cost gradient."""
    from mujoco.mjx._src import solver

    ctx = solver.Context.create(m, d.replace(qacc=a), grad=False)
    return ctx.Ma - d.qfrc_smooth - ctx.qfrc_constraint


def implicit_qacc(m, d, qacc_star):
    """a* with the implicit-function VJP: value ``qacc_star``, gradient −(∂F/∂d)ᵀ H⁻ᵀ ā to ``d``."""

    @jax.custom_vjp
    def f(d_, a_):
        return a_

    def fwd(d_, a_):
        return a_, (d_, a_)

    def bwd(res, abar):
        d_, a_ = res
        hess = jax.jacfwd(lambda x: _residual(m, d_, x))(a_)
        lam = -jnp.linalg.solve(hess.T, abar)
        _, pull = jax.vjp(lambda dd: _residual(m, dd, a_), d_)
        (dbar,) = pull(lam)
        return dbar, jnp.zeros_like(a_)

    f.defvjp(fwd, bwd)
    return f(d, jax.lax.stop_gradient(qacc_star))


def step(m, d):
    """One ``mjx.step`` (JAX backend) whose constraint solve has the implicit VJP.

    The same sequence as ``mujoco.mjx._src.forward.step``: positions, sensors,
    velocities, actuation, smooth acceleration, the solve (MJX's own, value only),
    acceleration sensors, then the integrator.
    """
    from mujoco.mjx._src import forward as fw
    from mujoco.mjx._src import sensor, solver
    from mujoco.mjx._src.types import IntegratorType

    d = fw.fwd_position(m, d)
    d = sensor.sensor_pos(m, d)
    d = fw.fwd_velocity(m, d)
    d = sensor.sensor_vel(m, d)
    d = fw.fwd_actuation(m, d)
    d = fw.fwd_acceleration(m, d)
    if d._impl.efc_J.size == 0:
        d = d.replace(qacc=d.qacc_smooth)
    else:
        solved = solver.solve(m, jax.lax.stop_gradient(d))
        d = d.tree_replace({
            "qacc": implicit_qacc(m, d, solved.qacc),
            "qfrc_constraint": solved.qfrc_constraint,
            "_impl.efc_force": solved._impl.efc_force,
        })
        d = sensor.sensor_acc(m, d)
    if m.opt.integrator == IntegratorType.EULER:
        return fw.euler(m, d)
    if m.opt.integrator == IntegratorType.RK4:
        return fw.rungekutta4(m, d)
    if m.opt.integrator == IntegratorType.IMPLICITFAST:
        return fw.implicit(m, d)
    raise NotImplementedError(f"integrator {m.opt.integrator} not implemented")


__all__ = ["step", "implicit_qacc"]
