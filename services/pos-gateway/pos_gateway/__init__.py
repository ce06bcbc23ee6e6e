"""pos-gateway: takes sales and returns from store terminals, never loses an acknowledged sale."""

SERVICE_NAME = "pos-gateway"
