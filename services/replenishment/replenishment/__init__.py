"""replenishment: live stock per store × SKU, online demand forecasts, reorder points, supplier orders."""

SERVICE_NAME = "replenishment"
