"""The retail CRM's shared package: the one place that defines events, topics, serde and settings."""
