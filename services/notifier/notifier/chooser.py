"""Which offer to make when several are eligible: an online contextual bandit on river models.

One river `LogisticRegression` per offer (arm), each predicting "this member redeems this offer" from
`features(...)`; epsilon-greedy over their predictions. `learn_one` after each known outcome
(redeemed or expired). Pure: no I/O, no clock; the random source is passed in so runs repeat.
Not yet wired into the live trigger path (the cross-sell trigger takes the strongest rule today);
`bench/offer_chooser.py` measures it beside random choice.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence

from river import linear_model, optim, preprocessing


def features(category_shares: Mapping[str, float], visits: int) -> dict[str, float]:
    """A member's habits as model input: share of items per category, and how often they shop."""
    out = {f"share:{k}": float(v) for k, v in category_shares.items()}
    out["log_visits"] = math.log1p(visits)
    return out


class OfferChooser:
    def __init__(self, arms: Sequence[str], *, epsilon: float = 0.1, learning_rate: float = 0.05,
                 rng: random.Random | None = None) -> None:
        self.arms = list(arms)
        self.epsilon = epsilon
        self.rng = rng or random.Random(0)
        self.models = {arm: preprocessing.StandardScaler() | linear_model.LogisticRegression(
            optimizer=optim.SGD(learning_rate), intercept_lr=learning_rate) for arm in self.arms}

    def scores(self, x: Mapping[str, float], eligible: Sequence[str] | None = None) -> dict[str, float]:
        arms = list(eligible) if eligible is not None else self.arms
        return {arm: float(self.models[arm].predict_proba_one(dict(x)).get(True, 0.0)) for arm in arms}

    def choose(self, x: Mapping[str, float], eligible: Sequence[str] | None = None) -> str:
        arms = list(eligible) if eligible is not None else self.arms
        if self.rng.random() < self.epsilon:
            return self.rng.choice(arms)
        scores = self.scores(x, arms)
        return max(arms, key=lambda arm: (scores[arm], arm))

    def learn_one(self, x: Mapping[str, float], arm: str, redeemed: bool) -> None:
        self.models[arm].learn_one(dict(x), redeemed)
