"""Monte-Carlo checks shared by the estimator tests (linear-Gaussian, tabular, score function)."""
import numpy as np


def error_shrinks(g, target, n_small):
    """Whether the error of the full-sample mean of ``g`` [N, ...] is below the RMS error of the
    means of disjoint ``n_small``-sample subsets (expected ratio √(n_small / N)): a robust check
    that the Monte-Carlo error shrinks with N. Returns ``(ok, (err_large, rms_small))``."""
    g = np.asarray(g)
    k = g.shape[0] // n_small
    sub = g[: k * n_small].reshape(k, n_small, -1).mean(1)
    rms_small = float(np.sqrt(np.mean(np.sum((sub - np.reshape(target, -1)) ** 2, -1))))
    err_large = float(np.linalg.norm(g.reshape(g.shape[0], -1).mean(0) - np.reshape(target, -1)))
    return err_large < rms_small, (err_large, rms_small)
