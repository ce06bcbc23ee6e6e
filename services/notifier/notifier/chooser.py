"""Which offer to make when several are eligible: an online contextual bandit on river models.

One river `LogisticRegression` per offer (arm), each predicting "this member redeems this offer" from
`features(...)`; epsilon-greedy over their predictions. `learn_one` after each known outcome
(redeemed or expired). Pure: no I/O, no clock; the random source is passed in so runs repeat.
Live, a cross-sell campaign with `chooser: learned` uses it among its strongest matching rules (arms
are the offered SKUs, made as they first appear); `bench/offer_chooser.py` measures it beside random
choice on Complete Journey.
"""

from __future__ import annotations

import math
import pickle
import random
from collections.abc import Mapping, Sequence
from typing import Any

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
        self.learning_rate = learning_rate
        self.models: dict[str, Any] = {}
        for arm in self.arms:
            self._model(arm)

    def _model(self, arm: str) -> Any:
        """The arm's model, made on first sight (live, the offered SKUs are not known up front)."""
        model = self.models.get(arm)
        if model is None:
            model = self.models[arm] = preprocessing.StandardScaler() | linear_model.LogisticRegression(
                optimizer=optim.SGD(self.learning_rate), intercept_lr=self.learning_rate)
            if arm not in self.arms:
                self.arms.append(arm)
        return model

    def scores(self, x: Mapping[str, float], eligible: Sequence[str] | None = None) -> dict[str, float]:
        arms = list(eligible) if eligible is not None else self.arms
        return {arm: float(self._model(arm).predict_proba_one(dict(x)).get(True, 0.0)) for arm in arms}

    def choose(self, x: Mapping[str, float], eligible: Sequence[str] | None = None, *,
               rng: random.Random | None = None) -> str:
        """`rng`: a per-decision random source (live: seeded from the triggering event, so the explore
        draw is the same whenever the same sale is decided)."""
        arms = list(eligible) if eligible is not None else self.arms
        draw = rng or self.rng
        if draw.random() < self.epsilon:
            return draw.choice(arms)
        scores = self.scores(x, arms)
        return max(arms, key=lambda arm: (scores[arm], arm))

    def learn_one(self, x: Mapping[str, float], arm: str, redeemed: bool) -> None:
        self._model(arm).learn_one(dict(x), redeemed)

    def dumps(self) -> bytes:
        return pickle.dumps({"arms": self.arms, "models": self.models, "epsilon": self.epsilon,
                             "learning_rate": self.learning_rate})

    @classmethod
    def loads(cls, state: bytes) -> OfferChooser:
        held = pickle.loads(state)  # our own table's bytes, written by `dumps`
        chooser = cls([], epsilon=held["epsilon"], learning_rate=held["learning_rate"])
        chooser.arms, chooser.models = list(held["arms"]), dict(held["models"])
        return chooser
