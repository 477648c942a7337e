"""From proxies to a mixture: fit mixture weights -> target loss, check the fit on held-out proxies, then
search many simulated mixtures with the fitted model (RegMix: LightGBM, a linear model as baseline)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import pearsonr, spearmanr

from slm.errors import SlmError
from slm.mix.sample import sample_mixtures


def min_proxies(n_domains: int) -> int:
    """Enough points to fit D weights and still hold some out."""
    return 2 * (n_domains + 1)


def _lgbm(seed: int):
    from lightgbm import LGBMRegressor

    # Few, small trees and tiny leaves: a few dozen proxies is all the data there is.
    return LGBMRegressor(
        n_estimators=400,
        learning_rate=0.03,
        num_leaves=8,
        min_child_samples=2,
        min_split_gain=0.0,
        subsample=0.9,
        subsample_freq=1,
        colsample_bytree=1.0,
        reg_lambda=1e-3,
        random_state=seed,
        verbose=-1,
    )


def _linear():
    from sklearn.linear_model import LinearRegression

    return LinearRegression()


MODELS = {"lightgbm": _lgbm, "linear": lambda seed: _linear()}


@dataclass
class Fit:
    holdout: dict[str, dict[str, float]]  # model -> {"spearman", "pearson"} on held-out proxies
    predicted: dict[str, list[float]]  # model -> prediction for every proxy (held-out ones out of sample)
    held_out: list[int]
    models: dict  # refitted on all proxies


def fit(X: np.ndarray, y: np.ndarray, holdout: float, seed: int) -> Fit:
    n, d = X.shape
    if n < min_proxies(d):
        raise SlmError(
            f"the regression needs at least {min_proxies(d)} finished proxies for {d} domains (have {n}); "
            "raise mix.proxies"
        )
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_out = max(3, round(n * holdout))
    out, inside = np.sort(order[:n_out]), np.sort(order[n_out:])
    scores, preds, models = {}, {}, {}
    for name, make in MODELS.items():
        m = make(seed).fit(X[inside], y[inside])
        p_out = m.predict(X[out])
        varied = np.std(p_out) > 0 and np.std(y[out]) > 0  # a constant prediction has no correlation
        sp = spearmanr(p_out, y[out]).statistic if varied else float("nan")
        pe = pearsonr(p_out, y[out]).statistic if varied else float("nan")
        scores[name] = {"spearman": float(sp), "pearson": float(pe)}
        full = make(seed).fit(X, y)
        p = full.predict(X)
        p[out] = p_out  # out-of-sample where it was held out
        preds[name] = p.tolist()
        models[name] = full
    return Fit(scores, preds, out.tolist(), models)


def search(model, natural: np.ndarray, samples: int, concentration: float, top_k: int, seed: int) -> tuple:
    """Score `samples` simulated mixtures and average the top_k predicted best (lowest loss)."""
    cand = sample_mixtures(natural, samples, concentration, seed + 1)
    pred = model.predict(cand)
    best = np.argsort(pred)[:top_k]
    chosen = cand[best].mean(axis=0)
    return chosen / chosen.sum(), float(pred[best].mean()), float(model.predict(chosen[None])[0])
