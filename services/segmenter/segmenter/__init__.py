"""segmenter: value tiers and behaviour segments learned online, churn risk, market-basket rules.

Being built (issue 5): the pure market-basket module comes first; the service entry point
(`python -m segmenter`) arrives with the consumers, and `crm up` starts it from then on.
"""

SERVICE_NAME = "segmenter"
