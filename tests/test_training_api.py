"""The training API every agent shares (``driver``): ``train -> (make_policy, params, metrics)``,
``progress_fn``, the run folder (TensorBoard events, the saved policy), ``mg.load_policy`` and
kill-and-resume.

For each agent, at a tiny size:
* ``progress_fn(step, metrics)`` is called once per evaluation with the env steps and the
  evaluation return that ``metrics`` reports;
* the run folder holds config.json, metrics.csv, TensorBoard event files whose scalars are the
  run's evaluations, the policy, a PNG and summary.json;
* ``mg.load_policy(run_dir)`` gives back a policy whose evaluation with the run's final key is
  the run's final ``eval_return`` exactly, and whose actions equal ``make_policy(params)``'s;
* a run interrupted after its first checkpoint (an exception from ``progress_fn``, at a block
  boundary after the checkpoint of the block before) and resumed gives exactly the metrics
  and final policy of the uninterrupted run.
"""
import glob
import json
import os

import jax
import numpy as np
import pytest

import mbpo_grad as mg
from mbpo_grad import runs
from mbpo_grad.agents import ddpg, fqi, model_based, nfqca, sac, shac, td3

OFF = dict(env="pendulum", num_envs=2, iterations=6, eval_every=2, warmup_steps=8, batch_size=8, buffer_size=256,
           eval_envs=2, episode_length=16, actor_hidden=(8,), critic_hidden=(8,), updates_per_iteration=2)

AGENTS = {
    "shac": (shac, shac.SHACConfig(env="pendulum", num_envs=4, horizon=4, iterations=6, eval_every=2,
                                    episode_length=16, critic_minibatches=2, critic_iterations=1, eval_envs=2,
                                    actor_hidden=(8,), critic_hidden=(8,))),
    "ddpg": (ddpg, ddpg.DDPGConfig(**OFF)),
    "td3": (td3, td3.TD3Config(**OFF)),
    "sac": (sac, sac.SACConfig(**OFF)),
    "nfqca": (nfqca, nfqca.NFQCAConfig(**OFF)),
    "fqi": (fqi, fqi.FQIConfig(**OFF)),
    "model_based": (model_based, model_based.ModelBasedConfig(
        env="pendulum", num_envs=2, steps_per_iteration=4, iterations=6, updates_per_iteration=1, batch_size=8,
        buffer_size=256, warmup_steps=0, eval_every=2, eval_envs=2, episode_length=16, horizon=2,
        ensemble_size=2, elites=1, model_hidden=(8,), model_epochs=2, fit_size=16, model_batch=8,
        actor_hidden=(8,), critic_hidden=(8,), critic_iterations=1)),
}


class Interrupt(Exception):
    pass


def _scalars(tb_dir, tag):
    """(step, value) of ``tag`` read back from the event files: TFRecord framing (u64 length,
    u32 crc, payload, u32 crc) around ``Event`` protos (tensorboardX's own proto classes)."""
    import struct
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
        data = open(path, "rb").read()
        i = 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in ev.summary.value:
                if v.tag == tag:
                    out.append((ev.step, v.simple_value))
    return out


@pytest.mark.parametrize("name", sorted(AGENTS))
def test_train_writes_a_run_folder_whose_policy_reproduces_the_final_evaluation(name, tmp_path):
    module, cfg = AGENTS[name]
    key = jax.random.key(1)
    calls = []
    run_dir = str(tmp_path / "run")
    make_policy, params, metrics = module.train(cfg, key, progress=False, run_dir=run_dir,
                                                progress_fn=lambda step, m: calls.append((step, m)),
                                                checkpoint_every=2)
    # progress_fn: once per evaluation, env steps and the evaluation return of metrics.
    assert [c[0] for c in calls] == [int(s) for s in metrics["eval_env_steps"]]
    np.testing.assert_array_equal([c[1]["eval_return"] for c in calls], metrics["eval_return"].astype(np.float32))
    assert all(np.isfinite(metrics["eval_return"]))

    files = set(os.listdir(run_dir))
    assert {"config.json", "metrics.csv", "summary.json", "policy", "tensorboard", "learning_curve.png",
            "ckpt"} <= files
    summary = json.load(open(os.path.join(run_dir, "summary.json")))
    assert summary["status"] == "finished" and summary["final_eval_return"] == float(metrics["eval_return"][-1])
    assert glob.glob(os.path.join(run_dir, "tensorboard", "events.out.tfevents.*"))
    tb = _scalars(os.path.join(run_dir, "tensorboard"), "eval/episode_return")
    np.testing.assert_allclose([v for _, v in tb], metrics["eval_return"], rtol=1e-6)
    assert [s for s, _ in tb] == [int(s) for s in metrics["eval_env_steps"]]

    # The saved policy: same actions as make_policy(params), the run's final evaluation exactly.
    act, info = mg.load_policy(run_dir)
    obs = np.random.default_rng(0).normal(size=(5, info["spec"]["obs_size"])).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(act(obs)), np.asarray(make_policy(params)(obs)))
    # one observation vs a batch: another matmul kernel, the same up to float32 rounding
    np.testing.assert_allclose(np.asarray(act(obs[0])), np.asarray(make_policy(params)(obs)[0]), rtol=1e-5, atol=1e-6)
    assert runs.evaluate_saved(run_dir) == float(metrics["eval_return"][-1])
    if name == "shac":  # the command users run: python -m experiments.evaluate RUN_DIR
        from experiments import evaluate
        assert evaluate.main([run_dir]) == float(metrics["eval_return"][-1])
        with pytest.raises(SystemExit):
            evaluate.main([run_dir, "--episodes", "0"])

    # Kill-and-resume: stop at the second evaluation (checkpoint of iteration 2 written), resume.
    run_b = str(tmp_path / "b")

    def stop(step, m):
        if m["iteration"] >= 4:
            raise Interrupt()

    with pytest.raises(Interrupt):
        module.train(cfg, key, progress=False, run_dir=run_b, checkpoint_every=2, progress_fn=stop)
    assert json.load(open(os.path.join(run_b, "summary.json")))["status"] == "running"
    _, params_b, metrics_b = module.train(cfg, key, progress=False, run_dir=run_b, checkpoint_every=2, resume=True)
    for k, v in metrics.items():
        if k != "wall_s":
            np.testing.assert_array_equal(np.asarray(metrics_b[k]), np.asarray(v), err_msg=k)
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(params_b)):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(run_dir, "metrics.csv")) as fa, open(os.path.join(run_b, "metrics.csv")) as fb:
        assert fa.read() == fb.read()


def test_load_policy_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        mg.load_policy(str(tmp_path))
    module, cfg = AGENTS["shac"]
    pol = mg.policies.gaussian(3, 1, (8,))
    run_dir = str(tmp_path / "custom")
    module.train(cfg.replace(iterations=2), jax.random.key(0), policy=pol, progress=False, run_dir=run_dir,
                 tensorboard=False)
    assert "tensorboard" not in os.listdir(run_dir)
    from experiments import report
    text = report.render([run_dir], str(tmp_path / "report.md"))
    assert "Status: **finished**" in text and "Final evaluation return" in text and "learning_curve.png" in text
    with pytest.raises(ValueError, match="custom policy bundle"):
        mg.load_policy(run_dir)
    act, _ = mg.load_policy(run_dir, policy=pol)
    assert act(np.zeros(3, np.float32)).shape == (1,)
