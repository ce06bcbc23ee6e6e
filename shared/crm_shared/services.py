"""The services `crm up` runs: adding a service is one line here (plus its folder and compose block)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    module: str
    port: int
    # Consumer groups (without the topic prefix) and the topics they read, for `crm status`.
    consumer_groups: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @property
    def env_prefix(self) -> str:
        return self.module.upper() + "_"

    def installed(self) -> bool:
        """Built far enough to run: the package has its `__main__`."""
        try:
            return importlib.util.find_spec(f"{self.module}.__main__") is not None
        except ModuleNotFoundError:
            return False


SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec("pos-gateway", "pos_gateway", 8001, (("pos-gateway.live-stats", ("pos.sales.v1",)),)),
    ServiceSpec("member-profile", "member_profile", 8002, (("member-profile.sales", ("pos.sales.v1",)),
                                                           ("member-profile.catalog", ("catalog.products.v1",)),
                                                           ("member-profile.segments", ("member.segments.v1",)))),
    ServiceSpec("segmenter", "segmenter", 8003, (("segmenter.profiles", ("member.profiles.v1",)),
                                                 ("segmenter.sales", ("pos.sales.v1",)),
                                                 ("segmenter.erasures", ("member.erased.v1",)))),
    ServiceSpec("replenishment", "replenishment", 8004, (("replenishment.sales", ("pos.sales.v1",)),
                                                         ("replenishment.sell-through", ("pos.sales.v1",)),
                                                         ("replenishment.catalog", ("catalog.products.v1",)),
                                                         ("replenishment.receipts", ("inventory.receipts.v1",)),
                                                         ("replenishment.acks", ("supplier.acks.v1",)),
                                                         ("replenishment.offers", ("marketing.offers.v1",)))),
    ServiceSpec("notifier", "notifier", 8005, (("notifier.sales", ("pos.sales.v1",)),
                                               ("notifier.segments", ("member.segments.v1",)),
                                               ("notifier.tiers", ("member.tier_changed.v1",)),
                                               ("notifier.profiles", ("member.profiles.v1",)),
                                               ("notifier.erasures", ("member.erased.v1",)),
                                               ("notifier.rules", ("analytics.associations.v1",)),
                                               ("notifier.low-stock", ("inventory.low_stock.v1",)),
                                               ("notifier.receipts", ("inventory.receipts.v1",)),
                                               ("notifier.consents", ("member.consents.v1",)),
                                               ("notifier.catalog", ("catalog.products.v1",)))),
    ServiceSpec("ops-console", "ops_console", 8006),
)


def installed_services() -> list[ServiceSpec]:
    return [spec for spec in SERVICES if spec.installed()]
