#!/usr/bin/env python3
"""Waits until topic TOPIC (partition 0, read from its beginning) holds a record whose `after`
has n == N (payload with or without the schema part): the moment a capture has published a
marker row. Used by bench/kafka_mysql.sh; needs confluent-kafka."""
import json
import sys

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

broker, topic, want = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = Consumer({"bootstrap.servers": broker, "group.id": "ferry-bench-wait", "enable.auto.commit": False, "log_level": 3})
c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
while True:
    m = c.poll(0.2)
    if m is None or m.error() or m.value() is None:
        continue
    v = json.loads(m.value())
    v = v.get("payload", v) if isinstance(v, dict) and "schema" in v else v
    if (v.get("after") or {}).get("n") == want:
        break
