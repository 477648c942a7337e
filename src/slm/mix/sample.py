"""Mixtures to try: Dirichlet draws centred on the corpus's natural token distribution (RegMix)."""

from __future__ import annotations

import numpy as np


def dirichlet_alpha(natural: np.ndarray, concentration: float) -> np.ndarray:
    """alpha = concentration x D x natural: the mean is the natural mixture; concentration 1 spreads like a
    flat Dirichlet over D domains, larger values stay closer to natural."""
    return np.maximum(concentration * len(natural) * natural, 1e-3)


def sample_mixtures(natural: np.ndarray, n: int, concentration: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.dirichlet(dirichlet_alpha(natural, concentration), size=n)
