"""notifier: personalised offers on marketing.offers.v1 — triggers (cross-sell from basket rules, dormant
wake-up, tier upgrade, welcome), guards (consent, caps, quiet hours, de-duplication, low stock, erasure),
control groups and measured uplift per campaign."""

SERVICE_NAME = "notifier"
