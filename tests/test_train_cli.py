"""``python -m experiments.train`` as a user runs it: crash-safe checkpoints, resume, determinism,
the float64 switch, the skip-rate stop and bad input.

The subprocesses share a JAX persistent compilation cache in ``tmp_path`` so only the first one
compiles (the cached executables are the same programs: the results do not change).
"""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from experiments import rundir, train
from mbpo_grad import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--env", "pendulum", "--n", "4", "--num-envs", "4", "--iterations", "6", "--eval-every", "2",
        "--episode-length", "10", "--seed", "3", "--checkpoint-every", "2"]


def _env(cache, **extra):
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
               TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MBPO_GRAD_CHECKPOINT_PAUSE", None)
    env.update(extra)
    return env


def _train(args, cache, **popen):
    return subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=_env(cache),
                          capture_output=True, text=True, timeout=600, **popen)


def _tmp_dirs(folder):
    return ckpt.temporary_dirs(folder)


def test_kill_during_checkpoint_then_resume_equals_an_uninterrupted_run(tmp_path):
    cache = tmp_path / "jax-cache"
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"

    done = _train([*TINY, "--quiet", "--out", str(a)], cache)
    assert done.returncode == 0, done.stderr[-2000:]
    # Determinism: a second process with the same seed writes the same metrics.csv, byte for byte.
    again = _train([*TINY, "--quiet", "--out", str(c)], cache)
    assert again.returncode == 0, again.stderr[-2000:]
    reference = (a / "metrics.csv").read_text()
    assert (c / "metrics.csv").read_text() == reference

    # Kill the run while it writes the checkpoint of iteration 4: the hook in mbpo_grad.checkpoint
    # holds the writer inside Orbax's temporary folder (the arrays item committed, meta not yet).
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *TINY, "--out", str(b)], cwd=REPO,
                            env=_env(cache, MBPO_GRAD_CHECKPOINT_PAUSE="4:120"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    folder = b / "ckpt"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            # (the checkpoint of iteration 2 passes through its own .tmp folder first)
            tmps = [t for t in (_tmp_dirs(folder) if folder.is_dir() else [])
                    if t.startswith("step_0000000004.")]
            if tmps and (folder / tmps[0] / "state" / "commit_success.txt").exists():
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the run ended before the kill: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.all_steps(folder) == [2]
    assert len(_tmp_dirs(folder)) == 1 and _tmp_dirs(folder)[0].startswith("step_0000000004.")
    # The run folder says the run did not finish; its metrics.csv holds the blocks done before the kill.
    assert json.loads((b / "summary.json").read_text())["status"] == "running"

    resumed = _train(["--resume", str(b)], cache)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    out = resumed.stdout
    assert "resuming from" in out
    its = re.findall(r"it\s+(\d+)/6", out)
    assert its == ["4", "6"], out               # continued after iteration 2, did not start over
    assert (b / "metrics.csv").read_text() == reference
    assert ckpt.all_steps(folder) == [4, 6] and _tmp_dirs(folder) == []  # debris cleaned by the next save
    assert json.loads((b / "config.json").read_text())["args"]["seed"] == 3


def test_x64_run_whose_updates_are_all_skipped_stops_with_exit_1(tmp_path):
    out = tmp_path / "run"
    args = ["--env", "pendulum", "--n", "4", "--num-envs", "4", "--iterations", "8", "--eval-every", "2",
            "--episode-length", "10", "--checkpoint-every", "2", "--x64", "--skip-window", "4",
            "--max-grad-norm-to-skip", "1e-30", "--quiet", "--out", str(out)]
    res = _train(args, tmp_path / "jax-cache")
    assert res.returncode == 1, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if "error:" in ln]
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith("python -m experiments.train: error: [shac] training stopped at iteration 4/8")
    assert "100% of the last 4 updates were skipped" in line and "horizon (n=4)" in line
    assert "even in float64" in line and "--x64" not in line  # already float64: not suggested
    # float64 end to end: every floating leaf of the checkpoint written at iteration 2.
    meta = ckpt.read_meta(out / "ckpt", 2)
    dtypes = {m["dtype"] for m in meta["leaves"] if m["kind"] == "jax" and m["dtype"].startswith("float")}
    assert dtypes == {"float64"}, dtypes
    assert json.loads((out / "config.json").read_text())["config"]["x64"] is True
    cols = rundir.read_metrics(str(out / "metrics.csv"))
    skipped = cols["value"][cols["metric"] == "skipped_updates"]
    assert skipped.tolist() == [1.0] * 4
    assert "stopped_at_iteration" in json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("argv, match", [
    (["--env", "nope"], "--env: unknown environment 'nope'"),
    (["--n", "-1"], "--n must be >= 1"),
    (["--n", "500"], r"horizon \(500\) must be <= episode_length \(200\)"),
    (["--num-envs", "0"], "--num-envs must be >= 1"),
    (["--iterations", "x"], "invalid int value"),
    (["--checkpoint-every", "3", "--eval-every", "2"], "--checkpoint-every must be a positive multiple of --eval-every"),
    (["--guard", "sometimes"], "--guard must be one of per_env, batch"),
    (["--max-grad-norm-to-skip", "0"], "--max-grad-norm-to-skip must be > 0"),
    (["--skip-threshold", "1.5"], r"--skip-threshold must lie in \[0, 1\)"),
    (["--skip-window", "0"], "--skip-window must be >= 1"),
    (["--fault-rate", "-0.1"], r"--fault-rate must lie in \[0, 1\]"),
    (["--resume", "/nonexistent/run"], "--resume: cannot read the run's settings"),
    (["--resume", "/nonexistent/run", "--n", "3"], "--resume takes every setting from .*; do not combine it with --n"),
])
def test_bad_input_is_one_line_and_exit_2(argv, match, capsys):
    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert re.search(match, err), err


def test_resume_refuses_a_checkpoint_from_other_settings(tmp_path, capsys):
    """A config.json edited after the checkpoint was written: the config guard names the key."""
    import jax
    from mbpo_grad.agents import shac

    run = tmp_path / "run"
    args = train.build_parser().parse_args(TINY + ["--out", str(run)])
    cfg, _ = train.config_from_args(args, train.build_parser())
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                          if k not in ("resume", "quiet", "no_tensorboard")}}))
    # A checkpoint whose guard says lam = 0.5 (it is never loaded: the config check comes first).
    saved = shac.checkpoint_config(cfg.replace(lam=0.5), jax.random.key(3), cfg.replace(lam=0.5).hparams())
    ckpt.save(str(run / "ckpt"), 2, {"x": np.zeros(1)}, config=saved)
    with pytest.raises(SystemExit) as exc:
        train.main(["--resume", str(run), "--quiet"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--resume: config:" in err and "lam" in err, err


def test_tiny_preset_is_a_short_complete_run(tmp_path):
    """``--tiny``: the main job's every step (train, evaluate, run folder) at toy size."""
    from experiments import train as train_cli

    ret = train_cli.main(["--tiny", "--quiet", "--out", str(tmp_path / "run")])
    assert np.isfinite(ret)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "finished"
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (cfg["horizon"], cfg["num_envs"], cfg["iterations"], cfg["episode_length"]) == (8, 8, 6, 32)
