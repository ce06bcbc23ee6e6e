"""Market-basket association rules over an event-time window of baskets (pure: no I/O, no clock).

One `BasketRules` holds the baskets of one window (the service keeps one per store and one for the
whole chain) and answers, at any moment, exactly what a batch Apriori over those baskets would:
every rule `antecedents -> consequent` (a single item on the right) with

    support    = baskets holding antecedents and consequent / baskets in the window
    confidence = baskets holding antecedents and consequent / baskets holding the antecedents
    lift       = confidence / (baskets holding the consequent / baskets in the window)

A threshold is met when the value, computed as the float division above, is >= the threshold (as in
mlxtend and efficient-apriori). Rules with an empty antecedent are not produced.

How it is kept, and why (measured with `bench/basket_rules.py` on arules' Groceries, 9,835 baskets
of up to 32 items, on 2 shared cores, CPython 3.11):

- The rules at min support 0.001 / min confidence 0.5 (arules: 5,668) need itemsets of up to 6
  items (13,492 frequent itemsets). Counting every sub-itemset of up to 6 items of each basket as
  it arrives would be 12.1 million counter updates for this month, 1.15 million for the one
  32-item basket: far too slow on the ingest path, and almost all of them never frequent.
- Keeping only the frequent itemsets and their negative border current per basket is exact too,
  but a basket that lifts a border itemset over the threshold (or an eviction that lowers it, the
  threshold being relative to the window) sets off candidate generation of unbounded size on the
  ingest path, and every support threshold below the tracked one would need a full mining anyway.
- Chosen: per basket, only what is bounded by the basket's own size is updated in place: the
  basket itself (for eviction and the vertical index) and the count of each item. Feeding the 9,835
  baskets one by one takes 0.02 s (add(): median 1.5 us, p99 3 us). Pair counts were kept too until
  the whole-year replay (`bench/e2e.py`) showed them to cost O(items²) per basket: Online Retail's
  baskets hold 22 items on average and up to ~500, counted once per store and once for the chain,
  and the pair counting was a quarter of the segmenter's CPU and most of its memory. Longer itemsets
  are mined when rules are asked for, by Eclat on a vertical index (one Python int per item, bit i =
  i-th basket in the window): 0.07 to 0.09 s for the 5,668 rules (the same with or without the pair
  counts pruning the second level), against mlxtend's apriori 5.1-5.8 s and efficient-apriori 0.7-1.3 s on
  the same data. The mined itemsets are cached until the next basket changes the window and serve
  any higher support threshold as they are (another query: ~20 ms, building the rules).
  `bought_with` scans the window's baskets when it is asked.

Exactness does not depend on the data: the counts are integers, the index is rebuilt from exactly
the baskets in the window, and Eclat enumerates every itemset meeting the support threshold.
A very low support threshold on a small window (say a small store's day) makes any exact Apriori
enumerate a great many itemsets; `max_rule_items` (arules' `maxlen`, default 10) bounds it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import orjson
from crm_shared.events import RuleDocument

STATE_VERSION = 1
ARULES_MAX_RULE_ITEMS = 10
MAX_ITEMSETS = 300_000  # beyond this a threshold is too low for the window: refuse rather than run out of memory


class TooManyItemsets(ValueError):
    """The support threshold lets through more itemsets than `max_itemsets` (say, a small store whose
    few baskets are the same long wholesale order: every subset of it is "frequent")."""

    def __init__(self, limit: int, min_count: int, baskets: int) -> None:
        super().__init__(f"more than {limit:,} frequent itemsets at {min_count} of {baskets:,} baskets: "
                         "raise min_support")
        self.limit, self.min_count, self.baskets = limit, min_count, baskets

    def __reduce__(self) -> tuple[type[TooManyItemsets], tuple[int, int, int]]:
        return type(self), (self.limit, self.min_count, self.baskets)  # it crosses from the mining process


@dataclass(frozen=True, slots=True)
class AssociationRule:
    """Baskets holding all of `antecedents` also hold `consequent`, this often."""

    antecedents: frozenset[str]
    consequent: str
    support: float
    confidence: float
    lift: float
    baskets: int  # baskets holding antecedents and consequent

    def document(self) -> RuleDocument:
        """The rule as `analytics.associations.v1` carries it."""
        return RuleDocument(antecedents=sorted(self.antecedents), consequent=self.consequent, support=self.support,
                            confidence=self.confidence, lift=self.lift)


@dataclass(frozen=True, slots=True)
class BoughtTogether:
    """How often `sku` is in the same basket as the product asked about."""

    sku: str
    baskets: int  # baskets holding both
    support: float
    confidence: float  # share of the product's baskets that also hold `sku`
    lift: float


@dataclass(frozen=True, slots=True)
class _Basket:
    items: frozenset[str]
    at: datetime
    arrival: int  # tells a re-added basket from a stale eviction entry of its earlier self


def rule_order(rule: AssociationRule) -> tuple[float, float, float, tuple[str, ...], str]:
    """Strongest first: lift, then confidence, then support, then the items, so the order never ties."""
    return (-rule.lift, -rule.confidence, -rule.support, tuple(sorted(rule.antecedents)), rule.consequent)


def top_rules_changed(previous: Sequence[AssociationRule], current: Sequence[AssociationRule]) -> bool:
    """True when the ranked rules differ in which rules they are or in their order (not in their figures)."""
    return [(r.antecedents, r.consequent) for r in previous] != [(r.antecedents, r.consequent) for r in current]


def min_basket_count(min_support: float, baskets: int) -> int:
    """The fewest baskets an itemset must be in so that `count / baskets >= min_support` in floats."""
    count = max(1, math.ceil(min_support * baskets))
    # The product is rounded; settle on the exact float comparison the support is defined by.
    while count > 1 and (count - 1) / baskets >= min_support:
        count -= 1
    while count <= baskets and count / baskets < min_support:
        count += 1
    return count


def worth_mining_again(window: BasketRules, refused_at: int | None, refusals: int = 1) -> bool:
    """After a window's rules were refused (too many itemsets) `refusals` times in a row, the last
    time when it had counted `refused_at` baskets: not before a tenth of the window is new, then two
    tenths after a second refusal in a row, four, eight, and at most the whole window. Sooner, it
    would mine the same ~300,000 itemsets (a second or more of CPU, ~100 MB) again at every look, only
    to refuse them again; a store whose window is one wholesale order repeated stays refused for as
    long as its baskets do, and on a replay a tenth of a window is new every second."""
    if refused_at is None:
        return True
    tenths = min(1 << min(max(1, refusals) - 1, 4), 10)
    return window.arrivals - refused_at >= max(1, len(window) * tenths // 10)


class BasketRules:
    """The baskets of one event-time window, with their item counts, and the rules they imply.

    Pair counts are not kept: they cost O(items²) per basket on every arrival and expiry (and most of
    the service's memory), while mining gets them from the vertical bitsets and `bought_with` from a
    scan of the window's baskets, only when asked.

    `window`: when set, a basket older than the latest event time seen minus `window` is evicted as
    newer baskets arrive, and a basket that arrives already that old is refused.
    """

    def __init__(self, *, window: timedelta | None = None, max_rule_items: int = ARULES_MAX_RULE_ITEMS,
                 max_itemsets: int = MAX_ITEMSETS) -> None:
        if window is not None and window <= timedelta(0):
            raise ValueError("window must be positive")
        if max_rule_items < 2:
            raise ValueError("a rule has at least 2 items")
        self.window = window
        self.max_rule_items = max_rule_items
        self.max_itemsets = max_itemsets
        self.latest_at: datetime | None = None
        self._baskets: dict[str, _Basket] = {}
        self._item_baskets: dict[str, int] = {}
        self._by_time: list[tuple[datetime, int, str]] = []
        self._arrivals = 0
        self._version = 0
        # version, min count, itemsets, their longest allowed length
        self._mined: tuple[int, int, dict[frozenset[str], int], int] | None = None
        self._refused: tuple[int, int, int] | None = None  # version, min count, depth of the last TooManyItemsets

    # -- the window --------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """Changes whenever the window's baskets do."""
        return self._version

    @property
    def arrivals(self) -> int:
        """Baskets counted in so far, ever (evictions do not lower it)."""
        return self._arrivals

    def __len__(self) -> int:
        return len(self._baskets)

    def __contains__(self, basket_id: object) -> bool:
        return basket_id in self._baskets

    def baskets_with(self, sku: str) -> int:
        return self._item_baskets.get(sku, 0)

    def item_lists(self) -> list[tuple[str, ...]]:
        """Each basket's items, in window order: what `mine_rules` takes to mine this window elsewhere."""
        return [tuple(basket.items) for basket in self._baskets.values()]

    def known_refusal(self, min_support: float, max_items: int | None = None) -> TooManyItemsets | None:
        """The refusal this window's current baskets already earned at these thresholds (or stricter
        ones), so that it is not mined again only to be refused again."""
        if not self._baskets:
            return None
        return self._refusal(min_basket_count(min_support, len(self._baskets)), self._depth(max_items))

    def remember_refusal(self, version: int, refused: TooManyItemsets, max_items: int | None = None) -> None:
        """`refused` came from mining this window at `version` elsewhere (`mine_rules`)."""
        self._refused = (version, refused.min_count, self._depth(max_items))

    def _refusal(self, min_count: int, depth: int) -> TooManyItemsets | None:
        """Mining at `min_count` and `depth` is refused already: the current baskets were refused at a
        count as low or higher and a depth as shallow or shallower (fewer itemsets than asked for now)."""
        refused = self._refused
        if refused is not None and refused[0] == self._version and refused[1] >= min_count and refused[2] <= depth:
            return TooManyItemsets(self.max_itemsets, min_count, len(self._baskets))
        return None

    def _depth(self, max_items: int | None) -> int:
        return self.max_rule_items if max_items is None else max(2, min(max_items, self.max_rule_items))

    def add(self, basket_id: str, items: Iterable[str], at: datetime) -> bool:
        """Count a basket (its distinct items; an empty one still counts, as in Apriori).

        False when it is already counted or older than the window.
        """
        if at.tzinfo is None:
            raise ValueError("event time must be timezone-aware")
        if basket_id in self._baskets:
            return False  # a redelivered sale
        if self.window is not None and self.latest_at is not None and at < self.latest_at - self.window:
            return False
        self._count(basket_id, frozenset(items), at)
        if self.latest_at is None or at > self.latest_at:
            self.latest_at = at
            if self.window is not None:
                self.expire_before(at - self.window)
        return True

    def remove(self, basket_id: str) -> bool:
        """Forget a basket (a voided sale). False when it is not in the window."""
        basket = self._baskets.pop(basket_id, None)
        if basket is None:
            return False
        self._uncount(basket.items)
        if len(self._by_time) > 2 * len(self._baskets) + 64:
            self._by_time = [(b.at, b.arrival, i) for i, b in self._baskets.items()]
            heapq.heapify(self._by_time)
        return True

    def expire_before(self, cutoff: datetime) -> int:
        """Forget every basket whose event time is before `cutoff`; how many were forgotten."""
        expired = 0
        while self._by_time and self._by_time[0][0] < cutoff:
            _, arrival, basket_id = heapq.heappop(self._by_time)
            basket = self._baskets.get(basket_id)
            if basket is not None and basket.arrival == arrival:
                del self._baskets[basket_id]
                self._uncount(basket.items)
                expired += 1
        return expired

    def _count(self, basket_id: str, items: frozenset[str], at: datetime) -> None:
        self._arrivals += 1
        self._baskets[basket_id] = _Basket(items, at, self._arrivals)
        heapq.heappush(self._by_time, (at, self._arrivals, basket_id))
        counts = self._item_baskets
        for item in items:
            counts[item] = counts.get(item, 0) + 1
        self._version += 1

    def _uncount(self, items: frozenset[str]) -> None:
        counts = self._item_baskets
        for item in items:
            left = counts[item] - 1
            if left:
                counts[item] = left
            else:
                del counts[item]
        self._version += 1

    # -- what the window says ----------------------------------------------------------------

    def bought_with(self, sku: str, limit: int | None = 10) -> list[BoughtTogether]:
        """The products most often in the same basket as `sku`, most baskets first."""
        own = self._item_baskets.get(sku, 0)
        if not own:
            return []
        n = len(self._baskets)
        companions: dict[str, int] = {}
        for basket in self._baskets.values():
            if sku in basket.items:
                for other in basket.items:
                    companions[other] = companions.get(other, 0) + 1
        companions.pop(sku, None)
        found = [
            BoughtTogether(other, together, together / n, together / own, together * n / (own * self._item_baskets[other]))
            for other, together in companions.items()
        ]
        found.sort(key=lambda one: (-one.baskets, -one.lift, one.sku))
        return found if limit is None else found[:limit]

    def rules(self, min_support: float, min_confidence: float, min_lift: float = 0.0,
              antecedent: frozenset[str] | None = None, limit: int | None = None,
              max_items: int | None = None, keep_itemsets: bool = True) -> list[AssociationRule]:
        """Every rule meeting all three thresholds (and whose antecedents hold all of `antecedent`), strongest first.

        `max_items` (at most `max_rule_items`) bounds a rule's items, antecedents and consequent
        together: 3 gives the "bought A and B, offer C" rules at a bounded cost. `keep_itemsets=False`
        leaves the mined itemsets uncached (see `frequent_itemsets`)."""
        if not 0.0 < min_support <= 1.0:
            raise ValueError("min_support must be in (0, 1]")
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError("min_confidence must be in [0, 1]")
        if min_lift < 0.0 or (limit is not None and limit < 0):
            raise ValueError("min_lift and limit cannot be negative")
        n = len(self._baskets)
        if n == 0:
            return []
        min_count = min_basket_count(min_support, n)
        itemsets = self.frequent_itemsets(min_count, max_items, keep=keep_itemsets)
        longest = self.max_rule_items if max_items is None else max_items
        wanted = antecedent or frozenset()

        def qualifying() -> Iterable[AssociationRule]:
            for itemset, together in itemsets.items():
                if not 2 <= len(itemset) <= longest or together < min_count or not wanted <= itemset:
                    continue
                for consequent in itemset:
                    if consequent in wanted:
                        continue
                    antecedents = itemset - {consequent}
                    confidence = together / itemsets[antecedents]
                    if confidence < min_confidence:
                        continue
                    lift = together * n / (itemsets[antecedents] * self._item_baskets[consequent])
                    if lift >= min_lift:
                        yield AssociationRule(antecedents, consequent, together / n, confidence, lift, together)

        if limit is None:
            return sorted(qualifying(), key=rule_order)
        # The top `limit` without holding every qualifying rule: a window of repeated long baskets has
        # hundreds of thousands of them (a 214-basket store: ~500 MB as a list). `rule_order` never
        # ties, so this is exactly `sorted(...)[:limit]`.
        return heapq.nsmallest(limit, qualifying(), key=rule_order)

    def frequent_itemsets(self, min_count: int, max_items: int | None = None,
                          keep: bool = True) -> Mapping[frozenset[str], int]:
        """Every itemset of up to `max_items` (default `max_rule_items`) items in at least `min_count`
        baskets (and maybe rarer or longer ones: the cache).

        `keep=False`: the itemsets are not cached for the next question. A window of repeated long
        baskets (a store's standing wholesale order) can have up to `max_itemsets` of them, ~100 MB,
        and one cache per store kept them all (the segmenter grew to 938 MB in `bench/e2e.py`)."""
        depth = self._depth(max_items)
        mined = self._mined
        if mined is not None and mined[0] == self._version and mined[1] <= min_count and mined[3] >= depth:
            return mined[2]
        refused = self._refusal(min_count, depth)
        if refused is not None:
            raise refused  # known without mining again
        try:
            itemsets = self._eclat(max(1, min_count), depth)
        except TooManyItemsets:
            self._refused = (self._version, min_count, depth)
            raise
        if keep:
            self._mined = (self._version, min_count, itemsets, depth)
        return itemsets

    def _eclat(self, min_count: int, depth: int) -> dict[frozenset[str], int]:
        # Rarest first keeps the bitsets that are and-ed deeper down short of set bits.
        frequent = sorted((c, i) for i, c in self._item_baskets.items() if c >= min_count)
        order = [item for _, item in frequent]
        bits = self._vertical_index(order)
        itemsets: dict[frozenset[str], int] = {}

        def grow(prefix: tuple[str, ...], members: list[tuple[str, int, int]]) -> None:
            for position, (item, item_bits, count) in enumerate(members):
                itemset = (*prefix, item)
                itemsets[frozenset(itemset)] = count
                if len(itemsets) > self.max_itemsets:
                    raise TooManyItemsets(self.max_itemsets, min_count, len(self._baskets))
                if len(itemset) >= depth:
                    continue
                extensions: list[tuple[str, int, int]] = []
                for other, other_bits, _ in members[position + 1:]:
                    joint = item_bits & other_bits
                    joint_count = joint.bit_count()
                    if joint_count >= min_count:
                        extensions.append((other, joint, joint_count))
                if extensions:
                    grow(itemset, extensions)

        grow((), [(item, bits[item], count) for count, item in frequent])
        return itemsets

    def _vertical_index(self, items: Sequence[str]) -> dict[str, int]:
        rows = {item: bytearray((len(self._baskets) + 7) // 8) for item in items}
        for position, basket in enumerate(self._baskets.values()):
            byte, bit = divmod(position, 8)
            mask = 1 << bit
            for item in basket.items:
                row = rows.get(item)
                if row is not None:
                    row[byte] |= mask
        return {item: int.from_bytes(row, "little") for item, row in rows.items()}

    # -- snapshot ----------------------------------------------------------------------------

    def to_state(self) -> bytes:
        """The window as bytes (JSON), for the service to persist; the counts are rebuilt on restore."""
        return orjson.dumps({
            "state_version": STATE_VERSION,
            "window_microseconds": None if self.window is None else self.window // timedelta(microseconds=1),
            "max_rule_items": self.max_rule_items,
            "latest_at": self.latest_at,
            "baskets": [[basket_id, sorted(b.items), b.at] for basket_id, b in self._baskets.items()],
        })

    @classmethod
    def from_state(cls, state: bytes) -> BasketRules:
        data = orjson.loads(state)
        if data.get("state_version") != STATE_VERSION:
            raise ValueError(f"unknown basket-rules state version {data.get('state_version')!r}")
        window = None if data["window_microseconds"] is None else timedelta(microseconds=data["window_microseconds"])
        restored = cls(window=window, max_rule_items=data["max_rule_items"])
        for basket_id, items, at in data["baskets"]:
            restored._count(basket_id, frozenset(items), datetime.fromisoformat(at))
        restored.latest_at = None if data["latest_at"] is None else datetime.fromisoformat(data["latest_at"])
        return restored


_UNDATED = datetime(1970, 1, 1, tzinfo=UTC)


def mine_rules(baskets: Iterable[Iterable[str]], min_support: float, min_confidence: float, min_lift: float = 0.0,
               antecedent: frozenset[str] | None = None, limit: int | None = None, max_items: int | None = None, *,
               max_rule_items: int = ARULES_MAX_RULE_ITEMS, max_itemsets: int = MAX_ITEMSETS) -> list[AssociationRule]:
    """`BasketRules.rules` over these baskets (a window's `item_lists()`), keeping nothing afterwards.

    The segmenter runs it in a process of its own (`segmenter.mining`): mining a window of repeated
    wholesale baskets allocates up to `max_itemsets` itemsets for a second or so, and in the service's
    process, among the baskets and decoded sales arriving meanwhile, each such look left the heap
    larger than before (`bench/e2e.py`: +4-5 KB per sale of steady traffic, in steps at each look)."""
    window = BasketRules(max_rule_items=max_rule_items, max_itemsets=max_itemsets)
    for position, items in enumerate(baskets):
        window.add(str(position), items, _UNDATED)
    return window.rules(min_support, min_confidence, min_lift, antecedent, limit, max_items, keep_itemsets=False)
