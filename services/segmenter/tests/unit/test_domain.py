"""The segmenter's decisions: value tiers, personas, hysteresis, clusters, descriptions, product figures."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from crm_shared.events import MemberProfileUpdated, VisitRhythm
from segmenter import domain
from segmenter.churn import ChurnEstimate
from segmenter.clusters import OnlineClusters

AS_OF = datetime(2011, 6, 1, 12, tzinfo=UTC)
POPULATION = domain.Population(recency=(10, 30, 60, 120), frequency=(1, 2, 4, 8), monetary=(100, 300, 800, 2000),
                               basket_value_median=50.0, basket_size_p80=30.0, basket_size_median=12.0, members=1000)


def profile(**changes: object) -> MemberProfileUpdated:
    base: dict[str, object] = dict(
        member_id="m1", as_of=AS_OF, first_purchase_at=AS_OF - timedelta(days=200), last_purchase_at=AS_OF - timedelta(days=3),
        recency_days=3.0, frequency=10, returns=0, monetary=Decimal("900"), average_basket_value=Decimal("90"),
        average_basket_size=10.0, returns_rate=0.0, discount_share=0.0, preferred_store="s1",
        hour_of_day={10: 5, 18: 5}, weekday={0: 4, 5: 6}, visit_rhythm=VisitRhythm(intervals=9, mean_days=20.0,
                                                                                   spread_days=3.0, days_overdue=None),
        tier="silver", points_balance=0)
    base.update(changes)
    return MemberProfileUpdated.model_validate(base)


def facts(**changes: object) -> domain.PersonaFacts:
    base: dict[str, object] = dict(dormant=False, days_since_first=200.0, visits=10, discount_share=0.0,
                                   top_brand_share=0.0, basket_size=10.0, basket_value=60.0, interval_days=20.0,
                                   weekend_share=0.2)
    base.update(changes)
    return domain.PersonaFacts(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(("r", "f", "tier"), [
    (5, 5, "champions"), (5, 4, "champions"), (4, 5, "loyal"), (3, 4, "loyal"), (5, 2, "potential_loyalist"),
    (4, 3, "potential_loyalist"), (5, 1, "new"), (4, 1, "promising"), (3, 3, "need_attention"),
    (3, 1, "about_to_sleep"), (2, 5, "cant_lose"), (1, 4, "at_risk"), (2, 3, "at_risk"), (2, 2, "hibernating"),
    (1, 2, "hibernating"), (2, 1, "hibernating"), (1, 1, "lost"),
])
def test_rfm_map_names_every_cell(r: int, f: int, tier: str) -> None:
    assert domain.value_tier(r, f) == tier


def test_every_cell_of_the_map_has_a_known_name() -> None:
    assert {domain.value_tier(r, f) for r in range(1, 6) for f in range(1, 6)} == set(domain.VALUE_TIERS)


def test_quintile_scores_and_recency_runs_the_other_way() -> None:
    cuts = (10, 20, 30, 40)
    assert [domain.quintile_score(v, cuts) for v in (5, 10, 11, 25, 35, 99)] == [1, 1, 2, 3, 4, 5]
    assert domain.quintile_score(5, cuts, lower_is_better=True) == 5
    assert domain.quintile_score(99, cuts, lower_is_better=True) == 1
    assert domain.quintile_score(7, ()) == 3


def test_dead_band_keeps_a_member_on_a_boundary_and_lets_a_clear_move_through() -> None:
    cuts = (100, 200, 300, 400)
    # 205 is just over the 200 cut: a member holding 2 keeps it, a new member gets 3
    assert domain.sticky_score(205, cuts, 2, band=0.05) == 2
    assert domain.sticky_score(205, cuts, None, band=0.05) == 3
    assert domain.sticky_score(260, cuts, 2, band=0.05) == 3
    # flip-flopping around the cut does not flip the score
    held = 2
    for value in (199, 203, 198, 204, 201):
        held = domain.sticky_score(value, cuts, held, band=0.05)
    assert held == 2


def test_population_cut_points_are_quintiles() -> None:
    rows = [(float(i), i, float(i * 10), 5.0, float(i % 7)) for i in range(1, 101)]
    population = domain.population_of(rows)
    assert population.members == 100
    assert population.recency == pytest.approx((20.8, 40.6, 60.4, 80.2))
    assert population.basket_value_median == 5.0
    assert domain.population_of([]).members == 0


def test_personas_by_priority_and_with_exit_thresholds() -> None:
    assert domain.persona_matches(facts(dormant=True, discount_share=0.5), POPULATION, None)[0] == "dormant"
    assert domain.persona_matches(facts(days_since_first=10, visits=1), POPULATION, None)[0] == "new_member"
    assert domain.persona_matches(facts(discount_share=0.31), POPULATION, None)[0] == "price_sensitive"
    # 0.27 is below the entry (0.30) but above the exit (0.25): who holds it keeps it
    assert domain.persona_matches(facts(discount_share=0.27), POPULATION, None)[0] == "regular"
    assert domain.persona_matches(facts(discount_share=0.27), POPULATION, "price_sensitive")[0] == "price_sensitive"
    assert domain.persona_matches(facts(top_brand_share=0.6), POPULATION, None)[0] == "brand_loyal"
    assert domain.persona_matches(facts(basket_size=40, interval_days=21), POPULATION, None)[0] == "bulk_stocker"
    assert domain.persona_matches(facts(interval_days=3, basket_value=20), POPULATION, None)[0] == "frequent_small_basket"
    assert domain.persona_matches(facts(weekend_share=0.7, basket_size=15), POPULATION, None)[0] == "weekend_family"
    assert domain.persona_matches(facts(), POPULATION, None) == ["regular"]


def test_features_are_finite_numbers_for_every_feature() -> None:
    feats = domain.features(profile())
    assert set(feats) == set(domain.FEATURES)
    assert feats["weekend_share"] == pytest.approx(0.6)
    assert feats["evening_share"] == pytest.approx(0.5)
    one_visit = domain.features(profile(visit_rhythm=VisitRhythm(intervals=0, mean_days=0, spread_days=0, days_overdue=None)))
    assert one_visit["log_interval_days"] > 0  # a neutral gap, not zero


def test_purchase_summary_speaks_the_churn_models_terms() -> None:
    summary = domain.purchase_summary(profile(), AS_OF)
    assert summary is not None
    assert summary.repeat_visits == 9
    assert summary.recency_days == pytest.approx(197)
    assert summary.age_days == pytest.approx(200)
    assert domain.purchase_summary(profile(first_purchase_at=None, last_purchase_at=None), AS_OF) is None


def test_classify_reports_each_change_with_a_reason() -> None:
    churn = ChurnEstimate(p_active=0.1, expected_next_visit_days=None, expected_visits=0.0, dormant=True)
    first = domain.classify(current=domain.MemberSegments(), recency_days=3, visits=10, monetary=2500,
                            facts=facts(), population=POPULATION, cluster=2, churn=None, band=0.05)
    assert first.segments.value_tier == "champions"
    assert {c.dimension for c in first.changes} == {"value_tier", "persona", "cluster"}
    again = domain.classify(current=first.segments, recency_days=4, visits=10, monetary=2500, facts=facts(),
                            population=POPULATION, cluster=2, churn=None, band=0.05)
    assert again.changes == []
    lapsed = domain.classify(current=first.segments, recency_days=200, visits=10, monetary=2500,
                             facts=facts(dormant=True), population=POPULATION, cluster=2, churn=churn, band=0.05)
    dimensions = {c.dimension: c for c in lapsed.changes}
    assert dimensions["value_tier"].new == "cant_lose"
    assert dimensions["persona"].new == "dormant" and "P(active) 0.10" in dimensions["persona"].reason


def test_sticky_cluster_needs_a_clear_margin() -> None:
    assert domain.sticky_cluster({0: 1.0, 1: 0.95}, 0, margin=0.15) == 0
    assert domain.sticky_cluster({0: 1.0, 1: 0.5}, 0, margin=0.15) == 1
    assert domain.sticky_cluster({0: 1.0, 1: 0.95}, None, margin=0.15) == 1


def test_distinctions_name_the_feature_that_sets_a_segment_apart() -> None:
    rng = random.Random(1)
    inside = [{"log_basket_value": 5 + rng.gauss(0, 0.3), "weekend_share": rng.random()} for _ in range(200)]
    outside = [{"log_basket_value": 3 + rng.gauss(0, 0.3), "weekend_share": rng.random()} for _ in range(800)]
    found = domain.distinctions(inside, outside)
    assert found[0].feature == "log_basket_value" and found[0].effect > 3
    assert "bigger baskets by value" in found[0].words
    assert all(d.feature != "weekend_share" for d in found)


def test_online_clusters_find_well_separated_groups_and_survive_a_snapshot() -> None:
    rng = random.Random(7)
    centres = [(0, 0), (10, 0), (0, 10)]
    model = OnlineClusters(n_clusters=3)
    points = [(cx + rng.gauss(0, 0.5), cy + rng.gauss(0, 0.5)) for _ in range(400) for cx, cy in centres]
    rng.shuffle(points)
    for x, y in points:
        model.learn_one({"a": x, "b": y})
    labels = {model.predict_one({"a": cx, "b": cy}) for cx, cy in centres}
    assert len(labels) == 3
    restored = OnlineClusters.from_state(model.to_state())
    assert restored.predict_one({"a": 10, "b": 0}) == model.predict_one({"a": 10, "b": 0})
    copy = model.copy()
    copy.learn_one({"a": 100, "b": 100})
    assert copy.learned == model.learned + 1  # the copy learns; the original is untouched


def test_seasonality_index_counts_empty_days_and_is_one_on_average() -> None:
    daily = {date(2011, 1, 3) + timedelta(days=i): (10.0 if (date(2011, 1, 3) + timedelta(days=i)).weekday() == 5 else 1.0)
             for i in range(28)}
    by_weekday = domain.seasonality_index(daily, by="weekday")
    assert by_weekday[5] > 4 and by_weekday[0] < 1
    assert sum(by_weekday.values()) / 7 == pytest.approx(1.0)
    sparse = {date(2011, 1, 1): 7.0, date(2011, 1, 7): 7.0}
    assert domain.seasonality_index(sparse, by="month") == {1: 1.0}


def test_trend_words() -> None:
    assert domain.trend(130, 100) == "growing"
    assert domain.trend(80, 100) == "declining"
    assert domain.trend(105, 100) == "steady"
    assert domain.trend(5, 0) == "new"
    assert domain.trend(0, 5) == "gone"


def test_segment_trend_uses_the_nearest_recorded_day() -> None:
    sizes = {date(2011, 1, 1): 10, date(2011, 1, 20): 15, date(2011, 1, 31): 12}
    assert domain.segment_trend(sizes, date(2011, 1, 31)) == {"size": 12, "change_7d": -3, "change_30d": 2}


def test_frequency_cut_points_fall_back_to_bands_when_ties_collide() -> None:
    month = [1.0] * 76 + [2.0] * 14 + [3.0] * 6 + [7.0] * 4  # most members of a month visit once
    cuts = domain.frequency_cuts(month)
    assert cuts == domain.FREQUENCY_BANDS
    assert [domain.quintile_score(v, cuts) for v in (1, 2, 3, 4, 5, 6)] == [1, 2, 3, 4, 4, 5]
    spread = [float(v) for v in range(1, 101)]
    assert domain.frequency_cuts(spread) == domain.quartiles_to_quintiles(spread)


def test_a_member_without_a_purchase_is_not_new() -> None:
    assert domain.persona_matches(facts(days_since_first=0, visits=0), POPULATION, None)[0] == "regular"


def test_segment_events_built_on_the_hot_path_meet_the_contract() -> None:
    from crm_shared.events import Envelope, MemberSegmentChanged
    from crm_shared.serde import decode, encode
    from segmenter.handlers import SegmentHandlers
    from segmenter.settings import SegmenterSettings

    handlers = SegmentHandlers(None, SegmenterSettings(), topic_prefix="t.")  # type: ignore[arg-type]
    events = [Envelope[MemberProfileUpdated](event_id=uuid.uuid4(), event_type="MemberProfileUpdated", schema_version=1,
                                             occurred_at=AS_OF, source="test", key=f"m{i}",
                                             payload=profile(member_id=f"m{i}", monetary=Decimal(100 * i)))
              for i in range(1, 30)]
    learned = handlers._classify_profiles(handlers.clusters.copy(), [(e, AS_OF) for e in events], {}, POPULATION,
                                          handlers.churn)
    assert learned.events and len(learned.events) == len(learned.changes)
    for event in learned.events:
        parsed = decode(Envelope[MemberSegmentChanged], encode(event))  # validates every field on the way back
        assert parsed.payload.member_id == event.key and parsed.event_id == event.event_id
        assert parsed.payload.current[parsed.payload.dimension] == parsed.payload.new


def test_dormancy_has_hysteresis_until_a_visit_or_a_clear_recovery() -> None:
    awake = ChurnEstimate(p_active=0.55, expected_next_visit_days=10.0, expected_visits=0.5, dormant=False)
    asleep = ChurnEstimate(p_active=0.45, expected_next_visit_days=None, expected_visits=0.1, dormant=True)
    recovered = ChurnEstimate(p_active=0.65, expected_next_visit_days=5.0, expected_visits=1.0, dormant=False)
    assert domain.is_dormant(asleep, held=None, visited_since=False)
    assert not domain.is_dormant(awake, held="regular", visited_since=False)
    assert domain.is_dormant(awake, held="dormant", visited_since=False)  # a refit nudged P(active) to 0.55: stays
    assert not domain.is_dormant(awake, held="dormant", visited_since=True)  # they came back
    assert not domain.is_dormant(recovered, held="dormant", visited_since=False)
    assert not domain.is_dormant(None, held="dormant", visited_since=False)
