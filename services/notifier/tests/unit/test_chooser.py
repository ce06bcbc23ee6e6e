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


def test_arms_are_made_on_first_sight_and_the_model_survives_a_restart() -> None:
    chooser = OfferChooser([], epsilon=0.0, learning_rate=0.1)
    x = {"tier": 1.0, "category:COFFEE": 1.0}
    for _ in range(50):
        chooser.learn_one(x, "milk", redeemed=True)
        chooser.learn_one(x, "sugar", redeemed=False)
    assert chooser.choose(x, ["sugar", "milk"]) == "milk"
    restored = OfferChooser.loads(chooser.dumps())
    assert restored.scores(x, ["milk", "sugar"]) == chooser.scores(x, ["milk", "sugar"])
    assert restored.choose(x, ["sugar", "milk"]) == "milk"


def test_the_explore_draw_is_fixed_by_the_decisions_own_random_source() -> None:
    chooser = OfferChooser([], epsilon=1.0)  # always explore: the pick is the draw's
    picks = {chooser.choose({}, ["a", "b", "c"], rng=random.Random("campaign/sale-1")) for _ in range(5)}
    assert len(picks) == 1


def test_cross_sell_candidates_are_the_strongest_matching_rules_with_distinct_products() -> None:
    from notifier.domain import Rule, cross_sell, cross_sell_candidates

    rules = [Rule(frozenset({"diapers"}), "beer", 0.6, 2.5, 0.1), Rule(frozenset({"diapers"}), "wipes", 0.7, 2.0, 0.1),
             Rule(frozenset({"diapers", "milk"}), "beer", 0.65, 2.6, 0.05), Rule(frozenset({"bread"}), "jam", 0.9, 3, 0.1),
             Rule(frozenset({"diapers"}), "milk", 0.99, 4.0, 0.1)]
    options = cross_sell_candidates(["diapers", "milk"], rules, limit=3)
    assert [r.consequent for r in options] == ["wipes", "beer"], "milk is in the basket; jam's rule does not match"
    assert options[0] == cross_sell(["diapers", "milk"], rules), "the first option is the strongest rule"
