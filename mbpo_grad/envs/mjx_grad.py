"""``mjx.step`` whose constraint solve is differentiated by its optimality condition.

Why (found with ``mbpo_grad.nan_probe``, see docs/mjx_gradients.md): MJX's line search
takes a Newton step  α₀ = −f'(0) / f''(0)  along the solver's search direction
(``solver.py`` ``_linesearch``). When no constraint row is active the warm start already
solves the problem, the search direction is ~1e-10 and f''(0) = |search|²_M ≈ 1e-20.
The forward value is fine (−0 / 2.7e-20 = −0), but reverse mode of u / y multiplies by
y⁻² = 1.4e39, above float32's 3.4e38: inf, then 0 · inf = NaN in the cotangent. Which
starts hit it depends on round-off. Reverse mode also cannot pass the solver's
``lax.while_loop`` (``opt.iterations > 1``).

The fix never differentiates the solver's iterations. MuJoCo's solve returns the
minimiser a* of the constraint cost, whose gradient vanishes there:

    F(a, d) = M a − qfrc_smooth − qfrc_constraint(J a − aref) = 0        (MuJoCo's ``grad``)

so by the implicit function theorem (e.g. Nocedal & Wright, *Numerical Optimization*,
§A.2; Amos & Kolter 2017, OptNet, for the same use in a network)

    da*/dd = −H⁻¹ ∂F/∂d,     H = ∂F/∂a = M + Jᵀ D J   (the rows active at a*).

``implicit_qacc`` is a ``custom_jvp`` with that tangent; reverse mode is its transpose
(λ = −H⁻ᵀ ā, d̄ = (∂F/∂d)ᵀ λ), so ``jax.grad`` and ``jax.jacfwd`` both work, and no
line-search quantity is ever differentiated. The constraint forces the integrator reads,

    efc_force = −D ⊙ (J a* − aref) ⊙ active,     qfrc_constraint = Jᵀ efc_force,

carry their total derivative through a*(d) as well: with joint damping the Euler
integrator (and ``implicitfast``) advance with (M + h·B)⁻¹ (qfrc_smooth + qfrc_constraint),
not with qacc, so a gradient that reached only qacc would miss the constraint entirely.

How it is wired, without forking MuJoCo: ``step`` and ``forward`` are MJX's own
``forward.step`` / ``forward.forward`` / ``forward.rungekutta4`` (their code objects,
unmodified) executed with the module-level name ``solver`` bound to a namespace whose
``solve`` is ``solve`` below. Everything else (kinematics, collision, sensors, the
integrators) is MJX's code, so the forward trajectory is the same computation as an
unmodified ``mjx.step`` with the model's own ``opt.iterations``; the values of qacc,
qfrc_constraint and efc_force are MJX's solver output exactly (only their derivatives are
replaced). Pinned to the layout of ``mujoco.mjx._src.forward`` in MuJoCo 3.17
(checked at first use and by tests/test_mjx_grad.py).

Limits: exact for the minimiser (a solve stopped by ``opt.iterations`` before converging
gets the gradient of the converged one); at an active-set change (a limit or contact
switching on) F is non-smooth and the one-sided Jacobian of the active set at a* is used;
H costs nv forward passes of the constraint cost per solve (``jacfwd``) and one nv × nv
solve.
"""
from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp


def _residual(m, d, a):
    """F(a, d) = M a − qfrc_smooth − qfrc_constraint(a): MuJoCo's constraint-cost gradient."""
    from mujoco.mjx._src import solver

    ctx = solver.Context.create(m, d.replace(qacc=a), grad=False)
    return ctx.Ma - d.qfrc_smooth - ctx.qfrc_constraint


def residual_jacobian(m, d, a):
    """H = ∂F/∂a at ``a`` (nv × nv): M + Jᵀ D J over the rows active at ``a`` (forward mode, nv tangents)."""
    return jax.jacfwd(lambda x: _residual(m, d, x))(a)


def implicit_qacc(m, d, qacc_star):
    """a* = ``qacc_star`` as a function of ``d`` by the implicit function theorem.

    Tangent (forward mode):  ȧ = −H⁻¹ (∂F/∂d · ḋ),  H = ∂F/∂a at a*;
    reverse mode is its transpose:  λ = −H⁻ᵀ ā,  d̄ = (∂F/∂d)ᵀ λ.

    A ``custom_jvp`` (linear in ḋ), so ``jax.jvp``/``jacfwd`` and ``jax.grad``/``vjp`` both
    work. ``qacc_star`` itself gets no derivative: the solver iterations that produced it are
    never differentiated. Exact when a* is the minimiser (F(a*, d) = 0) and the active set
    does not change under an infinitesimal perturbation.
    """

    @jax.custom_jvp
    def f(d_, a_):
        return a_

    @f.defjvp
    def f_jvp(primals, tangents):
        d_, a_ = primals
        d_dot, _ = tangents
        hess = residual_jacobian(m, d_, a_)
        _, f_dot = jax.jvp(lambda dd: _residual(m, dd, a_), (d_,), (d_dot,))
        return a_, -jnp.linalg.solve(hess, f_dot)

    return f(d, jax.lax.stop_gradient(qacc_star))


def constraint_forces(m, d, qacc):
    """(qfrc_constraint, efc_force) at ``qacc`` on the active set there, differentiable in both.

        efc_force = −D ⊙ (J a − aref) ⊙ active,   qfrc_constraint = Jᵀ efc_force

    (MuJoCo's constraint update, ``solver._update_constraint``, evaluated once at ``qacc``).
    With a = a*(d) from ``implicit_qacc`` their gradients are the total derivatives
    ∂/∂d + ∂/∂a · da*/dd.
    """
    from mujoco.mjx._src import solver

    ctx = solver.Context.create(m, d.replace(qacc=qacc), grad=False)
    return ctx.qfrc_constraint, ctx.efc_force


def _value_of(value, differentiable):
    """``value`` forward, the derivative of ``differentiable`` (equal to it at the exact minimiser)."""
    sg = jax.lax.stop_gradient
    return sg(value) + (differentiable - sg(differentiable))


def solve(m, d):
    """Drop-in for ``mujoco.mjx._src.solver.solve`` with implicit-function derivatives.

    Values: MJX's own solve with the model's ``opt.iterations`` (its ``while_loop`` is never
    differentiated). Derivatives: qacc by ``implicit_qacc``; qfrc_constraint and efc_force by
    ``constraint_forces`` at that qacc.
    """
    from mujoco.mjx._src import solver

    solved = solver.solve(m, jax.lax.stop_gradient(d))
    qacc = implicit_qacc(m, d, solved.qacc)
    qfrc_constraint, efc_force = constraint_forces(m, d, qacc)
    return d.tree_replace({
        "qacc": qacc,
        "qfrc_constraint": _value_of(solved.qfrc_constraint, qfrc_constraint),
        "_impl.efc_force": _value_of(solved._impl.efc_force, efc_force),
    })


def _unwrapped(fn):
    """The function under MJX's ``named_scope`` decorator (``functools.wraps``)."""
    inner = getattr(fn, "__wrapped__", fn)
    if not isinstance(inner, types.FunctionType):
        raise RuntimeError(f"mjx_grad: mujoco.mjx._src.forward.{fn.__name__} is not a plain function; "
                           "this MuJoCo version's layout is not supported (written for 3.17)")
    return inner


@functools.lru_cache(maxsize=None)
def _rebound():
    """MJX's ``step``, ``forward`` and ``rungekutta4`` with ``solver`` resolving to this module's ``solve``.

    The functions are MJX's code objects; only their globals differ: a copy of
    ``forward``'s module dictionary in which ``solver`` is a namespace with every attribute
    of MJX's ``solver`` module except ``solve``, and ``forward`` / ``rungekutta4`` are the
    rebound ones (so ``step`` → ``forward`` → ``solve`` and RK4's stages all use it).
    """
    from mujoco.mjx._src import forward as fw
    from mujoco.mjx._src import solver

    names = ("step", "forward", "rungekutta4")
    for name in names:
        if not hasattr(fw, name):
            raise RuntimeError(f"mjx_grad: mujoco.mjx._src.forward has no {name!r} (written for MuJoCo 3.17)")
    if "solver" not in _unwrapped(fw.forward).__code__.co_names:
        raise RuntimeError("mjx_grad: mujoco.mjx._src.forward.forward no longer calls solver.solve "
                           "(written for MuJoCo 3.17)")
    shim = types.SimpleNamespace(**{k: getattr(solver, k) for k in dir(solver) if not k.startswith("__")})
    shim.solve = solve
    env = dict(fw.__dict__)
    env["solver"] = shim
    for name in names:
        inner = _unwrapped(getattr(fw, name))
        fn = types.FunctionType(inner.__code__, env, inner.__name__, inner.__defaults__, inner.__closure__)
        env[name] = fw.named_scope(fn)
    return env["step"], env["forward"]


def step(m, d):
    """``mjx.step(m, d)`` (same code, same values) whose constraint solve has implicit derivatives."""
    return _rebound()[0](m, d)


def forward(m, d):
    """``mjx.forward(m, d)`` (same code, same values) whose constraint solve has implicit derivatives."""
    return _rebound()[1](m, d)


__all__ = ["step", "forward", "solve", "implicit_qacc", "constraint_forces", "residual_jacobian"]
