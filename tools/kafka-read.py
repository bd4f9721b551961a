#!/usr/bin/python3
"""Reads a Kafka topic from the beginning to the current end of every partition and prints
each record as one JSON line: {"partition", "offset", "key", "payload"} (key and payload as
UTF-8 text, invalid bytes replaced; key null when absent). `--count` prints only how many.

Why this and not kcat: the tests and the sink benchmark need a consumer that does not share
code with the sink. The sink is librdkafka; kafka-python (Debian: python3-kafka, with
python3-lz4 and python3-zstandard for compressed batches) is a separate implementation of the
protocol. Debian 12's kcat is librdkafka 2.0.2, whose ApiVersions v3 parsing fails against
Tansu 0.6 ("ApiVersionRequest failed: Local: Read underflow"); under `cargo test` it only
worked because cargo's library path made it load the sink's own librdkafka build.

Usage: tools/kafka-read.py --broker HOST:PORT --topic TOPIC [--count] [--timeout SECONDS]
Exit status 1 with one line on stderr when the broker or topic cannot be read.
"""
import argparse
import json
import sys
import time

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import KafkaError


def text(b):
    return None if b is None else b.decode("utf-8", errors="replace")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--broker", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", action="store_true", help="print only the number of records")
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds to reach the end")
    args = ap.parse_args()
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=args.broker,
            group_id=None,
            enable_auto_commit=False,
            request_timeout_ms=int(args.timeout * 1000) + 1000,
            consumer_timeout_ms=1000,
        )
        parts = consumer.partitions_for_topic(args.topic)
        if not parts:
            print(f"{args.broker}: topic {args.topic!r} not found", file=sys.stderr)
            return 1
        tps = [TopicPartition(args.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        n = 0
        deadline = time.monotonic() + args.timeout
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            if time.monotonic() > deadline:
                left = {tp.partition: ends[tp] - consumer.position(tp) for tp in tps}
                print(f"{args.broker}: topic {args.topic!r} not read to its end in "
                      f"{args.timeout} s (records left per partition: {left})", file=sys.stderr)
                return 1
            batch = consumer.poll(timeout_ms=500)
            for tp, records in batch.items():
                for r in records:
                    if r.offset >= ends[tp]:
                        continue
                    n += 1
                    if not args.count:
                        print(json.dumps({"partition": r.partition, "offset": r.offset,
                                          "key": text(r.key), "payload": text(r.value)}))
        if args.count:
            print(n)
        consumer.close()
        return 0
    except KafkaError as e:
        print(f"{args.broker}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
