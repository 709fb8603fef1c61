#!/usr/bin/env python3
"""Waits for a capture's progress in Kafka. Used by bench/kafka_mysql.sh; needs confluent-kafka.

  kafka_wait.py BROKER TOPIC N            until TOPIC holds a record whose `after` has n == N
                                          (payload with or without the schema part)
  kafka_wait.py BROKER STATE_TOPIC FILE POS --position
                                          until the capture's state record says its position
                                          (every event before it acknowledged by the broker)
                                          is at or past binlog FILE:POS
"""
import json
import sys

from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

args = [a for a in sys.argv[1:] if a != "--position"]
by_position = "--position" in sys.argv
broker, topic = args[0], args[1]
c = Consumer({"bootstrap.servers": broker, "group.id": "ferry-bench-wait", "enable.auto.commit": False, "log_level": 3})
c.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])


def file_pos(text):
    """(file number, offset) of `mysql:<file>:<pos>[/<gtid>]`."""
    body = text.split("/", 1)[0].removeprefix("mysql:")
    name, pos = body.rsplit(":", 1)
    return int(name.rsplit(".", 1)[1]), int(pos)


if by_position:
    want = (int(args[2].rsplit(".", 1)[1]), int(args[3]))
while True:
    m = c.poll(0.1)
    if m is None or m.error() or m.value() is None:
        continue
    v = json.loads(m.value())
    if by_position:
        if v.get("position") and file_pos(v["position"]) >= want:
            break
        continue
    v = v.get("payload", v) if isinstance(v, dict) and "schema" in v else v
    if (v.get("after") or {}).get("n") == int(args[2]):
        break
