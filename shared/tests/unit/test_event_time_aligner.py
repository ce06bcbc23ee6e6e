"""`crm_shared.consumer.EventTimeAligner`: records go on in event-time order across partitions, never past
what a partition that is behind has shown, each partition's own order kept; patience ends a stall."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import TopicPartition
from crm_shared.consumer import Decoded, EventTimeAligner

TOPIC = "crm.member.profiles.v1"
T0 = datetime(2010, 12, 1, tzinfo=UTC)


def tp(partition: int) -> TopicPartition:
    return TopicPartition(TOPIC, partition)


def records(partition: int, days: list[int], first_offset: int = 0) -> list[Decoded[Any]]:
    """One partition's records, in its own order, each dated `T0 + day`."""
    return [Decoded(uuid.uuid4(), SimpleNamespace(occurred_at=T0 + timedelta(days=day), day=day, partition=partition),
                    SimpleNamespace(topic=TOPIC, partition=partition, offset=first_offset + i))  # type: ignore[arg-type]
            for i, day in enumerate(days)]


def aligner() -> EventTimeAligner[Any]:
    return EventTimeAligner(lambda event: event.occurred_at, patience_s=5.0)


def days_of(released: list[Decoded[Any]]) -> list[tuple[int, int]]:
    return [(item.event.partition, item.event.day) for item in released]


def test_nothing_behind_everything_goes_in_event_time_order() -> None:
    a = aligner()
    a.add(records(0, [300, 301, 302]))
    a.add(records(1, [1, 2, 303]))
    a.add(records(2, [150]))
    released, unaligned = a.release(unread=[], limit=100, now=0.0)
    assert days_of(released) == [(1, 1), (1, 2), (2, 150), (0, 300), (0, 301), (0, 302), (1, 303)]
    assert not unaligned and a.count() == 0


def test_a_partition_behind_holds_back_what_is_later_than_it_has_shown() -> None:
    """Partition 0's whole year was read first (one fetch drained); partition 1 has shown days 3 and 10
    and has more on the broker: once its day 10 has gone, only what comes before (day 10, partition 1)
    in the merge order (time, then partition) may go; its next records may be of day 10 too, and those
    go before partition 2's day 10."""
    a = aligner()
    a.add(records(0, list(range(0, 365, 5))))
    a.add(records(1, [3, 10]))
    a.add(records(2, [10, 11]))
    released, _ = a.release(unread=[tp(1)], limit=100, now=0.0)
    assert days_of(released) == [(0, 0), (1, 3), (0, 5), (0, 10), (1, 10)]  # partition 0's day 10 before 1's
    assert a.count(tp(0)) == 73 - 3 and a.first_held_offset(tp(0)) == 3 and a.first_held_offset(tp(1)) is None
    assert a.behind([tp(1)]) == [tp(1)]
    assert a.first_held_offset(tp(2)) == 0  # partition 2's day 10 waits: partition 1 may have more of day 10
    # partition 1's next fetch: another day 10, then day 40, the last it has; nothing is unread any more,
    # so the merge goes on to the end of what is held, in order
    a.add(records(1, [10, 40], first_offset=2))
    released, _ = a.release(unread=[], limit=100, now=0.1)
    assert days_of(released)[:4] == [(1, 10), (2, 10), (2, 11), (0, 15)]
    assert [d for _, d in days_of(released)] == sorted(d for _, d in days_of(released))
    assert (1, 40) in days_of(released) and a.count() == 0


def test_a_partition_that_runs_dry_during_a_release_stops_it_at_its_latest() -> None:
    """Partition 1 holds records (so it is not behind when the release starts) but has more on the
    broker: once the merge has handed on all it holds, nothing may pass its latest record read. (The
    first version of the aligner went on: on the year's profile updates from six partitions, one
    partition read to June 2 had its later June records overtaken by the others' June 21.)"""
    a = aligner()
    a.add(records(0, [1, 4, 7, 10, 13]))
    a.add(records(1, [2, 5]))
    released, _ = a.release(unread=[tp(1)], limit=100, now=0.0)
    assert days_of(released) == [(0, 1), (1, 2), (0, 4), (1, 5)]
    assert a.first_held_offset(tp(0)) == 2  # days 7, 10, 13 wait for partition 1's next records
    a.add(records(1, [6, 12], first_offset=2))  # its last two
    released, _ = a.release(unread=[], limit=100, now=0.1)
    assert days_of(released) == [(1, 6), (0, 7), (0, 10), (1, 12), (0, 13)]


def test_a_partition_behind_that_has_shown_nothing_holds_everything() -> None:
    a = aligner()
    a.add(records(0, [1, 2, 3]))
    released, unaligned = a.release(unread=[tp(1)], limit=100, now=0.0)
    assert released == [] and not unaligned and a.count() == 3


def test_each_partitions_own_order_is_kept_even_when_its_times_go_back() -> None:
    a = aligner()
    a.add(records(0, [5, 2, 8]))  # a till's clock that went back: the partition's order still wins
    a.add(records(1, [3, 4]))
    released, _ = a.release(unread=[], limit=100, now=0.0)
    assert days_of(released) == [(1, 3), (1, 4), (0, 5), (0, 2), (0, 8)]


def test_limit_and_ties_go_by_partition() -> None:
    a = aligner()
    a.add(records(2, [7, 7]))
    a.add(records(0, [7]))
    a.add(records(1, [7]))
    released, _ = a.release(unread=[], limit=3, now=0.0)
    assert days_of(released) == [(0, 7), (1, 7), (2, 7)]
    assert a.count() == 1 and a.first_held_offset(tp(2)) == 1


def test_patience_ends_a_stall_in_merge_order() -> None:
    a = aligner()
    a.add(records(0, [9, 1]))
    a.add(records(2, [4]))
    assert a.release(unread=[tp(1)], limit=100, now=100.0) == ([], False)
    assert a.release(unread=[tp(1)], limit=100, now=104.9) == ([], False)
    released, unaligned = a.release(unread=[tp(1)], limit=100, now=105.0)
    assert unaligned and days_of(released) == [(2, 4), (0, 9), (0, 1)]
    # released records reset the wait: the next stall waits its whole patience again
    a.add(records(0, [20], first_offset=2))
    assert a.release(unread=[tp(1)], limit=100, now=106.0) == ([], False)
    assert a.release(unread=[tp(1)], limit=100, now=110.0) == ([], False)
    assert a.release(unread=[tp(1)], limit=100, now=111.0)[1]


def test_partitions_no_longer_assigned_are_forgotten() -> None:
    a = aligner()
    a.add(records(0, [1, 2]))
    a.add(records(1, [3]))
    a.keep_only({tp(1)})
    assert a.count() == 1 and a.first_held_offset(tp(0)) is None
    released, _ = a.release(unread=[], limit=100, now=0.0)
    assert days_of(released) == [(1, 3)]


def exact_merge(partitions: list[list[int]]) -> list[tuple[int, int]]:
    """The order the aligner promises: all partitions read to their end, merged by (day, partition),
    each partition's own order kept."""
    import heapq

    return [(p, day) for day, p in heapq.merge(*[[(day, p) for day in days] for p, days in enumerate(partitions)])]


@pytest.mark.parametrize("seed", range(200))
def test_any_fetch_pattern_hands_on_the_exact_merge(seed: int) -> None:
    """A simulated backlog: partitions of different paces and sizes with ties between them, fetched in
    chunks of random sizes in random order (a partition holding its share is not fetched, as the
    consumer pauses it), released with random limits: whatever the pattern, what goes on is the exact
    merge. (Fetches that left a partition with records held and more on the broker, emptied part-way
    through a hand-out, broke this in the aligner's first version.)"""
    rng = random.Random(seed)
    partitions = []
    for _ in range(rng.randint(2, 6)):
        day, days = 0, []
        for _ in range(rng.randint(0, 60)):
            day += rng.choice((0, 0, 1, 2, 5))  # ties within a partition and across partitions
            days.append(day)
        partitions.append(days)
    a = aligner()
    read = [0] * len(partitions)
    share = rng.randint(1, 20)
    out: list[tuple[int, int]] = []
    for step in range(10_000):
        fetchable = [p for p, days in enumerate(partitions) if read[p] < len(days) and a.count(tp(p)) < share]
        for p in rng.sample(fetchable, rng.randint(0, len(fetchable))):
            n = rng.randint(1, 15)
            a.add(records(p, partitions[p][read[p]:read[p] + n], first_offset=read[p]))
            read[p] = min(read[p] + n, len(partitions[p]))
        unread = [tp(p) for p, days in enumerate(partitions) if read[p] < len(days)]
        released, unaligned = a.release(unread=unread, limit=rng.randint(1, 40), now=float(step) * 1e-3)
        assert not unaligned
        out += days_of(released)
        if not unread and not a.count():
            break
    assert out == exact_merge(partitions)
