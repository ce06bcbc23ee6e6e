"""One batch of sales applied to members one sale at a time, in the order the topic holds them. Pure:
the handler loads what the batch touches, this walks the sales, the handler saves what it decided.

Why one at a time: a member's profile update, points and tier are decided at the sale that changes
them, valued at the event time reached at that sale (the running watermark), and idle members' tiers
are reviewed at every midnight the watermark crosses. So everything member-profile writes and
publishes depends on the sales and their order only, never on where a consumer batch happened to
start or end: a service killed and restarted mid-replay publishes exactly what an uninterrupted run
publishes, and the segmenter downstream is fed the same profile updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from crm_shared.events import Envelope, Sale, Tier

from member_profile.domain import CatalogEntry, Profile, apply_sale, rhythm_of
from member_profile.loyalty import Lot, LoyaltyRules, balance, expired, expires_at, points_for, take_back, tier_for

ZERO = Decimal("0")
CENT = Decimal("0.01")
NEW_LOT_IDS = 1 << 62  # lots earned in this batch until the database numbers them (after every stored id)


def midnight_of(at: datetime) -> datetime:
    return datetime.combine(at.astimezone(UTC).date(), time(0), UTC)


@dataclass
class MemberBook:
    """What the walk holds of one member: the profile, live points lots, the tier, and the net spend
    needed to value the rolling tier window at any time from the batch's first midnight on."""

    profile: Profile
    tier: Tier = "member"
    lots: list[Lot] = field(default_factory=list)
    spend_base: Decimal = ZERO                   # stored purchases after the horizon
    leaving: list[tuple[datetime, Decimal]] = field(default_factory=list)  # stored ones the window may drop, by time
    added: list[tuple[datetime, Decimal]] = field(default_factory=list)    # this batch's, in walk order
    prior_visit_days: list[date] | None = None   # loaded only for a member with an out-of-order visit
    batch_visit_days: list[date] = field(default_factory=list)
    touched: bool = False                        # a sale of this batch changed the profile

    def rolling_spend(self, at: datetime, window: timedelta) -> Decimal:
        start = at - window
        spend = self.spend_base - sum((total for when, total in self.leaving if when <= start), ZERO)
        return spend + sum((total for when, total in self.added if start < when <= at), ZERO)

    def leaves_between(self, after: datetime, until: datetime) -> bool:
        """Does a purchase leave the window when its start moves from `after` to `until`?"""
        return any(after < when <= until for when, _ in self.leaving) or \
            any(after < when <= until for when, _ in self.added)


@dataclass(frozen=True)
class TierMove:
    member_id: str
    old: Tier
    new: Tier
    rolling_spend: Decimal
    at: datetime
    identity: str  # the sale's event id, or the swept day


@dataclass(frozen=True)
class ProfileAt:
    """A member's profile as it stood at `as_of` (one per sale, one per tier moved by a sweep)."""

    profile: Profile
    as_of: datetime
    tier: Tier
    points: int
    identity: str


@dataclass
class Walked:
    """What a batch decided, in the order it decided it."""

    watermark: datetime | None = None
    profiles: list[ProfileAt] = field(default_factory=list)
    tier_moves: list[TierMove] = field(default_factory=list)
    new_lots: list[dict[str, Any]] = field(default_factory=list)   # with a provisional `id` (NEW_LOT_IDS + n)
    taken: dict[int, int] = field(default_factory=dict)           # lot id -> points taken (spent or lapsed)
    ledger: list[dict[str, Any]] = field(default_factory=list)     # `lot` (an id) for expiries, else `cause`


def needs_visit_history(books: Mapping[str, MemberBook], events: Iterable[Envelope[Sale]]) -> set[str]:
    """Members with a visit in this batch earlier than one already counted: their rhythm is rebuilt
    from every visit day, so the handler loads the stored ones."""
    last: dict[str, date | None] = {}
    out: set[str] = set()
    for event in events:
        sale = event.payload
        if sale.member_id is None or sale.kind != "sale":
            continue
        member = sale.member_id
        if member not in last:
            known = books.get(member)
            last[member] = known.profile.rhythm.last_visit_day if known else None
        day, seen = sale.occurred_at.date(), last[member]
        if seen is not None and day < seen:
            out.add(member)
        last[member] = day if seen is None else max(seen, day)
    return out


class MemberWalk:
    """Applies sales one at a time; members not in `books` are started empty."""

    def __init__(self, watermark: datetime | None, books: dict[str, MemberBook], rules: LoyaltyRules,
                 catalog: Mapping[str, CatalogEntry]) -> None:
        self.books = books
        self.rules = rules
        self.catalog = catalog
        self.window = timedelta(days=rules.tier_window_days)
        self.out = Walked(watermark=watermark)
        self.swept_at = midnight_of(watermark) if watermark is not None else None
        self._next_lot = NEW_LOT_IDS

    def category_of(self, sku: str) -> str | None:
        entry = self.catalog.get(sku)
        return entry[0] if entry else None

    def apply(self, events: Iterable[Envelope[Sale]]) -> Walked:
        for event in events:
            self.apply_one(event)
        return self.out

    def apply_one(self, event: Envelope[Sale]) -> None:
        sale = event.payload
        mark = self.out.watermark
        if mark is None or sale.occurred_at > mark:
            if mark is not None and sale.occurred_at.astimezone(UTC).date() > mark.astimezone(UTC).date():
                self._sweep(midnight_of(sale.occurred_at))
            self.out.watermark = mark = sale.occurred_at
            if self.swept_at is None:
                self.swept_at = midnight_of(mark)
        member_id = sale.member_id
        if member_id is None:
            return
        book = self.books.get(member_id)
        if book is None:
            book = self.books[member_id] = MemberBook(Profile(member_id))
        identity = str(event.event_id)
        profile = apply_sale(book.profile, sale, self.catalog)
        if sale.kind == "sale":
            book.batch_visit_days.append(sale.occurred_at.date())
        if profile.rhythm_needs_rebuild:
            if book.prior_visit_days is None:
                raise LookupError(f"member {member_id} has an out-of-order visit but no visit history was loaded")
            profile = replace(profile, rhythm=rhythm_of(book.prior_visit_days + book.batch_visit_days),
                              rhythm_needs_rebuild=False)
        book.profile, book.touched = profile, True
        book.added.append((sale.occurred_at, sale.total))
        self._points(book, event, mark)
        self._retier(book, mark, identity)
        self.out.profiles.append(self._profile_at(book, mark, identity))

    # --- points ------------------------------------------------------------------------------

    def _points(self, book: MemberBook, event: Envelope[Sale], mark: datetime) -> None:
        """Earn, lapse what is due at the event time reached, take back for a return."""
        sale, member_id, cause = event.payload, book.profile.member_id, str(event.event_id)
        rules = self.rules
        if sale.kind == "sale":
            points = points_for(sale, rules, self.category_of)
            if points > 0:
                lot = Lot(self._next_lot, points, expires_at(sale.occurred_at, rules), sale.occurred_at)
                self._next_lot += 1
                book.lots.append(lot)
                self.out.new_lots.append({"id": lot.lot_id, "member_id": member_id, "points": points,
                                          "earned_at": sale.occurred_at, "expires_at": lot.expires_at, "cause": cause})
                self.out.ledger.append({"member_id": member_id, "kind": "earn", "points": points, "cause": cause,
                                        "occurred_at": sale.occurred_at})
        for lot_id, points in expired(book.lots, mark):
            lot = next(lot for lot in book.lots if lot.lot_id == lot_id)
            self._take(book, lot_id, points)
            self.out.ledger.append({"member_id": member_id, "kind": "expire", "points": -points, "lot": lot_id,
                                    "occurred_at": lot.expires_at})
        if sale.kind == "return":
            taken = take_back(book.lots, points_for(sale, rules, self.category_of), sale.occurred_at)
            for lot_id, points in taken:
                self._take(book, lot_id, points)
            self.out.ledger.append({"member_id": member_id, "kind": "reverse", "points": -sum(p for _, p in taken),
                                    "cause": cause, "occurred_at": sale.occurred_at})

    def _take(self, book: MemberBook, lot_id: int, points: int) -> None:
        self.out.taken[lot_id] = self.out.taken.get(lot_id, 0) + points
        book.lots = [replace(lot, remaining=lot.remaining - points) if lot.lot_id == lot_id else lot
                     for lot in book.lots]

    # --- tiers -------------------------------------------------------------------------------

    def _retier(self, book: MemberBook, at: datetime, identity: str) -> bool:
        spend = book.rolling_spend(at, self.window).quantize(CENT)
        new = tier_for(spend, self.rules)
        if new == book.tier:
            return False
        self.out.tier_moves.append(TierMove(book.profile.member_id, book.tier, new, spend, at, identity))
        book.tier = new
        return True

    def _sweep(self, midnight: datetime) -> None:
        """Midnight of a new event-time day: a tiered member whose old purchases left the window since
        the last review may have slipped below their tier (a member who buys is re-tiered at the sale)."""
        assert self.swept_at is not None
        after, until = self.swept_at - self.window, midnight - self.window
        day = midnight.date().isoformat()
        for member_id in sorted(self.books):
            book = self.books[member_id]
            if book.tier != "member" and book.leaves_between(after, until) and self._retier(book, midnight, day):
                self.out.profiles.append(self._profile_at(book, midnight, day))
        self.swept_at = midnight

    def _profile_at(self, book: MemberBook, at: datetime, identity: str) -> ProfileAt:
        return ProfileAt(book.profile, at, book.tier, balance(book.lots, at), identity)


def spend_horizon(watermark: datetime | None, events: Sequence[Envelope[Sale]], rules: LoyaltyRules) -> datetime:
    """Stored purchases at or before this never count in any window the batch values."""
    first: datetime = watermark if watermark is not None else min(e.payload.occurred_at for e in events)
    return midnight_of(first) - timedelta(days=rules.tier_window_days)


def leaving_until(events: Sequence[Envelope[Sale]], watermark: datetime | None, rules: LoyaltyRules) -> datetime:
    """The latest window start the batch values: purchases up to here may leave it."""
    times: list[datetime] = [e.payload.occurred_at for e in events]
    latest = max(times + ([watermark] if watermark is not None else []))
    return latest - timedelta(days=rules.tier_window_days)

