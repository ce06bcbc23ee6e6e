"""Replaying recorded sales into the system: through the gateway over HTTP, or straight onto Kafka.

Per-customer order is kept: sales are spread over lanes by partition key and each lane sends its
sales in event-time order. Replay is idempotent: event ids are derived from the sales, the
gateway answers a resubmitted sale with its original result, and every consumer dedupes.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
from tqdm import tqdm

from crm_shared.events import Product, Sale, product_listed, sale_recorded
from crm_shared.kafka import make_producer
from crm_shared.serde import encode, encode_key
from crm_shared.topics import CATALOG_PRODUCTS, POS_SALES

Via = Literal["http", "kafka"]
RETRYABLE = {429, 502, 503, 504}


@dataclass
class ReplayOutcome:
    via: Via
    sales: int = 0
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    refused: Counter[int] = field(default_factory=Counter)
    refusal_examples: list[str] = field(default_factory=list)
    retries: int = 0
    seconds: float = 0.0

    @property
    def lines_per_second(self) -> float:
        return self.lines / self.seconds if self.seconds else 0.0

    def plus(self, other: ReplayOutcome) -> ReplayOutcome:
        """Two parts of one replay, counted as one."""
        return ReplayOutcome(via=self.via, sales=self.sales + other.sales, lines=self.lines + other.lines,
                             accepted=self.accepted + other.accepted, duplicates=self.duplicates + other.duplicates,
                             refused=self.refused + other.refused,
                             refusal_examples=(self.refusal_examples + other.refusal_examples)[:10],
                             retries=self.retries + other.retries, seconds=self.seconds + other.seconds)

    def as_table(self) -> list[tuple[str, str]]:
        rows = [("sent via", self.via), ("sales and returns sent", f"{self.sales:,}"), ("lines sent", f"{self.lines:,}")]
        if self.via == "http":
            rows += [("accepted (202)", f"{self.accepted:,}"), ("already recorded (200)", f"{self.duplicates:,}")]
            rows += [(f"refused ({status})", f"{count:,}") for status, count in sorted(self.refused.items())]
            rows += [("retries (gateway busy or down)", f"{self.retries:,}")]
        else:
            rows += [("published", f"{self.accepted:,}")]
        rows += [("elapsed", f"{self.seconds:.1f} s"), ("lines/s", f"{self.lines_per_second:,.0f}")]
        return rows


def lanes_for(sales: Sequence[Sale], lanes: int) -> list[list[Sale]]:
    """Split sales over lanes by partition key, keeping each key's sales in order within its lane."""
    out: list[list[Sale]] = [[] for _ in range(lanes)]
    for sale in sales:
        out[zlib.crc32(sale.partition_key.encode()) % lanes].append(sale)
    return out


def batches(sales: Sequence[Sale], max_sales: int, max_bytes: int) -> list[tuple[list[Sale], list[bytes]]]:
    """Consecutive chunks of at most `max_sales` sales and `max_bytes` of JSON (the gateway's body limit)."""
    out: list[tuple[list[Sale], list[bytes]]] = []
    chunk: list[Sale] = []
    encoded: list[bytes] = []
    size = 0
    for sale in sales:
        body = sale.model_dump_json().encode()
        if chunk and (len(chunk) >= max_sales or size + len(body) + 1 > max_bytes):
            out.append((chunk, encoded))
            chunk, encoded, size = [], [], 0
        chunk.append(sale)
        encoded.append(body)
        size += len(body) + 1
    if chunk:
        out.append((chunk, encoded))
    return out


def print_table(title: str, rows: list[tuple[str, str]], echo: Callable[[str], None] = print) -> None:
    width = max((len(k) for k, _ in rows), default=10)
    echo(title)
    for key, value in rows:
        echo(f"  {key.ljust(width)}  {value}")


async def replay_http(sales: Sequence[Sale], *, gateway_url: str, api_key: str | None, speed: float | None,
                      lanes: int = 8, batch_size: int = 200, max_batch_bytes: int = 900_000, retry_for: float = 120.0,
                      progress: bool = True) -> ReplayOutcome:
    """Through the gateway. As fast as possible: offline-catch-up batches. With `speed`: one POST per
    sale at its event time, `speed` times faster than it happened, each store with its own pos key."""
    outcome = ReplayOutcome(via="http", sales=len(sales), lines=sum(len(s.lines) for s in sales))
    bar = tqdm(total=len(sales), unit="sale", desc="replay via http", disable=not progress, mininterval=0.5)
    limits = httpx.Limits(max_connections=lanes * 2, max_keepalive_connections=lanes * 2)
    started = time.perf_counter()
    first_event = min((s.occurred_at for s in sales), default=None)

    async with httpx.AsyncClient(base_url=gateway_url, limits=limits, timeout=60.0) as client:

        async def post(path: str, body: bytes, key: str) -> httpx.Response:
            deadline = time.monotonic() + retry_for
            delay = 0.2
            while True:
                try:
                    response = await client.post(path, content=body, headers={"content-type": "application/json",
                                                                                 "x-api-key": key})
                    if response.status_code not in RETRYABLE:
                        return response
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                else:
                    if time.monotonic() > deadline:
                        return response
                outcome.retries += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 3.0)

        def record(status: int, what: Any) -> None:
            if status == 202:
                outcome.accepted += 1
            elif status == 200:
                outcome.duplicates += 1
            else:
                outcome.refused[status] += 1
                if len(outcome.refusal_examples) < 10:
                    outcome.refusal_examples.append(str(what)[:300])

        async def run_lane(lane: list[Sale]) -> None:
            if speed is None:
                for chunk, encoded in batches(lane, batch_size, max_batch_bytes):
                    body = b'{"sales":[' + b",".join(encoded) + b"]}"
                    response = await post("/v1/sales/batch", body, api_key or "dev-ops")
                    if response.status_code != 200:
                        for _ in chunk:
                            record(response.status_code, response.text)
                    else:
                        for item in response.json()["results"]:
                            record(item["http_status"], item)
                    bar.update(len(chunk))
                return
            assert first_event is not None
            for sale in lane:
                due = (sale.occurred_at - first_event).total_seconds() / speed
                wait = due - (time.perf_counter() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
                response = await post("/v1/sales", sale.model_dump_json().encode(), api_key or f"dev-pos-{sale.store_id}")
                record(response.status_code, response.text)
                bar.update(1)

        await asyncio.gather(*(run_lane(lane) for lane in lanes_for(sales, lanes) if lane))
    bar.close()
    outcome.seconds = time.perf_counter() - started
    return outcome


async def replay_kafka(sales: Sequence[Sale], *, bootstrap: str, topic_prefix: str = "", speed: float | None = None,
                       progress: bool = True, source: str = "crm-replay") -> ReplayOutcome:
    """Straight onto `pos.sales.v1`, for bulk loads. Bypasses the gateway's ledger: the file itself is
    the record, and replaying it again publishes the same event ids, which consumers skip."""
    outcome = ReplayOutcome(via="kafka", sales=len(sales), lines=sum(len(s.lines) for s in sales))
    topic = POS_SALES.qualified(topic_prefix)
    producer = make_producer(bootstrap, client_id="crm-replay", linger_ms=20, max_batch_size=1024 * 1024,
                             max_request_size=8 * 1024 * 1024)
    bar = tqdm(total=len(sales), unit="sale", desc="replay via kafka", disable=not progress, mininterval=0.5)
    await producer.start()
    started = time.perf_counter()
    first_event = sales[0].occurred_at if sales else None
    try:
        pending: list[asyncio.Future[Any]] = []
        for sale in sales:
            if speed is not None and first_event is not None:
                wait = (sale.occurred_at - first_event).total_seconds() / speed - (time.perf_counter() - started)
                if wait > 0:
                    await asyncio.sleep(wait)
            event = sale_recorded(sale, source=source)
            pending.append(await producer.send(topic, value=encode(event), key=encode_key(event.key)))
            if len(pending) >= 2000:
                await asyncio.gather(*pending)
                outcome.accepted += len(pending)
                bar.update(len(pending))
                pending.clear()
        await asyncio.gather(*pending)
        outcome.accepted += len(pending)
        bar.update(len(pending))
    finally:
        await producer.stop()
        bar.close()
    outcome.seconds = time.perf_counter() - started
    return outcome


async def publish_catalog(products: Sequence[Product], *, bootstrap: str, topic_prefix: str = "",
                          source: str = "crm-catalog", progress: bool = True) -> int:
    """Every product onto the compacted `catalog.products.v1`, keyed by sku."""
    topic = CATALOG_PRODUCTS.qualified(topic_prefix)
    producer = make_producer(bootstrap, client_id="crm-catalog", linger_ms=20, max_batch_size=1024 * 1024)
    await producer.start()
    listed_at = datetime.now(UTC)  # a catalog load is an act of now, not a replay of the past
    try:
        futures = []
        for product in tqdm(products, unit="product", desc="catalog", disable=not progress, mininterval=0.5):
            event = product_listed(product, source=source, occurred_at=listed_at)
            futures.append(await producer.send(topic, value=encode(event), key=encode_key(event.key)))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(products)
