"""The segmenter's consumers as wired: no broker or database is touched to build them."""

from __future__ import annotations

from types import SimpleNamespace

from crm_shared.consumer import sale_from_the_future
from crm_shared.settings import CommonSettings
from segmenter.stream import sales_consumer


def test_a_sale_from_the_future_is_screened_out_before_it_moves_the_basket_windows() -> None:
    handlers = SimpleNamespace(apply_sales=None, after_sales=None)

    consumer = sales_consumer(CommonSettings(), None, handlers, batch=10)

    assert consumer.screen is sale_from_the_future
    assert consumer.topic.endswith("pos.sales.v1") and consumer.dlq_topic.endswith("pos.sales.v1.dlq")
