"""The offer chooser learns who redeems what, online, and beats random choice on a known preference."""

from __future__ import annotations

import random

from notifier.chooser import OfferChooser, features


def test_features_are_shares_and_log_visits() -> None:
    x = features({"beer": 0.25, "wine": 0.75}, visits=0)
    assert x == {"share:beer": 0.25, "share:wine": 0.75, "log_visits": 0.0}


def test_it_learns_to_offer_what_each_kind_of_member_redeems() -> None:
    rng = random.Random(3)
    chooser = OfferChooser(["beer", "wine", "tea"], epsilon=0.1, learning_rate=0.1, rng=random.Random(4))

    def member() -> tuple[dict[str, float], str]:
        likes = rng.choice(["beer", "wine", "tea"])
        shares = {arm: (0.8 if arm == likes else 0.1) for arm in ("beer", "wine", "tea")}
        return features(shares, visits=rng.randint(1, 20)), likes

    for _ in range(1500):
        x, likes = member()
        arm = chooser.choose(x)
        chooser.learn_one(x, arm, redeemed=arm == likes and rng.random() < 0.9)
    chooser.epsilon = 0.0
    trials = [member() for _ in range(300)]
    right = sum(chooser.choose(x) == likes for x, likes in trials)
    assert right / len(trials) > 0.8, right  # random choice gets a third
    assert chooser.choose(trials[0][0], eligible=["tea"]) == "tea", "only eligible offers are chosen"
