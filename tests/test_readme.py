"""The README's custom-simulator example runs as printed and improves the objective."""
import pathlib
import re

import jax
import jax.numpy as jnp

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _example_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    examples = [b for b in blocks if "def step" in b and "for i in range" in b]
    assert len(examples) == 1, "README must hold exactly one custom-simulator example"
    return examples[0]


def test_readme_example_trains():
    src = _example_source()
    assert len(src.strip().splitlines()) <= 30
    src = src.replace("range(200)", "range(60)")
    ns: dict = {}
    exec(compile(src, "README.md", "exec"), ns)
    mg, policy, step, reward = ns["mg"], ns["policy"], ns["step"], ns["reward"]
    s0 = jax.random.normal(jax.random.PRNGKey(1), (256, 2))
    xi = jnp.zeros((50, 256, 1))

    def J(w):
        return mg.pathwise_objective(policy, w, step, reward, s0, horizon=50, gamma=0.99, dynamics_noise=xi)

    assert float(J(ns["w"])) > 1.5 * float(J(jnp.zeros(2)))  # returns are negative: less cost after training
