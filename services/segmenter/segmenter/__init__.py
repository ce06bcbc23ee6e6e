"""segmenter: value tiers, personas and behaviour clusters learned online on every profile change,
churn risk and dormancy by each member's own rhythm, market-basket rules and product analytics."""

SERVICE_NAME = "segmenter"
