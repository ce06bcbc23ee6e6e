"""Churn risk and dormancy: what the segmenter says about a member's chance of coming back, checked
against the model's own simulation, hand-computed cases and member-profile's call-list rule."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise

import numpy as np
import pytest
from segmenter.churn import (
    DEFAULT_PARAMS,
    VARIANTS,
    ChurnEstimate,
    ChurnModel,
    Params,
    PurchaseSummary,
    Variant,
    _compress,
    days_overdue,
    expected_visits,
    log_likelihood,
    median_wait_if_active,
    p_alive,
    p_visit_within,
    simulate_members,
    summarise_visits,
    summary_of_rhythm,
)

# CDNOW's MBG/NBD parameters in days (bench/churn_cdnow.py): a realistic, heterogeneous population.
CDNOW = Params(r=0.637, alpha=51.2, a=0.807, b=1.228)
DAY0 = date(2024, 1, 1)


def regular(interval: int, visits: int, silence: float, jitter: tuple[int, ...] = (0,)) -> PurchaseSummary:
    """A member who came `visits` times, every `interval` days (± jitter), last seen `silence` days ago."""
    days = [DAY0]
    for i in range(visits - 1):
        days.append(days[-1] + timedelta(days=interval + jitter[i % len(jitter)]))
    s = summarise_visits(days, days[-1])
    return PurchaseSummary(s.repeat_visits, s.recency_days, s.recency_days + silence, s.mean_interval_days, s.spread_days)


def one_time(age: float) -> PurchaseSummary:
    return PurchaseSummary(0, 0.0, age, None, None)


def falling(values: Sequence[float]) -> bool:
    return all(later < earlier for earlier, later in pairwise(values))


def rising(values: Sequence[float]) -> bool:
    return all(later > earlier for earlier, later in pairwise(values))


# --- summaries ------------------------------------------------------------------------------------

def test_summary_counts_visit_days_not_purchases_and_measures_their_rhythm() -> None:
    days = [date(2024, 1, 1), date(2024, 1, 1), date(2024, 1, 8), date(2024, 1, 22), date(2024, 1, 15)]
    s = summarise_visits(days, as_of=date(2024, 2, 1))
    assert s.repeat_visits == 3                      # four distinct days: the first and three more
    assert s.recency_days == 21 and s.age_days == 31 and s.days_since_last_visit == 10
    assert s.mean_interval_days == 7
    assert s.spread_days == 0.0                      # 7, 7, 7
    lone = summarise_visits([date(2024, 1, 1)], as_of=date(2024, 1, 5))
    assert (lone.repeat_visits, lone.mean_interval_days, lone.spread_days) == (0, None, None)
    two = summarise_visits([date(2024, 1, 1), date(2024, 1, 11)], as_of=date(2024, 1, 11))
    assert two.mean_interval_days == 10 and two.spread_days is None
    uneven = summarise_visits([DAY0 + timedelta(days=d) for d in (0, 3, 13, 14)], DAY0 + timedelta(days=20))
    assert uneven.spread_days == pytest.approx(statistics.stdev([3, 10, 1]))


def test_summary_refuses_impossible_histories_naming_the_field() -> None:
    with pytest.raises(ValueError, match="repeat_visits"):
        PurchaseSummary(-1, 0.0, 1.0, None, None)
    with pytest.raises(ValueError, match="age_days"):
        PurchaseSummary(0, 0.0, float("nan"), None, None)
    with pytest.raises(ValueError, match="visit_days"):
        summarise_visits([], date(2024, 1, 1))
    with pytest.raises(ValueError, match="variant"):
        ChurnModel(variant="pareto")  # type: ignore[arg-type]  # what a bad setting would pass
    with pytest.raises(ValueError, match="horizon_days"):
        ChurnModel().estimate(one_time(3.0), horizon_days=-1)


# --- p_active -------------------------------------------------------------------------------------

@pytest.mark.parametrize("params", [DEFAULT_PARAMS, CDNOW])
def test_longer_silence_means_lower_p_active_fewer_expected_visits(params: Params) -> None:
    model = ChurnModel(params)
    for member in (regular(7, 20, 0), regular(30, 4, 0), one_time(0)):
        estimates = [model.estimate(PurchaseSummary(member.repeat_visits, member.recency_days, member.age_days + silence,
                                                    member.mean_interval_days, member.spread_days))
                     for silence in (1, 10, 30, 90, 365)]
        p_active = [e.p_active for e in estimates]
        visits = [e.expected_visits for e in estimates]
        chance = [e.p_visit_within_horizon for e in estimates]
        assert falling(p_active), p_active
        assert falling(visits), visits
        assert falling(chance), chance
        assert all(0.0 < p <= 1.0 for p in p_active + chance)


def test_one_time_buyers_are_not_all_certainly_alive() -> None:
    """lifetimes' flaw: BG/NBD's P(alive) is 1.0 for every one-time buyer, however long ago they came."""
    assert {p_alive(CDNOW, one_time(age), "bgnbd") for age in (1, 100, 1000)} == {1.0}
    ours = [ChurnModel(CDNOW).estimate(one_time(age)).p_active for age in (1, 30, 100, 365, 1000)]
    assert falling(ours)
    assert ours[0] < CDNOW.b / (CDNOW.a + CDNOW.b) + 1e-9 and ours[-1] < 0.5
    # and a one-time buyer who came a week ago outranks a loyal member silent for a year
    loyal_gone = ChurnModel(CDNOW).estimate(regular(14, 12, 365))
    assert ChurnModel(CDNOW).estimate(one_time(7)).p_active > loyal_gone.p_active


def test_frequent_regular_buyer_seen_yesterday_is_active_and_expected_soon() -> None:
    for params in (DEFAULT_PARAMS, CDNOW):
        weekly = regular(7, 30, silence=1)
        e = ChurnModel(params).estimate(weekly, horizon_days=28)
        assert e.p_active > 0.95      # MBG/NBD: a small chance the last visit was the last (a/(b+x))
        assert not e.dormant and e.days_overdue is not None and e.days_overdue < 0
        assert e.expected_next_visit_days == pytest.approx(6.0)
        assert 2.5 < e.expected_visits < 4.2       # about four weeks of weekly visits, less a little dropout
        assert e.p_visit_within_horizon > 0.9


def test_more_visits_over_the_same_time_means_more_expected_visits() -> None:
    model = ChurnModel(CDNOW)
    scores = [model.estimate(PurchaseSummary(x, 200.0, 210.0, 200.0 / x if x else None, None), 90).expected_visits
              for x in (1, 3, 10, 30)]
    assert rising(scores), scores


# --- the formulas against the model's own simulation ------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_predictions_for_one_time_buyers_match_simulation(variant: Variant) -> None:
    """Members drawn from the model at the same age: those with no repeat visit share one summary, so the
    predicted chance of a visit in the next 60 days and the expected visits are checked against what they do."""
    params = Params(r=1.2, alpha=20.0, a=1.5, b=3.0)
    drawn = simulate_members(params, 30_000, age_days=(45.0, 45.0), holdout_days=60.0, variant=variant,
                             seed=11)
    quiet = [after for s, after in drawn if s.repeat_visits == 0]
    assert len(quiet) > 5_000
    summary = one_time(45.0)
    share_back = sum(1 for after in quiet if after > 0) / len(quiet)
    mean_visits = sum(quiet) / len(quiet)
    assert p_visit_within(params, summary, 60.0, variant) == pytest.approx(share_back, abs=0.015)
    assert expected_visits(params, summary, 60.0, variant) == pytest.approx(mean_visits, rel=0.05)


def test_expected_visits_cross_checks() -> None:
    s = regular(10, 8, 5)
    # a = 1 is a removable singularity of the closed form: both sides of it agree
    near = [expected_visits(Params(0.9, 12.0, a, 5.0), s, 30.0) for a in (1.0 - 1e-4, 1.0, 1.0 + 1e-4)]
    assert max(near) - min(near) < 1e-3
    # a member who cannot drop out (b huge) and is certainly active visits at the posterior mean rate
    immortal = Params(2.0, 10.0, 1e-6, 1e6)
    assert expected_visits(immortal, s, 30.0) == pytest.approx(30.0 * (2.0 + s.repeat_visits) / (10.0 + s.age_days),
                                                               rel=1e-3)
    assert expected_visits(CDNOW, s, 0.0) == 0.0


# --- fitting ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_fit_recovers_the_parameters_members_were_drawn_from(variant: Variant) -> None:
    truth = Params(r=0.8, alpha=12.0, a=0.9, b=4.0)
    drawn = [s for s, _ in simulate_members(truth, 15_000, age_days=(180.0, 540.0), variant=variant,
                                            seed=2024)]
    model = ChurnModel(variant=variant)
    model.fit(drawn)
    got = model.params
    assert got.r == pytest.approx(truth.r, rel=0.10)
    assert got.alpha == pytest.approx(truth.alpha, rel=0.10)
    assert got.a == pytest.approx(truth.a, rel=0.20)
    assert got.b == pytest.approx(truth.b, rel=0.25)
    assert model.fitted_members == 15_000 and model.iterations > 0
    # the fitted parameters explain the members better than the truth's neighbours and the defaults
    data = _compress(drawn)
    fitted = log_likelihood(got.as_log(), data, variant)[0]
    assert fitted >= log_likelihood(truth.as_log(), data, variant)[0]
    assert fitted > log_likelihood(DEFAULT_PARAMS.as_log(), data, variant)[0] + 100


@pytest.mark.parametrize("variant", VARIANTS)
def test_likelihood_gradient_matches_finite_differences(variant: Variant) -> None:
    drawn = [s for s, _ in simulate_members(CDNOW, 400, age_days=(30.0, 300.0), variant=variant, seed=5)]
    data = _compress(drawn)
    theta = np.log(np.array([0.7, 40.0, 0.9, 2.5]))
    _, grad = log_likelihood(theta, data, variant)
    for i in range(4):
        step = np.zeros(4)
        step[i] = 1e-6
        numeric = (log_likelihood(theta + step, data, variant)[0]
                   - log_likelihood(theta - step, data, variant)[0]) / 2e-6
        assert grad[i] == pytest.approx(numeric, rel=1e-5, abs=1e-4)


def test_fit_on_thin_or_degenerate_populations_stays_finite() -> None:
    for members in ([one_time(float(age)) for age in range(1, 200)], [regular(7, 3, 2)], []):
        model = ChurnModel()
        model.fit(members)
        for value in (model.params.r, model.params.alpha, model.params.a, model.params.b):
            assert math.isfinite(value) and value > 0
        e = model.estimate(one_time(30.0))
        assert 0.0 <= e.p_active <= 1.0 and math.isfinite(e.expected_visits)


def test_refit_starts_from_the_last_fit_and_converges_at_once() -> None:
    drawn = [s for s, _ in simulate_members(CDNOW, 3_000, age_days=(100.0, 400.0), seed=8)]
    first = ChurnModel()
    first.fit(drawn)
    again = ChurnModel.from_state(first.to_state())
    again.fit(drawn)
    assert again.iterations <= 3
    assert again.params.r == pytest.approx(first.params.r, rel=1e-4)


# --- snapshot --------------------------------------------------------------------------------------

def test_snapshot_round_trip_through_json_gives_identical_estimates() -> None:
    drawn = [s for s, _ in simulate_members(CDNOW, 2_000, age_days=(60.0, 365.0), seed=3)]
    model = ChurnModel(sigmas=1.5, dormant_below=0.4, max_grace_days=60.0)
    model.fit(drawn)
    restored = ChurnModel.from_state(json.loads(json.dumps(model.to_state())))
    assert restored.params == model.params and restored.variant == model.variant
    assert (restored.sigmas, restored.dormant_below, restored.max_grace_days, restored.fitted_members) == \
        (1.5, 0.4, 60.0, 2_000)
    for s in drawn[:200]:
        assert restored.estimate(s, 45.0) == model.estimate(s, 45.0)
    with pytest.raises(ValueError, match="version"):
        ChurnModel.from_state({**model.to_state(), "version": 99})


def test_default_model_before_any_fit_gives_usable_estimates() -> None:
    e = ChurnModel().estimate(regular(14, 6, 3))
    assert isinstance(e, ChurnEstimate)
    assert 0.9 < e.p_active <= 1.0 and 1.0 < e.expected_visits < 3.0 and not e.dormant
    assert ChurnModel().estimate(one_time(400)).p_active < ChurnModel().estimate(one_time(5)).p_active


# --- dormant ---------------------------------------------------------------------------------------

def test_dormant_with_two_or_more_intervals_is_member_profiles_overdue_rule() -> None:
    model = ChurnModel(CDNOW)
    member = regular(10, 6, 0, jitter=(-2, 2))           # intervals 8, 12, 8, 12, 8: mean 9.6, spread ~2.19
    assert member.mean_interval_days is not None and member.spread_days is not None
    threshold = member.mean_interval_days + 2 * member.spread_days
    for silence, dormant in ((threshold - 0.5, False), (threshold + 0.5, True), (60.0, True)):
        s = PurchaseSummary(member.repeat_visits, member.recency_days, member.recency_days + silence,
                            member.mean_interval_days, member.spread_days)
        e = model.estimate(s)
        assert e.dormant is dormant, silence
        assert e.days_overdue == pytest.approx(silence - threshold)
    assert days_overdue(regular(10, 2, 50)) is None    # one interval: no spread to judge by


def test_dormant_is_by_own_rhythm_not_a_chain_wide_number_of_days() -> None:
    model = ChurnModel(CDNOW)
    weekly, monthly = regular(7, 12, 20, jitter=(-1, 1)), regular(30, 12, 20, jitter=(-3, 3))
    assert model.estimate(weekly).dormant and not model.estimate(monthly).dormant
    assert monthly.mean_interval_days is not None
    assert model.estimate(monthly).expected_next_visit_days == pytest.approx(monthly.mean_interval_days - 20)
    assert model.estimate(weekly).expected_next_visit_days is None


def test_dormant_with_under_two_intervals_uses_p_active_after_an_unusual_silence() -> None:
    model = ChurnModel(CDNOW)
    fresh = model.estimate(one_time(3))
    assert not fresh.dormant and fresh.days_overdue is None and fresh.expected_next_visit_days is not None
    lapsed = model.estimate(one_time(400))
    assert lapsed.dormant and lapsed.p_active < 0.5 and lapsed.expected_next_visit_days is None
    # where it flips: p_active under one half, and silent past the median wait of an active member like them
    # (capped at max_grace_days)
    def both_hold(age: int) -> bool:
        return (model.estimate(one_time(age)).p_active < 0.5
                and age > min(median_wait_if_active(CDNOW, one_time(age)), model.max_grace_days))

    flip = next(age for age in range(1, 2000) if model.estimate(one_time(age)).dormant)
    assert both_hold(flip) and not both_hold(flip - 1)
    assert 40 < flip <= 91
    once_more = PurchaseSummary(1, 30.0, 30.0 + 120.0, 30.0, None)
    assert model.estimate(once_more).dormant and not model.estimate(PurchaseSummary(1, 30.0, 40.0, 30.0, None)).dormant


def test_a_new_member_is_not_dormant_the_day_after_even_where_most_never_return() -> None:
    """In a population where most first-time buyers never come back, P(active) starts under one half."""
    model = ChurnModel(Params(r=1.0, alpha=10.0, a=3.0, b=1.0))
    day_after = model.estimate(one_time(1))
    assert day_after.p_active < 0.5 and not day_after.dormant
    assert model.estimate(one_time(120)).dormant


def test_rare_buyers_population_still_flags_lapsed_one_time_buyers_and_gives_no_absurd_date() -> None:
    """Fitted on one-time buyers only, r is tiny: an active member's median wait runs to centuries."""
    model = ChurnModel()
    model.fit([one_time(float(age)) for age in range(1, 200)])
    assert median_wait_if_active(model.params, one_time(30)) > 3650
    month, later = model.estimate(one_time(30)), model.estimate(one_time(model.max_grace_days + 1))
    assert month.expected_next_visit_days is None and not month.dormant
    assert later.dormant and later.p_active < 0.5


def test_summary_of_member_profiles_rhythm_gives_its_call_list_verdict() -> None:
    member_profile = pytest.importorskip("member_profile.domain", reason="member-profile is not installed")
    visits = [datetime(2024, 1, 1, 10, tzinfo=UTC) + timedelta(days=d, hours=h)
              for d, h in ((0, 0), (6, 2), (15, 1), (21, 5), (29, 0), (35, 3))]
    rhythm = member_profile.rhythm_of(v.date() for v in visits)
    profile = member_profile.Profile("m-1", first_purchase_at=visits[0], last_purchase_at=visits[-1], rhythm=rhythm)
    model = ChurnModel(CDNOW)
    for days_later in (3.0, 9.5, 10.5, 12.0, 30.0):
        as_of = visits[-1] + timedelta(days=days_later)
        s = summary_of_rhythm(visits[0], visits[-1], rhythm.intervals, rhythm.mean_days, rhythm.spread_days, as_of)
        theirs = member_profile.days_overdue(profile, as_of)
        assert s.days_since_last_visit == pytest.approx(member_profile.recency_days(profile, as_of))
        assert days_overdue(s) == pytest.approx(theirs)
        assert model.estimate(s).dormant is (theirs > 0)
