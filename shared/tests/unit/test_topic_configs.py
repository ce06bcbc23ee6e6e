"""Topic creation settings that erasure depends on."""

from crm_shared.kafka import MAX_COMPACTION_LAG_MS, new_topics
from crm_shared.topics import ALL_TOPICS


def test_compacted_topics_are_compacted_within_a_day_and_others_are_not_compacted() -> None:
    created = {t.name: t for t in new_topics(ALL_TOPICS, "p.", 6, 1)}
    for topic in ALL_TOPICS:
        config = created[topic.qualified("p.")].topic_configs
        if topic.compacted:
            assert config == {"cleanup.policy": "compact", "max.compaction.lag.ms": str(MAX_COMPACTION_LAG_MS)}
        else:
            assert config == {}
        if topic.has_dlq:
            assert created[topic.dlq("p.")].topic_configs == {}
    assert MAX_COMPACTION_LAG_MS <= 24 * 3600 * 1000
    assert any(t.compacted for t in ALL_TOPICS)
