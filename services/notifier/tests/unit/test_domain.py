"""Every guard and trigger decision of the notifier, as pure functions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from notifier import domain
from notifier.domain import (
    Arm,
    Campaign,
    CampaignDefinition,
    MemberFacts,
    PastOffer,
    Policy,
    Proposal,
    Rule,
)
from pydantic import ValidationError

NOON = datetime(2026, 3, 4, 12, 0, tzinfo=UTC)
POLICY = Policy(daily_cap=2, weekly_cap=3, quiet_start_hour=21, quiet_end_hour=8, default_time_zone="UTC",
                store_time_zones={"tokyo-1": "Asia/Tokyo", "london-1": "Europe/London"})


def definition(**changes: object) -> CampaignDefinition:
    base: dict[str, object] = {"name": "Cross-sell", "trigger": "cross_sell", "channel": "push",
                               "template": "{discount}% off {product} until {valid_to}", "control_share": 0.0}
    base.update(changes)
    return CampaignDefinition.model_validate(base)


def campaign(status: str = "running", sent: int = 0, **changes: object) -> Campaign:
    return Campaign("c1", definition(**changes), status, sent)  # type: ignore[arg-type]


def proposal(member: str = "m1", at: datetime = NOON, products: tuple[str, ...] = ("beer",),
             store: str | None = "s1", source: str = "e1") -> Proposal:
    return Proposal("c1", member, "cross_sell", products, store, at, "diapers -> beer", source)


def decide(prop: Proposal | None = None, camp: Campaign | None = None, member: MemberFacts | None = None, *,
           consent: bool = True, history: list[PastOffer] | None = None,
           low_stock: frozenset[str] = frozenset()) -> domain.Decision:
    prop = prop or proposal()
    return domain.decide(prop, camp or campaign(), member or MemberFacts(prop.member_id), consent=consent,
                         history=history or [], low_stock=low_stock, policy=POLICY)


# --- triggers -----------------------------------------------------------------------------------

RULES = [Rule(frozenset({"diapers"}), "beer", 0.6, 2.5, 0.1),
         Rule(frozenset({"diapers", "wipes"}), "cream", 0.7, 3.0, 0.05),
         Rule(frozenset({"bread"}), "butter", 0.4, 1.8, 0.2),
         Rule(frozenset({"milk"}), "cereal", 0.9, 0.8, 0.2)]


def test_cross_sell_offers_the_consequent_of_the_strongest_rule_whose_antecedents_were_bought() -> None:
    assert domain.cross_sell(["diapers"], RULES).consequent == "beer"  # type: ignore[union-attr]
    assert domain.cross_sell(["diapers", "wipes"], RULES).consequent == "cream"  # type: ignore[union-attr]


def test_cross_sell_never_offers_what_is_already_in_the_basket_or_half_matched_rules() -> None:
    assert domain.cross_sell(["diapers", "beer"], RULES) is None
    assert domain.cross_sell(["wipes"], RULES) is None
    assert domain.cross_sell([], RULES) is None


def test_cross_sell_respects_the_campaigns_confidence_and_lift_floor() -> None:
    assert domain.cross_sell(["milk"], RULES) is None, "lift below 1 is not an association worth an offer"
    assert domain.cross_sell(["milk"], RULES, min_lift=0.5).consequent == "cereal"  # type: ignore[union-attr]
    assert domain.cross_sell(["bread"], RULES, min_confidence=0.5) is None


def test_a_stores_own_rules_win_over_the_chains_and_the_chain_is_the_fallback() -> None:
    by_scope = {"chain": RULES[:1], "s1": RULES[2:3]}
    assert domain.rules_for_store(by_scope, "s1") == ("s1", RULES[2:3])
    assert domain.rules_for_store(by_scope, "s2") == ("chain", RULES[:1])
    assert domain.rules_for_store({}, "s2") == ("chain", ())


def test_dormant_wake_up_fires_on_the_transition_into_dormant_only() -> None:
    assert domain.is_dormant_transition("persona", "regular", "dormant")
    assert domain.is_dormant_transition("persona", None, "dormant")
    assert not domain.is_dormant_transition("persona", "dormant", "dormant")
    assert not domain.is_dormant_transition("value_tier", "loyal", "dormant")
    assert not domain.is_dormant_transition("persona", "dormant", "regular")


def test_tier_trigger_fires_on_upgrades_not_downgrades() -> None:
    assert domain.is_upgrade("member", "silver") and domain.is_upgrade("gold", "vip")
    assert not domain.is_upgrade("gold", "silver") and not domain.is_upgrade("gold", "gold")


def test_welcome_is_for_a_new_members_first_profile_only() -> None:
    assert domain.is_first_profile(already_known=False, frequency=1)
    assert not domain.is_first_profile(already_known=True, frequency=1)
    assert not domain.is_first_profile(already_known=False, frequency=12), "an old member seen late is not new"


# --- guards -------------------------------------------------------------------------------------

def test_an_eligible_offer_is_sent() -> None:
    assert decide() == domain.Decision("send")


def test_erased_members_are_never_contacted_whatever_else_holds() -> None:
    assert decide(member=MemberFacts("m1", erased=True)) == domain.Decision("suppress", "erased")


def test_no_consent_on_the_channel_suppresses() -> None:
    assert decide(consent=False).reason == "no_consent"
    assert decide(consent=True).action == "send"


def test_quiet_hours_are_read_in_the_stores_time_zone() -> None:
    late_utc = datetime(2026, 3, 4, 22, 30, tzinfo=UTC)
    assert decide(proposal(at=late_utc, store="s1")).reason == "quiet_hours"
    # 22:30 UTC is 07:30 next morning in Tokyo: still quiet; 00:30 UTC is 09:30 there: fine.
    assert decide(proposal(at=late_utc, store="tokyo-1")).reason == "quiet_hours"
    assert decide(proposal(at=datetime(2026, 3, 4, 0, 30, tzinfo=UTC), store="tokyo-1")).action == "send"
    # Without a configured zone the sale's own offset is the store's: 20:30 at -05:00 is 01:30 UTC.
    evening_ny = datetime(2026, 3, 4, 20, 30, tzinfo=timezone(timedelta(hours=-5)))
    assert decide(proposal(at=evening_ny, store="s1")).action == "send"


def test_quiet_hours_window_that_does_not_cross_midnight() -> None:
    policy = Policy(quiet_start_hour=12, quiet_end_hour=14)
    assert domain.in_quiet_hours(NOON, policy) and not domain.in_quiet_hours(NOON + timedelta(hours=2), policy)
    assert not domain.in_quiet_hours(NOON, Policy(quiet_start_hour=0, quiet_end_hour=0))


def test_an_offer_triggered_in_quiet_hours_goes_out_when_they_end_in_the_stores_zone() -> None:
    deferring = replace(POLICY, quiet_hours="defer")
    late_utc = datetime(2026, 3, 4, 22, 30, tzinfo=UTC)
    assert domain.deliverable_at(proposal(at=late_utc, store="s1"), None, deferring) == datetime(2026, 3, 5, 8, tzinfo=UTC)
    # a Monday 00:00 review's wake-up: 08:00 the same morning
    monday = datetime(2026, 3, 2, tzinfo=UTC)
    assert domain.deliverable_at(proposal(at=monday, store="s1"), None, deferring) == monday + timedelta(hours=8)
    # 22:30 UTC is 07:30 in Tokyo: out at 08:00 Tokyo = 23:00 UTC, the same instant in the trigger's zone
    assert domain.deliverable_at(proposal(at=late_utc, store="tokyo-1"), None, deferring) == late_utc + timedelta(minutes=30)
    # no store on the proposal: the member's preferred store's zone
    assert domain.deliverable_at(proposal(at=late_utc, store=None), "tokyo-1", deferring) == late_utc + timedelta(minutes=30)
    # outside quiet hours, or with quiet_hours="suppress": the trigger's time, unchanged
    assert domain.deliverable_at(proposal(at=NOON, store="s1"), None, deferring) == NOON
    suppressing = replace(POLICY, quiet_hours="suppress")
    assert domain.deliverable_at(proposal(at=late_utc, store="s1"), None, suppressing) == late_utc
    # deferred, every guard passes quiet hours
    deferred = proposal(at=domain.deliverable_at(proposal(at=late_utc, store="s1"), None, deferring), store="s1")
    assert decide(deferred).action == "send"


def test_quiet_hours_end_across_a_daylight_saving_change() -> None:
    london = ZoneInfo("Europe/London")
    # the night the clocks go forward (2026-03-29 01:00 -> 02:00): 08:00 local is 07:00 UTC
    night = datetime(2026, 3, 28, 23, 30, tzinfo=london)
    assert domain.quiet_hours_end(night, POLICY) == datetime(2026, 3, 29, 8, tzinfo=london)
    assert domain.quiet_hours_end(night, POLICY).astimezone(UTC) == datetime(2026, 3, 29, 7, tzinfo=UTC)


def sent_at(*hours_ago: float, campaign_id: str = "other", withheld: bool = False) -> list[PastOffer]:
    return [PastOffer(campaign_id, ("x",), NOON - timedelta(hours=h), NOON + timedelta(days=7), withheld)
            for h in hours_ago]


def test_daily_cap_counts_sends_of_every_campaign_in_the_last_24_hours_of_event_time() -> None:
    assert decide(history=sent_at(1, 5)).reason == "daily_cap"
    assert decide(history=sent_at(1, 25)).action == "send", "a send 25 h ago is outside the day"
    assert decide(history=sent_at(1, 5, withheld=True)).action == "send", "withheld records were never sent"


def test_caps_count_sends_on_both_sides_of_a_late_trigger() -> None:
    # a segment change dated 10:00 arrives after two offers were sent at 12:00 and 14:00 that day
    later_sends = [PastOffer("c2", ("x",), NOON, NOON + timedelta(days=7), False),
                   PastOffer("c3", ("y",), NOON + timedelta(hours=2), NOON + timedelta(days=7), False)]
    assert decide(proposal(at=NOON - timedelta(hours=2)), history=later_sends).reason == "daily_cap"
    assert decide(proposal(at=NOON - timedelta(days=2)), history=later_sends).action == "send"


def test_weekly_cap_counts_the_last_seven_days() -> None:
    assert decide(history=sent_at(30, 60, 100)).reason == "weekly_cap"
    assert decide(history=sent_at(30, 60, 7 * 24 + 1)).action == "send"


def test_the_same_offer_is_not_made_twice_while_the_first_is_valid() -> None:
    same = [PastOffer("c1", ("beer",), NOON - timedelta(days=1), NOON + timedelta(days=6), False)]
    assert decide(history=same).reason == "duplicate"
    expired = [PastOffer("c1", ("beer",), NOON - timedelta(days=8), NOON - timedelta(days=1), False)]
    assert decide(history=expired).action == "send"
    other_product = [PastOffer("c1", ("wine",), NOON - timedelta(days=1), NOON + timedelta(days=6), False)]
    assert decide(history=other_product).action == "send"
    withheld_twin = [PastOffer("c1", ("beer",), NOON - timedelta(days=1), NOON + timedelta(days=6), True)]
    assert decide(history=withheld_twin).reason == "duplicate", "a control member is not re-drawn either"


def test_the_same_products_from_another_campaign_are_a_duplicate_but_product_less_offers_are_per_campaign() -> None:
    other_campaign = [PastOffer("c9", ("beer",), NOON - timedelta(days=1), NOON + timedelta(days=6), False)]
    assert decide(history=other_campaign).reason == "duplicate"
    welcome_elsewhere = [PastOffer("c9", (), NOON - timedelta(days=1), NOON + timedelta(days=6), False)]
    assert decide(proposal(products=()), history=welcome_elsewhere).action == "send"
    same_campaign = [PastOffer("c1", (), NOON - timedelta(days=1), NOON + timedelta(days=6), False)]
    assert decide(proposal(products=()), history=same_campaign).reason == "duplicate"
    # a late trigger whose window would overlap a later offer of the same product is a duplicate too
    later = [PastOffer("c9", ("beer",), NOON + timedelta(days=2), NOON + timedelta(days=9), False)]
    assert decide(history=later).reason == "duplicate"


def test_products_low_on_stock_are_not_promoted() -> None:
    assert decide(low_stock=frozenset({"beer"})).reason == "low_stock"
    assert decide(low_stock=frozenset({"wine"})).action == "send"


def test_a_sku_is_held_low_from_its_report_to_the_next_receipt_in_event_time() -> None:
    low, received = domain.StockSignal(NOON, "low"), domain.StockSignal(NOON + timedelta(days=2), "received")
    signals = [received, low]  # in any order: the notifier reads the two topics at their own pace
    assert not domain.low_at([], NOON)
    assert not domain.low_at(signals, NOON - timedelta(seconds=1))  # a report from later holds nothing back
    assert domain.low_at(signals, NOON)
    assert domain.low_at(signals, NOON + timedelta(days=2) - timedelta(seconds=1))
    assert not domain.low_at(signals, NOON + timedelta(days=2))  # goods in: back on offer
    again = [*signals, domain.StockSignal(NOON + timedelta(days=5), "low")]
    assert not domain.low_at(again, NOON + timedelta(days=4))
    assert domain.low_at(again, NOON + timedelta(days=6))
    # a receipt at the very time of a report clears it, whichever was recorded first
    assert not domain.low_at([domain.StockSignal(NOON, "received"), low], NOON + timedelta(hours=1))
    # a later report in the same episode, before any receipt, keeps it held
    assert domain.low_at([low, domain.StockSignal(NOON + timedelta(hours=1), "low")], NOON + timedelta(hours=2))


def test_campaign_status_schedule_budget_and_targeting() -> None:
    assert decide(camp=campaign(status="stopped")).reason == "not_running"
    assert decide(camp=campaign(starts_at=NOON + timedelta(hours=1))).reason == "outside_schedule"
    assert decide(camp=campaign(ends_at=NOON)).reason == "outside_schedule"
    assert decide(camp=campaign(budget=5, sent=5)).reason == "budget_exhausted"
    assert decide(camp=campaign(budget=5, sent=4)).action == "send"
    assert decide(camp=campaign(tiers=["gold"]), member=MemberFacts("m1", tier="silver")).reason == "not_targeted"
    assert decide(camp=campaign(segments=["dormant"]),
                  member=MemberFacts("m1", segments=frozenset({"dormant", "loyal"}))).action == "send"
    assert decide(camp=campaign(stores=["s9"])).reason == "not_targeted"


def test_control_group_is_deterministic_and_near_its_share() -> None:
    members = [f"m{i}" for i in range(20_000)]
    inside = [m for m in members if domain.in_control_group(m, "c1", 0.1)]
    assert 0.09 < len(inside) / len(members) < 0.11
    assert inside == [m for m in members if domain.in_control_group(m, "c1", 0.1)]
    other = {m for m in members if domain.in_control_group(m, "c2", 0.1)}
    assert len(set(inside) & other) < 0.02 * len(members), "campaigns draw independent control groups"
    control_member = inside[0]
    assert decide(proposal(member=control_member), campaign(control_share=0.1)) == domain.Decision("withhold")


def test_an_offer_id_is_the_same_for_the_same_trigger_and_different_otherwise() -> None:
    assert proposal().offer_id == proposal().offer_id
    assert proposal().offer_id != proposal(source="e2").offer_id
    assert proposal().offer_id != proposal(products=("wine",)).offer_id


# --- campaigns, rendering, redemption, uplift ---------------------------------------------------

@pytest.mark.parametrize(("changes", "field"), [
    ({"template": "Hi {name}"}, "template"),
    ({"template": "Hi {product"}, "template"),
    ({"channel": "pigeon"}, "channel"),
    ({"trigger": "anniversary"}, "trigger"),
    ({"trigger": "after_sale"}, "categories"),
    ({"trigger": "after_sale", "categories": ["JEANS"], "delay_days": -1}, "delay_days"),
    ({"control_share": 0.9}, "control_share"),
    ({"discount_percent": "95"}, "discount_percent"),
    ({"starts_at": "2026-03-05T00:00:00Z", "ends_at": "2026-03-04T00:00:00Z"}, "ends_at"),
    ({"budget": 0}, "budget"),
    ({"surprise": 1}, "surprise"),
])
def test_bad_campaign_definitions_name_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        definition(**changes)
    assert caught.value.errors()[0]["loc"][0] == field


def test_render_fills_the_placeholders() -> None:
    text = domain.render("{discount}% off {product} until {valid_to} at {store}", member_id="m1", products=["beer"],
                         discount=Decimal("10.0"), valid_to=NOON, store_id="s1")
    assert text == "10% off beer until 2026-03-04 at s1"


def test_redemption_is_a_later_purchase_of_the_offered_product_inside_the_window() -> None:
    start, end = NOON, NOON + timedelta(days=7)
    assert domain.redeems(["beer"], start, end, NOON + timedelta(days=1), ["beer", "chips"])
    assert not domain.redeems(["beer"], start, end, NOON + timedelta(days=1), ["chips"])
    assert not domain.redeems(["beer"], start, end, NOON, ["beer"]), "the triggering sale itself is no redemption"
    assert not domain.redeems(["beer"], start, end, end + timedelta(seconds=1), ["beer"])
    assert domain.redeems([], start, end, NOON + timedelta(days=2), ["anything"]), "a wake-up offer: any purchase"


T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def sale_of(sale_id: str, hours: float, *skus: str, member: str | None = "m1", code: str | None = None,
            kind: str = "sale", original: str | None = None) -> domain.Purchase:
    lines = tuple((sku, Decimal("2.50"), code) for sku in skus)
    return domain.Purchase(sale_id, member, T0 + timedelta(hours=hours), kind,  # type: ignore[arg-type]
                           lines, sum((net for _, net, _ in lines), Decimal("0")), original)


def offered(offer_id: str = "o1", products: tuple[str, ...] = ("beer",), member: str = "m1") -> domain.OfferState:
    return domain.OfferState(offer_id, member, products, T0, T0 + timedelta(days=7))


def outcome(offers: list[domain.OfferState], purchases: list[domain.Purchase]) -> list[tuple[str, str | None]]:
    domain.walk_redemptions(offers, purchases)
    return [(o.offer_id, o.redeemed_by) for o in offers]


def test_the_first_qualifying_sale_in_topic_order_redeems_and_earlier_or_other_members_sales_do_not() -> None:
    purchases = [sale_of("before", -1, "beer"), sale_of("other", 1, "beer", member="m2"), sale_of("bread", 2, "bread"),
                 sale_of("first", 3, "beer", "chips"), sale_of("second", 4, "beer")]
    offers = [offered(), offered("any", ())]
    changed = domain.walk_redemptions(offers, purchases)
    assert [(o.offer_id, o.redeemed_by, o.redeemed_revenue) for o in changed] == [
        ("o1", "first", Decimal("2.50")), ("any", "bread", Decimal("2.50"))]
    late = offered()
    late.issued_at = T0 + timedelta(days=8)  # a window after every one of these sales
    assert domain.walk_redemptions([late], purchases) == []


def test_a_return_from_the_redeeming_sale_undoes_it_and_a_later_sale_redeems_again() -> None:
    purchases = [sale_of("s1", 1, "beer"), sale_of("r1", 2, "beer", kind="return", original="s1"),
                 sale_of("s2", 3, "beer")]
    assert outcome([offered()], purchases) == [("o1", "s2")]
    assert outcome([offered()], purchases[:2]) == [("o1", None)]
    # returning something else, or from another sale, undoes nothing; nor does it undo a product-less offer
    other = [sale_of("s1", 1, "beer", "chips"), sale_of("r1", 2, "chips", kind="return", original="s1")]
    assert outcome([offered(), offered("any", ())], other) == [("o1", "s1"), ("any", "s1")]


def test_a_scanned_code_redeems_for_any_buyer_with_that_lines_revenue() -> None:
    forwarded = sale_of("till", 1, "beer", "beer", member=None, code="o1")
    [state] = domain.walk_redemptions([offered()], [forwarded])
    assert (state.redeemed_by, state.redeemed_by_code, state.redeemed_revenue) == ("till", True, Decimal("5.00"))


def test_walking_the_sales_with_the_offer_or_the_offer_after_the_sales_redeems_alike() -> None:
    """Whether the offer was held when its sales came (walked batch by batch) or decided after them."""
    purchases = [sale_of("s1", 1, "beer"), sale_of("r1", 2, "beer", kind="return", original="s1"),
                 sale_of("s2", 3, "chips"), sale_of("s3", 4, "beer"), sale_of("s4", 5, "beer")]
    at_once = offered()
    domain.walk_redemptions([at_once], purchases)
    for cut in range(len(purchases) + 1):
        held = offered()
        domain.walk_redemptions([held], purchases[:cut])
        domain.walk_redemptions([held], purchases[cut:])
        assert (held.redeemed_by, held.redeemed_at) == (at_once.redeemed_by, at_once.redeemed_at)
    assert (at_once.redeemed_by, at_once.redeemed_at) == ("s3", T0 + timedelta(hours=4))


def test_uplift_with_a_95_percent_newcombe_interval_and_incremental_revenue() -> None:
    result = domain.uplift(Arm(1000, 150, Decimal("3000")), Arm(1000, 100, Decimal("2000")))
    assert result.uplift == pytest.approx(0.05)
    # Newcombe (1998) method 10 for 150/1000 vs 100/1000 (Wilson limits 0.1292–0.1738 and 0.0829–0.1203)
    assert result.ci95 == pytest.approx((0.02105, 0.07903), abs=5e-5)
    assert result.incremental_revenue == Decimal("1000.00")
    # Newcombe's own worked example (Statist. Med. 17:873, table II, example (b)): 9/10 vs 3/10 → 0.1705 to 0.8090
    assert domain.uplift(Arm(10, 9, Decimal(0)), Arm(10, 3, Decimal(0))).ci95 == pytest.approx((0.1705, 0.8090),
                                                                                                 abs=5e-4)


def test_the_interval_stays_an_interval_at_zero_and_full_conversion() -> None:
    # Wald gives the single point (1.0, 1.0) for 10/10 vs 0/10 and (0, 0) for 0/10 vs 0/10
    everyone = domain.uplift(Arm(10, 10, Decimal(0)), Arm(10, 0, Decimal(0))).ci95
    assert everyone is not None and everyone[0] < 1.0 - 0.1 and everyone[1] == pytest.approx(1.0)
    nobody = domain.uplift(Arm(10, 0, Decimal(0)), Arm(10, 0, Decimal(0))).ci95
    assert nobody is not None and nobody[0] < -0.1 and nobody[1] > 0.1
    assert domain.uplift(Arm(10, 1, Decimal(0)), Arm(0, 0, Decimal(0))).uplift is None


# --- run-out reminders ----------------------------------------------------------------------------

def test_a_rhythm_counts_purchase_occasions_a_day_apart_and_predicts_the_next() -> None:
    rhythm = None
    for day in (0, 0.2, 7, 14):  # two purchases on day 0 are one occasion
        rhythm = domain.bought_again(rhythm, NOON + timedelta(days=day))
    assert rhythm is not None and rhythm.purchases == 3
    assert rhythm.mean_interval == timedelta(days=7) and rhythm.due_at == NOON + timedelta(days=21)
    late = domain.bought_again(rhythm, NOON - timedelta(days=7))  # an old purchase arriving late
    assert late.purchases == 4 and late.first_at == NOON - timedelta(days=7) and late.last_at == rhythm.last_at


def test_run_out_reminds_shortly_before_the_predicted_purchase_once_and_not_when_long_past() -> None:
    rhythm = domain.Rhythm(3, NOON, NOON + timedelta(days=14))  # due day 21
    lead = timedelta(days=2)
    assert not domain.run_out_due(rhythm, NOON + timedelta(days=18), lead=lead, min_purchases=3)
    assert domain.run_out_due(rhythm, NOON + timedelta(days=19, hours=1), lead=lead, min_purchases=3)
    assert domain.run_out_due(rhythm, NOON + timedelta(days=23), lead=lead, min_purchases=3)
    assert not domain.run_out_due(rhythm, NOON + timedelta(days=25), lead=lead, min_purchases=3), "stopped buying it"
    reminded = domain.Rhythm(3, NOON, NOON + timedelta(days=14), reminded_for=NOON + timedelta(days=21))
    assert not domain.run_out_due(reminded, NOON + timedelta(days=20), lead=lead, min_purchases=3)
    assert not domain.run_out_due(rhythm, NOON + timedelta(days=20), lead=lead, min_purchases=4), "not regular yet"


def in_cuts(times: list[datetime], cut: int) -> list[list[int]]:
    """Event indexes of a batch split at `cut` (the second part is another batch)."""
    return [list(range(0, cut)), list(range(cut, len(times)))]


def test_run_out_walk_reminds_at_the_reading_that_enters_the_window_wherever_the_batch_is_cut() -> None:
    lead = timedelta(days=2)
    # m1 bought tea on days 0, 7 (due day 14, window from day 12 until day 17.5); m2's coffee is bought
    # during the batch, which moves its due time; events are other members' sales advancing the clock.
    held = {("m1", "tea"): domain.Rhythm(2, NOON, NOON + timedelta(days=7)),
            ("m2", "coffee"): domain.Rhythm(2, NOON, NOON + timedelta(days=10))}  # due day 20
    times = [NOON + timedelta(days=d) for d in (8, 11, 12.5, 13, 16, 17, 18.5, 19, 21)]
    # bought again on day 13 (event 3): every 6.5 days now, due day 19.5, window from day 17.5 (before
    # that purchase, its window from day 18 was not open yet)
    bought = {("m2", "coffee"): [3]}
    steps = domain.clock_steps(times)
    after, made = domain.walk_rhythms(held, bought, times, steps, lead=lead, min_purchases=2)
    assert made[0][3].reminded_for == made[0][1], "the rhythm as it was when reminded"
    reminders = [(key, due, at) for key, due, at, _ in made]
    assert sorted(reminders) == [(("m1", "tea"), NOON + timedelta(days=14), NOON + timedelta(days=12.5)),
                                 (("m2", "coffee"), NOON + timedelta(days=19.5), NOON + timedelta(days=18.5))]
    assert after[("m2", "coffee")].purchases == 3 and after[("m1", "tea")].reminded_for == NOON + timedelta(days=14)
    for cut in range(len(times) + 1):
        rhythms, made = dict(held), list[tuple[tuple[str, str], datetime, datetime]]()
        for part in in_cuts(times, cut):
            if not part:
                continue
            local = {key: [i - part[0] for i in idx if i in part] for key, idx in bought.items()}
            rhythms, found = domain.walk_rhythms(rhythms, {k: v for k, v in local.items() if v},
                                                 [times[i] for i in part], [steps[i] for i in part], lead=lead,
                                                 min_purchases=2)
            made += [(key, due, at) for key, due, at, _ in found]
        assert sorted(made) == sorted(reminders) and rhythms == after, f"cut at {cut}"
    # a clock that jumps past the window (no sale while it was open) reminds no one
    _, none = domain.walk_rhythms(held, {}, [NOON + timedelta(days=30)], [NOON + timedelta(days=30)], lead=lead,
                                  min_purchases=2)
    assert none == []


def test_the_clock_steps_and_the_reading_that_first_reached_a_time() -> None:
    times = [NOON, NOON + timedelta(hours=3), NOON + timedelta(hours=1), NOON + timedelta(hours=5)]
    steps = domain.clock_steps(times)
    assert steps == [NOON, NOON + timedelta(hours=3), NOON + timedelta(hours=3), NOON + timedelta(hours=5)]
    assert domain.first_reaching(steps, NOON + timedelta(hours=2)) == NOON + timedelta(hours=3)
    assert domain.first_reaching(steps, NOON - timedelta(days=1)) == NOON, "already due: the batch's first reading"
    assert domain.first_reaching(steps, NOON + timedelta(hours=5)) == NOON + timedelta(hours=5)
    # cut anywhere, the second part counting from where the first left the clock: the same readings
    for cut in range(len(times) + 1):
        first = domain.clock_steps(times[:cut])
        assert first + domain.clock_steps(times[cut:], first[-1] if first else None) == steps, f"cut at {cut}"
    # a batch of late events only reads the clock earlier batches reached, not their own times
    assert domain.clock_steps([NOON], NOON + timedelta(days=3)) == [NOON + timedelta(days=3)]


def test_days_entered_reading_by_reading_are_the_same_however_the_readings_are_batched() -> None:
    from datetime import date

    readings = [datetime(2010, 12, 1, 9, tzinfo=UTC), datetime(2010, 12, 1, 17, tzinfo=UTC),
                datetime(2010, 12, 2, 8, tzinfo=UTC), datetime(2010, 12, 5, 10, tzinfo=UTC),
                datetime(2010, 12, 5, 11, tzinfo=UTC)]
    whole = domain.days_entered_by(None, readings, UTC)
    assert whole == [(date(2010, 12, 1), readings[0]), (date(2010, 12, 2), readings[2]),
                     (date(2010, 12, 3), readings[3]), (date(2010, 12, 4), readings[3]),
                     (date(2010, 12, 5), readings[3])]
    for cut in range(1, len(readings)):
        assert domain.days_entered_by(None, readings[:cut], UTC) + domain.days_entered_by(
            readings[cut - 1], readings[cut:], UTC) == whole, f"cut at {cut}"


def test_campaign_definitions_that_would_fail_at_send_time_are_refused_up_front() -> None:
    from datetime import UTC, datetime
    from decimal import Decimal

    import pytest
    from notifier import domain
    from pydantic import ValidationError

    base = {"name": "n", "trigger": "cross_sell", "channel": "email", "template": "{product}: {discount}% off"}
    for template in ("{discount:.1f}% off {product}", "{product:>1500}", "{product!r}"):
        with pytest.raises(ValidationError, match="format spec or conversion"):
            domain.CampaignDefinition.model_validate({**base, "template": template})
    with pytest.raises(ValidationError, match="discount_percent"):
        domain.CampaignDefinition.model_validate({**base, "discount_percent": "12.34567"})
    text = domain.render("{products}", member_id="m", products=["X" * 64] * 50, discount=Decimal("10"),
                         valid_to=datetime(2011, 1, 1, tzinfo=UTC), store_id=None)
    assert len(text) == domain.MAX_TEXT and text.endswith("…")


# --- birthdays, follow-up clocks, webhooks ---------------------------------------------------------

def test_birthdays_of_a_day_and_29_february_in_a_common_year() -> None:
    from datetime import date

    assert domain.birthdays_on(date(2026, 3, 4)) == {"03-04"}
    assert domain.birthdays_on(date(2026, 2, 28)) == {"02-28", "02-29"}
    assert domain.birthdays_on(date(2028, 2, 28)) == {"02-28"}, "a leap year has its own 29th"


def test_days_entered_by_the_event_clock() -> None:
    from datetime import date

    assert domain.days_entered(None, date(2010, 12, 1)) == [date(2010, 12, 1)]
    assert domain.days_entered(date(2010, 12, 1), date(2010, 12, 1)) == []
    assert domain.days_entered(date(2010, 12, 1), date(2010, 12, 3)) == [date(2010, 12, 2), date(2010, 12, 3)]
    assert len(domain.days_entered(date(2010, 1, 1), date(2010, 12, 3))) == 7, "a long gap replays a week at most"
    assert domain.days_entered(date(2010, 12, 3), date(2010, 12, 1)) == [], "the clock never goes back"


def test_webhook_signature_is_hmac_sha256_of_timestamp_and_body() -> None:
    import hashlib
    import hmac

    body = b'{"offer_id":"of-1"}'
    expected = hmac.new(b"secret-key", b"1700000000." + body, hashlib.sha256).hexdigest()
    assert domain.webhook_signature("secret-key", 1700000000, body) == "sha256=" + expected
    assert domain.webhook_signature("secret-key", 1700000001, body) != "sha256=" + expected


def test_webhook_retries_back_off_exponentially_up_to_a_cap() -> None:
    delays = [domain.retry_delay(n, base_seconds=1, cap_seconds=30) for n in range(1, 8)]
    assert delays == [1, 2, 4, 8, 16, 30, 30]
