#!/usr/bin/env python3
"""Prints the sum of the high watermarks of the table topics under a prefix
(<prefix>.<schema>.<table>, Ferry's own topics left out): how many records an apply group
has to read. Used by bench/kafka.sh; needs confluent-kafka (pip install confluent-kafka)."""
import sys

from confluent_kafka import Consumer, TopicPartition

broker, prefix = sys.argv[1], sys.argv[2]
c = Consumer({"bootstrap.servers": broker, "group.id": "ferry-bench-highs", "log_level": 3})
total = 0
for name, meta in c.list_topics(timeout=10).topics.items():
    rest = name[len(prefix) + 1:] if name.startswith(prefix + ".") else None
    if rest is None or rest.count(".") != 1 or rest.startswith("ferry."):
        continue
    for p in meta.partitions:
        _, high = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)
        total += high
print(total)
