"""What every part of the benchmark shares: where the repository is, the
settings the programs are run with, the targets, and the progress log."""
import os
import re
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# What every resevent instance gets: Tansu's JoinGroup waits about
# session.timeout.ms / 2 for a new group (INFRA.md), so keep it short, as the
# tests do. Info logs carry the effective config and the restore progress.
RESEVENT_ENV = {"RESEVENT_CONSUMER__SESSION_TIMEOUT_MS": "6000", "RESEVENT_LOG": "info"}
# A drain ends this long after the last record; the rates exclude it.
IDLE_EXIT_SECS = 5
# A live instance's idle clock starts before it has joined its group, and the
# load starts only after that (group join ~3 s on Tansu, producer warm-up).
LIVE_IDLE_EXIT_SECS = 15
# Preloading the drain topic: a bulk loader's settings (those gen_changes.py produces with).
PRELOAD_PRODUCER = {"enable.idempotence": True, "linger.ms": 20, "batch.num.messages": 10000, "compression.type": "lz4"}
# The live load of the latency run: librdkafka's default linger, so the
# upstream producer adds what a default client would to the latency.
LIVE_PRODUCER = {"enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"}

# The latency runs, one after another, at the target's load (--latency-load of
# (b)'s drain rate). The low-latency profile: the consumer's fetch.wait.max.ms
# at 10 ms on both sides (the instance and the passthrough it is compared
# with). Tansu holds a fetch for up to fetch.wait.max.ms (500 ms in librdkafka)
# even when records arrive meanwhile, where Kafka answers as soon as
# fetch.min.bytes (1) are there. Then the same with a 100 ms commit interval
# (shorter flushes, each holding up less), and (b) with the consumer's default
# fetch wait, to show what the profile buys.
SHORT_FETCH = {"RESEVENT_CONSUMER__FETCH_WAIT_MAX_MS": "10"}
SHORT_COMMIT = {**SHORT_FETCH, "RESEVENT_COMMIT_INTERVAL_MS": "100"}
LATENCY_VARIANTS = [
    # (drain it stands for, label, flags, environment, share of --latency-load)
    ("b", "`resevent run`, fetch.wait.max.ms=10", [], SHORT_FETCH, 1.0),
    ("a", "`resevent run --passthrough`, fetch.wait.max.ms=10", ["--passthrough"], SHORT_FETCH, 1.0),
    ("b", "`resevent run`, fetch.wait.max.ms=10, commit_interval_ms=100", [], SHORT_COMMIT, 1.0),
    ("b", "`resevent run`, librdkafka's default fetch.wait.max.ms (500)", [], {}, 1.0),
    ("c", "`resevent run --guarantee exactly-once`, fetch.wait.max.ms=10 (its 100 ms interval)", ["--guarantee", "exactly-once"], SHORT_FETCH, 1.0),
]

TARGETS = {
    "b_over_limit": 0.90,        # (b) at least 90% of the faster passthrough
    "b_over_d": 10.0,            # (b) at least 10x the Quix Streams peer
    "c_over_b": 0.80,            # exactly-once at least 80% of at-least-once
    "p99_over_passthrough": 1.10,  # p99 at half load within 10% + 10 ms of the
    "p99_slack_ms": 10,            # passthrough's p99 in the same run
    "restore_over_plain": 0.90,  # restore at least 90% of a plain consumer of the same changelog
    "restore_per_second": 200_000,
    "rss_mb": 300,               # peak resident memory while draining below 300 MB
    "core_per_second": 200_000,  # one core
}


STARTED = time.monotonic()


def log(msg):
    """Progress on stderr, with the time since the benchmark started."""
    secs = int(time.monotonic() - STARTED)
    print(f"[{secs // 60:02d}:{secs % 60:02d}] {msg}", file=sys.stderr, flush=True)


def linger_ms():
    """resevent's producer linger as its source sets it (it is reported
    nowhere else); passthrough.py is given the same."""
    try:
        with open(os.path.join(REPO, "src", "kafka", "mod.rs")) as f:
            m = re.search(r'"linger\.ms",\s*"(\d+)"', f.read())
        return int(m.group(1)) if m else 5
    except OSError:
        return 5


RESEVENT_LINGER_MS = linger_ms()
