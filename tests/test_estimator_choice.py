"""``experiments.estimator_choice --tiny``: every code path of the estimator comparison, JSON and PNG."""
import json

from experiments import estimator_choice
from mbpo_grad.envs import quantized


def test_tiny_run_writes_the_table_alpha_and_the_optimum(tmp_path):
    out = tmp_path / "ec"
    result = estimator_choice.main(["--tiny", "--out", str(out)])
    saved = json.loads((out / "estimator_choice.json").read_text())
    env = saved["envs"]["quantized_thruster"]
    assert abs(env["optimum"] - float(quantized.mean_optimal_return())) < 1e-6
    assert set(env["arms"]) == {"auto", "ppo"}
    auto = env["arms"]["auto"]
    assert len(auto["alpha"]) == 3 and all(0.0 <= a <= 1.0 for a in auto["alpha"])
    # every pathwise sample is exactly zero on the thruster: all envs fall back, pathwise weight 0
    assert all(f == 4 for f in auto["fallback_envs"]) and all(a == 0.0 for a in auto["alpha"])
    # the pathwise step has nothing to take (its gradient is 0); the PPO steps move the policy
    assert env["arms"]["auto"]["grad_norm"] == 0.0 and env["arms"]["auto"]["score_kl"] > 0.0
    assert "| quantized_thruster |" in saved["table"]
    assert (out / "estimator_choice.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["seeds"] == [0, 1]
