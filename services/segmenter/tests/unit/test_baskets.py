"""Market-basket rules: what the segmenter tells a category manager, checked by hand, by brute force and on Groceries."""

from __future__ import annotations

import csv
import gzip
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from itertools import combinations
from pathlib import Path

import pytest
from segmenter.baskets import AssociationRule, BasketRules, min_basket_count, top_rules_changed

T0 = datetime(2024, 3, 4, 9, 0, tzinfo=UTC)
DATASETS = Path(__file__).resolve().parents[4].parent / "shared" / "datasets"
GROCERIES = DATASETS / "groceries.csv.gz"

# Tan, Steinbach & Kumar, "Introduction to Data Mining", table 6.1.
TEXTBOOK = [
    {"bread", "milk"},
    {"bread", "diapers", "beer", "eggs"},
    {"milk", "diapers", "beer", "cola"},
    {"bread", "milk", "diapers", "beer"},
    {"bread", "milk", "diapers", "cola"},
]

RuleKey = tuple[frozenset[str], str]


def shop(baskets: Sequence[Iterable[str]], *, max_rule_items: int = 10) -> BasketRules:
    rules = BasketRules(max_rule_items=max_rule_items)
    for number, items in enumerate(baskets):
        rules.add(f"b{number}", items, T0 + timedelta(minutes=number))
    return rules


def keyed(rules: list[AssociationRule]) -> dict[RuleKey, tuple[float, float, float]]:
    return {(r.antecedents, r.consequent): (r.support, r.confidence, r.lift) for r in rules}


def brute_force_rules(baskets: list[frozenset[str]], min_support: float, min_confidence: float,
                      max_items: int = 10) -> dict[RuleKey, tuple[float, float, float]]:
    """Apriori's answer by definition: count every sub-itemset of every basket, keep the frequent ones."""
    n = len(baskets)
    counts: Counter[frozenset[str]] = Counter()
    for basket in baskets:
        for size in range(1, min(len(basket), max_items) + 1):
            counts.update(frozenset(c) for c in combinations(sorted(basket), size))
    expected = {}
    for itemset, together in counts.items():
        if len(itemset) < 2 or together / n < min_support:
            continue
        for consequent in itemset:
            confidence = together / counts[itemset - {consequent}]
            if confidence >= min_confidence:
                expected[(itemset - {consequent}, consequent)] = (together / n, confidence,
                                                                  confidence / (counts[frozenset([consequent])] / n))
    return expected


def assert_same_rules(got: list[AssociationRule], expected: dict[RuleKey, tuple[float, float, float]]) -> None:
    assert keyed(got).keys() == expected.keys()
    for key, (support, confidence, lift) in keyed(got).items():
        assert (support, confidence) == expected[key][:2]
        assert lift == pytest.approx(expected[key][2], rel=1e-12)


# -- by hand ---------------------------------------------------------------------------------


def test_textbook_rule_has_the_hand_computed_support_confidence_and_lift() -> None:
    rules = keyed(shop(TEXTBOOK).rules(min_support=0.4, min_confidence=0.6))
    support, confidence, lift = rules[(frozenset({"milk", "diapers"}), "beer")]
    assert support == 2 / 5  # baskets 3 and 4 hold all three
    assert confidence == pytest.approx(2 / 3)  # of the 3 baskets with milk and diapers
    assert lift == pytest.approx((2 / 3) / (3 / 5))  # beer is in 3 of 5 baskets
    assert rules[(frozenset({"diapers"}), "beer")] == pytest.approx((3 / 5, 3 / 4, 1.25))
    assert (frozenset({"bread", "milk", "diapers"}), "beer") not in rules  # in 1 basket of 5: below 0.4


def test_certain_rules_come_strongest_first_and_ties_break_on_the_items() -> None:
    rules = shop(TEXTBOOK).rules(min_support=0.4, min_confidence=1.0)
    assert [(sorted(r.antecedents), r.consequent) for r in rules] == [
        (["beer"], "diapers"),  # same lift and confidence as the rest, but in 3 baskets, not 2
        (["beer", "bread"], "diapers"),
        (["beer", "milk"], "diapers"),
        (["cola"], "diapers"),
        (["cola"], "milk"),
        (["cola", "diapers"], "milk"),
        (["cola", "milk"], "diapers"),
    ]
    assert {(r.confidence, r.lift) for r in rules} == {(1.0, 1.25)}
    assert [r.baskets for r in rules] == [3, 2, 2, 2, 2, 2, 2]


def test_filters_by_lift_antecedent_and_limit() -> None:
    textbook = shop(TEXTBOOK)
    everything = textbook.rules(min_support=0.2, min_confidence=0.0)
    assert all(r.lift >= 1.2 for r in textbook.rules(0.2, 0.0, min_lift=1.2))
    assert len(textbook.rules(0.2, 0.0, min_lift=1.2)) == sum(r.lift >= 1.2 for r in everything) > 0
    with_cola = textbook.rules(0.2, 0.0, antecedent=frozenset({"cola"}))
    assert with_cola == [r for r in everything if "cola" in r.antecedents]
    assert textbook.rules(0.2, 0.0, limit=3) == everything[:3]


def test_bought_with_lists_the_most_frequent_companions_first() -> None:
    companions = shop(TEXTBOOK).bought_with("beer")
    assert [(c.sku, c.baskets) for c in companions] == [("diapers", 3), ("bread", 2), ("milk", 2), ("eggs", 1), ("cola", 1)]
    diapers = companions[0]
    assert (diapers.support, diapers.confidence, diapers.lift) == pytest.approx((3 / 5, 3 / 3, (3 / 3) / (4 / 5)))
    # eggs before cola: both once with beer, but eggs are rarer, so that once says more (lift)
    assert companions[3].lift > companions[4].lift
    assert shop(TEXTBOOK).bought_with("beer", limit=1) == companions[:1]
    assert shop(TEXTBOOK).bought_with("caviar") == []


def test_a_redelivered_sale_counts_once_and_a_voided_sale_not_at_all() -> None:
    textbook = shop(TEXTBOOK)
    before = textbook.rules(0.2, 0.5)
    assert textbook.add("b1", {"bread", "diapers", "beer", "eggs"}, T0) is False
    assert textbook.rules(0.2, 0.5) == before
    assert textbook.add("void-me", {"caviar", "champagne"}, T0) is True
    assert textbook.remove("void-me") is True and textbook.remove("void-me") is False
    assert textbook.rules(0.2, 0.5) == before and len(textbook) == 5
    for number in range(300):  # many voids, then the oldest real baskets still expire
        textbook.add(f"v{number}", {"caviar"}, T0 - timedelta(days=1))
        textbook.remove(f"v{number}")
    assert textbook.expire_before(T0 + timedelta(minutes=2)) == 2
    assert textbook.rules(0.2, 0.5) == shop(TEXTBOOK[2:]).rules(0.2, 0.5)


def test_the_window_forgets_old_baskets_and_refuses_ones_that_arrive_too_late() -> None:
    hourly = BasketRules(window=timedelta(hours=1))
    hourly.add("morning", {"coffee", "croissant"}, T0)
    hourly.add("noon", {"coffee", "sandwich"}, T0 + timedelta(minutes=90))
    assert "morning" not in hourly and hourly.baskets_with("croissant") == 0
    assert hourly.add("late", {"tea"}, T0 + timedelta(minutes=29)) is False  # before 90 - 60 minutes
    assert hourly.add("slightly late", {"tea"}, T0 + timedelta(minutes=31)) is True
    assert hourly.expire_before(T0 + timedelta(minutes=60)) == 1 and len(hourly) == 1


def test_support_threshold_is_the_float_comparison_count_over_baskets() -> None:
    assert min_basket_count(0.001, 9_835) == 10  # 9.835 baskets -> 10
    assert min_basket_count(0.001, 10_000) == 10  # exactly 0.001 counts
    assert min_basket_count(0.4, 5) == 2
    assert min_basket_count(1e-9, 5) == 1


def test_top_rules_changed_looks_at_which_rules_and_their_rank_not_their_figures() -> None:
    textbook = shop(TEXTBOOK)
    top = textbook.rules(0.4, 0.6, limit=3)
    assert not top_rules_changed(top, [replace(r, support=r.support / 2, baskets=1) for r in top])
    assert top_rules_changed(top, list(reversed(top)))
    assert top_rules_changed(top, top[:2])


def test_rejects_naive_event_times_and_thresholds_out_of_range() -> None:
    with pytest.raises(ValueError):
        BasketRules().add("b", {"milk"}, datetime(2024, 1, 1))
    with pytest.raises(ValueError):
        shop(TEXTBOOK).rules(min_support=0.0, min_confidence=0.5)


# -- incremental equals batch -----------------------------------------------------------------


def test_rules_after_every_change_equal_a_batch_apriori_over_the_window() -> None:
    rng = random.Random(20240304)
    products = [f"sku{n}" for n in range(12)]
    popularity = [1.0 / (rank + 1) for rank in range(len(products))]
    window = timedelta(hours=3)
    rules = BasketRules(window=window)
    in_window: dict[str, tuple[frozenset[str], datetime]] = {}
    latest: datetime | None = None
    for step in range(400):
        at = T0 + timedelta(minutes=3 * step + rng.randint(-60, 5))  # some sales arrive late
        action = rng.random()
        if action < 0.1 and in_window:
            voided = rng.choice(sorted(in_window))
            assert rules.remove(voided)
            del in_window[voided]
        else:
            basket_id = rng.choice(sorted(in_window)) if action < 0.15 and in_window else f"sale{step}"
            items = frozenset(rng.choices(products, popularity, k=rng.randint(1, 7)))
            accepted = rules.add(basket_id, items, at)
            assert accepted == (basket_id not in in_window and (latest is None or at >= latest - window))
            if accepted:
                in_window[basket_id] = (items, at)
                latest = at if latest is None else max(latest, at)
                in_window = {b: (i, t) for b, (i, t) in in_window.items() if t >= latest - window}
        assert len(rules) == len(in_window)
        if step % 8 == 0:
            window_baskets = [items for items, _ in in_window.values()]
            for min_support, min_confidence in ((0.1, 0.5), (0.03, 0.2)):
                assert_same_rules(rules.rules(min_support, min_confidence),
                                  brute_force_rules(window_baskets, min_support, min_confidence))


def test_rule_length_cap_drops_exactly_the_longer_rules() -> None:
    baskets = [{"a", "b", "c", "d"}] * 3 + [{"a", "b"}, {"c", "d"}]
    capped = shop(baskets, max_rule_items=3).rules(0.5, 0.5)
    assert capped and max(len(r.antecedents) + 1 for r in capped) == 3
    assert_same_rules(capped, brute_force_rules([frozenset(b) for b in baskets], 0.5, 0.5, max_items=3))


def test_a_restored_snapshot_gives_the_same_rules_and_keeps_its_window() -> None:
    hourly = BasketRules(window=timedelta(hours=1), max_rule_items=4)
    for number, items in enumerate(TEXTBOOK):
        hourly.add(f"b{number}", items, T0 + timedelta(minutes=10 * number))
    restored = BasketRules.from_state(hourly.to_state())
    assert restored.rules(0.2, 0.3) == hourly.rules(0.2, 0.3) != []
    assert restored.bought_with("milk") == hourly.bought_with("milk")
    assert (restored.window, restored.max_rule_items, restored.latest_at) == (timedelta(hours=1), 4, T0 + timedelta(minutes=40))
    for one in (hourly, restored):
        one.add("later", {"beer", "diapers"}, T0 + timedelta(minutes=75))  # evicts b0 and b1
    assert len(restored) == len(hourly) == 4
    assert restored.rules(0.2, 0.3) == hourly.rules(0.2, 0.3)


# -- the real Groceries month -----------------------------------------------------------------


@pytest.fixture(scope="module")
def groceries() -> list[frozenset[str]]:
    if not GROCERIES.exists():
        pytest.skip(f"the team's datasets are not at {DATASETS} (see shared/datasets/README.md)")
    baskets: dict[str, set[str]] = {}
    with gzip.open(GROCERIES, "rt", newline="") as rows:
        for row in csv.DictReader(rows):
            baskets.setdefault(row["basket_id"], set()).add(row["item"])
    return [frozenset(items) for items in baskets.values()]


def test_groceries_gives_the_5668_rules_arules_publishes(groceries: list[frozenset[str]]) -> None:
    assert len(groceries) == 9_835
    rules = shop(list(groceries)).rules(min_support=0.001, min_confidence=0.5)
    assert len(rules) == 5_668
    # arules' summary(rules): rule length distribution (lhs + rhs)
    assert Counter(len(r.antecedents) + 1 for r in rules) == {2: 11, 3: 1461, 4: 3211, 5: 939, 6: 46}
    # arules' inspect(head(sort(rules, by = "lift"), 3)), printed to 7 digits
    assert [(sorted(r.antecedents), r.consequent) for r in rules[:3]] == [
        (["Instant food products", "soda"], "hamburger meat"),
        (["popcorn", "soda"], "salty snack"),
        (["baking powder", "flour"], "sugar"),
    ]
    assert (rules[0].support, rules[0].confidence, rules[0].lift) == pytest.approx((0.001220132, 0.6315789, 18.99565), rel=1e-6)
    assert (rules[2].support, rules[2].confidence, rules[2].lift) == pytest.approx((0.001016777, 0.5555556, 16.40807), rel=1e-6)
    by_key = keyed(rules)
    assert by_key[(frozenset({"rice", "sugar"}), "whole milk")] == pytest.approx((0.001220132, 1.0, 3.913649), rel=1e-6)
    # direct counting over the baskets, for one rule
    holding = [b for b in groceries if {"citrus fruit", "root vegetables", "tropical fruit"} <= b]
    with_milk = [b for b in holding if "whole milk" in b]
    milk = sum("whole milk" in b for b in groceries)
    got = by_key[(frozenset({"citrus fruit", "root vegetables", "tropical fruit"}), "whole milk")]
    assert got == pytest.approx((len(with_milk) / 9_835, len(with_milk) / len(holding),
                                 len(with_milk) / len(holding) / (milk / 9_835)), rel=1e-12)


def test_groceries_after_evicting_half_equals_a_fresh_count_of_the_other_half(groceries: list[frozenset[str]]) -> None:
    month = shop(list(groceries))
    half = len(groceries) // 2
    assert month.expire_before(T0 + timedelta(minutes=half)) == half
    assert month.rules(0.002, 0.4) == shop(list(groceries[half:])).rules(0.002, 0.4) != []
    assert month.bought_with("whole milk") == shop(list(groceries[half:])).bought_with("whole milk")


def test_a_threshold_too_low_for_the_window_is_refused_not_mined_to_exhaustion() -> None:
    from segmenter.baskets import TooManyItemsets

    rules = BasketRules(max_itemsets=10_000)
    order = [f"sku{i}" for i in range(40)]  # the same 40-line wholesale order, twice
    rules.add("a", order, T0)
    rules.add("b", order, T0)
    with pytest.raises(TooManyItemsets, match="raise min_support"):
        rules.rules(0.5, 0.5)


def test_max_items_bounds_the_rules_and_a_deeper_cache_does_not_leak_longer_ones() -> None:
    rules = BasketRules()
    for i in range(20):
        rules.add(f"b{i}", ["a", "b", "c", "d"], T0)
    full = rules.rules(0.5, 0.5)
    assert max(len(r.antecedents) for r in full) == 3
    short = rules.rules(0.5, 0.5, max_items=3)  # served from the deeper cache, filtered
    assert short and max(len(r.antecedents) for r in short) == 2
    assert {(r.antecedents, r.consequent) for r in short} == {(r.antecedents, r.consequent) for r in full
                                                               if len(r.antecedents) <= 2}


def test_rules_mined_without_keeping_the_itemsets_are_the_same_and_leave_nothing_cached(
        groceries: list[frozenset[str]]) -> None:
    month = shop(list(groceries))
    uncached = month.rules(0.002, 0.4, max_items=3, keep_itemsets=False)
    assert month._mined is None  # nothing held for the next question
    assert uncached == month.rules(0.002, 0.4, max_items=3) != []
    assert month._mined is not None


def test_a_refused_window_is_mined_again_only_once_a_tenth_of_it_is_new() -> None:
    from segmenter.baskets import worth_mining_again

    window = BasketRules()
    for i in range(100):
        window.add(f"b{i}", ["a", "b"], T0 + timedelta(minutes=i))
    assert worth_mining_again(window, None)
    refused_at = window.arrivals
    for i in range(100, 110):
        window.add(f"b{i}", ["a", "b"], T0 + timedelta(minutes=i))
    assert not worth_mining_again(window, refused_at)  # 10 new of 110
    window.add("b110", ["a", "b"], T0 + timedelta(minutes=110))
    assert worth_mining_again(window, refused_at)  # 11 new of 111


def test_each_refusal_in_a_row_doubles_the_new_share_it_waits_for_up_to_the_whole_window() -> None:
    from segmenter.baskets import worth_mining_again

    window = BasketRules(window=timedelta(minutes=100))
    for i in range(100):
        window.add(f"b{i}", ["a", "b"], T0 + timedelta(minutes=i))
    refused_at, minute = window.arrivals, 100
    waits = {}
    for refusals in (1, 2, 3, 4, 5, 9):
        new = 0
        while not worth_mining_again(window, refused_at, refusals):
            new, minute = new + 1, minute + 1
            window.add(f"b{minute}", ["a", "b"], T0 + timedelta(minutes=minute))
        waits[refusals] = new
        refused_at = window.arrivals
    # the window holds ~100 baskets throughout (a basket a minute, 100 minutes): 10, 20, 40, 80, then all of it
    assert [waits[r] for r in (1, 2, 3, 4)] == [10, 20, 40, 80]
    assert waits[5] == waits[9] == len(window)


def test_rules_mined_from_a_windows_item_lists_equal_the_windows_own(groceries: list[frozenset[str]]) -> None:
    from segmenter.baskets import mine_rules

    month = shop(list(groceries))
    expected = month.rules(0.002, 0.4, limit=50, max_items=3)
    assert mine_rules(month.item_lists(), 0.002, 0.4, 0.0, None, 50, 3) == expected != []
    assert mine_rules(month.item_lists(), 0.002, 0.4) == month.rules(0.002, 0.4)


def test_a_refusal_mined_elsewhere_is_remembered_until_the_window_changes() -> None:
    from segmenter.baskets import TooManyItemsets, mine_rules

    rules = BasketRules(max_itemsets=10_000)
    order = [f"sku{i}" for i in range(40)]
    rules.add("a", order, T0)
    rules.add("b", order, T0)
    assert rules.known_refusal(0.5, 3) is None
    with pytest.raises(TooManyItemsets) as refused:
        mine_rules(rules.item_lists(), 0.5, 0.5, max_items=3, max_itemsets=rules.max_itemsets)
    rules.remember_refusal(rules.version, refused.value, max_items=3)
    known = rules.known_refusal(0.5, 3)
    assert known is not None and known.min_count == refused.value.min_count == 1
    assert rules.known_refusal(0.5, 4) is not None  # deeper is refused too
    assert rules.known_refusal(0.5, 2) is None  # shallower may fit: it is mined
    rules.add("c", ["other"], T0)
    assert rules.known_refusal(0.5, 3) is None  # a new basket: a new window
