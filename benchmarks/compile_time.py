"""Time to the first finished update, per agent, on cart-pole (each in a fresh process).

For each agent in ``mbpo_grad/agents`` a child process is started; from the child's
own start it records:

  import_s        interpreter start → ``import jax, mbpo_grad, envs`` and the agent module done
  build_s         ``make_agent(config)`` (env, networks, optimiser; no compile)
  compile_s       ``jax.jit(init)`` and ``jax.jit(update)`` lowered and compiled
  first_update_s  init + one update executed (``block_until_ready``)
  total_s         child start → first update finished (the goal's "seconds from start")
  cpu_total_s     the child's CPU seconds (user + system, all threads) up to that point: what
                  the same work costs on an idle machine with one core, whatever the load

and, with ``--with-eval``, the time the training driver (``common.run``) takes to its
first progress line, which also compiles the evaluation rollout. Configs are each
agent's own defaults on ``env="cartpole"`` (BPO: ``shac.bpo_config``).

Goal (issue 8): ≤ 30 s from start to the first finished update on a 2-core CPU.

    python -m benchmarks.compile_time                 # every agent found
    python -m benchmarks.compile_time --agents shac,bpo
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

from benchmarks import _common as C

NAME = "compile_time"
# name -> (module, config factory expression evaluated in the child)
AGENTS = {
    "shac": ("mbpo_grad.agents.shac", "M.SHACConfig(env=ENV, iterations=ITS, eval_every=ITS)"),
    "bpo": ("mbpo_grad.agents.shac", "M.bpo_config(ENV, iterations=ITS, eval_every=ITS)"),
    "ddpg": ("mbpo_grad.agents.ddpg", "M.DDPGConfig(env=ENV, iterations=ITS, eval_every=ITS)"),
    "td3": ("mbpo_grad.agents.td3", "M.TD3Config(env=ENV, iterations=ITS, eval_every=ITS)"),
    "sac": ("mbpo_grad.agents.sac", "M.SACConfig(env=ENV, iterations=ITS, eval_every=ITS)"),
    "nfqca": ("mbpo_grad.agents.nfqca", "M.NFQCAConfig(env=ENV, iterations=ITS, eval_every=ITS)"),
    "fqi": ("mbpo_grad.agents.fqi", "M.FQIConfig(env=ENV, iterations=ITS, eval_every=ITS)"),
}
GOAL_S = 30.0


def child(agent: str, env: str, with_eval: bool, tiny: bool) -> dict:
    """Runs in the fresh process; ``T0`` is its start time (passed in the environment)."""
    t0 = float(os.environ["BENCH_T0"])
    import importlib

    import jax

    from mbpo_grad import envs  # noqa: F401
    import mbpo_grad  # noqa: F401

    mod_name, expr = AGENTS[agent]
    M = importlib.import_module(mod_name)
    t_import = time.time()
    cfg = eval(expr, {"M": M, "ENV": env, "ITS": 1})  # noqa: S307 - fixed expressions from AGENTS
    if tiny:
        small = {"num_envs": 2, "eval_envs": 2, "batch_size": 8, "warmup_steps": 2, "buffer_size": 64,
                 "horizon": 4, "critic_minibatches": 1, "episode_length": 8, "q_steps": 2, "actor_steps": 2,
                 "policy_steps": 2, "q_iterations": 1, "updates_per_iteration": 1}
        fields = set(getattr(cfg, "__dataclass_fields__", {}))
        kw = {k: v for k, v in small.items() if k in fields}
        if agent == "bpo":
            kw["horizon"] = kw["episode_length"]
        if getattr(cfg, "updates_per_iteration", 1) == 0:
            kw.pop("updates_per_iteration", None)
        cfg = cfg.replace(**kw)
    agent_b = M.make_agent(cfg)
    hp = cfg.hparams()
    t_build = time.time()
    key = jax.random.PRNGKey(0)
    init_c = jax.jit(agent_b.init).lower(key, hp).compile()
    state = init_c(key, hp)
    update_c = jax.jit(agent_b.update).lower(state, hp, key).compile()
    t_compile = time.time()
    state, metrics = update_c(state, hp, key)
    jax.block_until_ready((state, metrics))
    t_update = time.time()
    ru = resource.getrusage(resource.RUSAGE_SELF)
    out = {"agent": agent, "env": env, "import_s": t_import - t0, "build_s": t_build - t_import,
           "compile_s": t_compile - t_build, "first_update_s": t_update - t_compile, "total_s": t_update - t0,
           "cpu_total_s": ru.ru_utime + ru.ru_stime, "name": agent_b.name}
    if with_eval:
        from mbpo_grad.agents import common

        t1 = time.time()
        common.run(agent_b, jax.random.PRNGKey(1), hp, iterations=1, eval_every=1, progress=False)
        out["driver_first_block_s"] = time.time() - t1
    return out


def run_child(agent: str, env: str, with_eval: bool, tiny: bool, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.compile_time", "--child", agent, "--env", env]
    if with_eval:
        cmd.append("--with-eval")
    if tiny:
        cmd.append("--tiny")
    environ = dict(os.environ, BENCH_T0=repr(time.time()))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=environ,
                              cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    except subprocess.TimeoutExpired:
        return {"agent": agent, "env": env, "error": f"timed out after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"agent": agent, "env": env, "error": " | ".join(tail) or f"exit {proc.returncode}"}
    return json.loads(lines[-1])


def main(argv=None) -> dict:
    p = C.parser(NAME, __doc__.split("\n")[0])
    p.add_argument("--agents", default=None, help=f"comma-separated subset of {','.join(AGENTS)}")
    p.add_argument("--env", default="cartpole", help="environment name for envs.make (default cartpole)")
    p.add_argument("--with-eval", action="store_true", help="also time the driver's first block (compiles evaluation)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per agent (default 300)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.env, args.with_eval, args.tiny)), flush=True)
        return {}
    names = args.agents.split(",") if args.agents else list(AGENTS)
    if args.tiny and not args.agents:
        names = ["shac"]
    for n in names:
        if n not in AGENTS:
            p.error(f"--agents: unknown agent {n!r}; expected from {list(AGENTS)}")
    payload = {"benchmark": NAME, "machine": C.machine(), "goal_s": GOAL_S, "rows": []}
    for n in names:
        row = run_child(n, args.env, args.with_eval, args.tiny, args.timeout)
        if "total_s" in row:
            row["goal_met"] = row["total_s"] <= GOAL_S
            C.log(f"  {n}: {row['total_s']:.1f} s to the first update (compile {row['compile_s']:.1f} s)")
        else:
            C.log(f"  {n}: {row['error']}")
        payload["rows"].append(row)
        C.write_json(args.out, payload)
    cols = ["agent", "env", "import_s", "build_s", "compile_s", "first_update_s", "total_s", "cpu_total_s",
            "goal_met"]
    if args.with_eval:
        cols.append("driver_first_block_s")
    cols.append("error")
    payload["markdown"] = C.markdown_table(payload["rows"], cols, {c: ".1f" for c in cols})
    C.write_json(args.out, payload)
    print(payload["markdown"])
    return payload


if __name__ == "__main__":
    main()
