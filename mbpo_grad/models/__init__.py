"""Learned dynamics models: bundles of pure functions usable as the engine's ``step``.

    model = mg.models.gaussian_ensemble(obs_dim, act_dim, ensemble_size=5, elites=3)
    params = model.init(key)
    params, metrics = model.fit(params, {"obs": s, "action": a, "reward": r, "next_obs": s_next}, key)
    s_next, r = model.sample(params, s, a, xi)             # xi = model.sample_noise(key)
    xi = model.infer_noise(params, s, a, s_next, r, member) # exact inverse for that elite slot
    step, reward = model.as_step(params), model.as_reward() # for mg.pathwise_objective on ModelState
"""
from mbpo_grad.models.ensemble import (
    GaussianEnsemble,
    ModelParams,
    ModelState,
    Standardizer,
    gaussian_ensemble,
)

__all__ = ["GaussianEnsemble", "ModelParams", "ModelState", "Standardizer", "gaussian_ensemble"]
