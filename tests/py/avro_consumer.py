"""Reads a business topic with Confluent's own Python client and Avro
deserializer (confluent-kafka + fastavro), the way a team downstream would,
and prints each event as one JSON line. A second opinion on what resevent
writes, from code nobody on this project wrote.

usage: avro_consumer.py BOOTSTRAP TOPIC REGISTRY_URL COUNT [TIMEOUT_SECS]
Exits 0 after COUNT events, 1 on timeout (after printing what it read).
"""
import json
import sys
import time
import uuid

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main():
    bootstrap, topic, registry_url, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 60.0
    deserialize = AvroDeserializer(SchemaRegistryClient({"url": registry_url}))
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"py-avro-{uuid.uuid4()}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    seen = 0
    deadline = time.time() + timeout
    try:
        while seen < count and time.time() < deadline:
            msg = consumer.poll(0.5)
            if msg is None or msg.error():
                continue
            event = deserialize(msg.value(), SerializationContext(topic, MessageField.VALUE))
            headers = dict(msg.headers() or [])
            event["_header_eventType"] = headers.get("eventType", b"").decode()
            event["_key"] = msg.key().decode()
            print(json.dumps(event, sort_keys=True), flush=True)
            seen += 1
    finally:
        consumer.close()
    sys.exit(0 if seen >= count else 1)


if __name__ == "__main__":
    main()
