"""ops-console: one web page for the people who run the shops' systems — live sales, segments,
basket rules, stock and purchase orders, campaign reports and consumer lag — gathered from the
five services' own HTTP APIs and the broker, with nothing stored of its own."""

SERVICE_NAME = "ops-console"
