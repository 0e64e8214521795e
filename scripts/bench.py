#!/usr/bin/env python3
"""The benchmark of issue 5, run by scripts/bench (which installs the tools and
builds resevent first). One run, one broker (Tansu, memory storage, loopback),
one table:

  1. drain     N change events of resevent's own workload generator
               (src/workload.rs, written by this script) preloaded into a
               P-partition topic, drained by (a) `resevent run --passthrough`,
               (p) the peers' passthrough.py (Python librdkafka, the same
               commit interval), (b) `resevent run`, (c) `resevent run
               --guarantee exactly-once`, (d) the Quix Streams peer, each with
               a consumer group of its own; records/s. The faster of (a) and
               (p) is the limit (b) is measured against.
  2. latency   live instances fed at half of (b)'s rate with the low-latency
               profile (fetch.wait.max.ms=10): `run`, the passthrough, `run`
               with a 100 ms commit interval, `run` with the default fetch
               wait; p50 / p99 / max from record timestamp to its output
               acknowledged.
  3. restore   a fresh instance with an empty state dir rebuilds the state of
               distinct reservations from the changelog; then a plain
               consumer reads the same changelog; time and records/s of each.
  4. memory    peak resident memory of `resevent run` draining, and of
               `resevent replay` holding N and 10 N distinct reservations.
  5. core      scripts/bench-core's side-by-side table (criterion bench).

(p) and (d) need the peers directory (../shared/peers next to the clone, or
$RESEVENT_PEERS); without it they are skipped and the table says so.

The figures are what the programs themselves report (resevent's, passthrough.py's
and the peer's JSON summaries, resevent's restore log lines) or what the kernel
says (peak RSS from wait4); this script only orchestrates, times and tabulates.

  bench.py --resevent BIN --tansu BIN [--quix-python PY] [--peers DIR] [options]
  bench.py inserts N      # N insert events of N distinct reservations, JSON Lines on stdout
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

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
]

TARGETS = {
    "b_over_limit": 0.80,        # (b) at least 80% of the faster passthrough
    "b_over_d": 10.0,            # (b) at least 10x the Quix Streams peer
    "c_over_b": 0.60,            # exactly-once at least 60% of at-least-once
    "p99_ms": 50,                # p99 at half load below 50 ms
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


# ---------------------------------------------------------------- workloads

# One insert change event (MongoDB Kafka source connector, legacy Extended
# JSON) of a reservation never seen before: new bookings, `Not Arrived`, so
# each one adds a reservation to the state and emits nothing.
INSERT = (
    '{"_id":{"_data":"82%016X%08X2B042C0100296E5A1004"},"operationType":"insert",'
    '"clusterTime":{"$timestamp":{"t":%d,"i":%d}},"wallTime":{"$date":%d},'
    '"fullDocument":{"_id":{"$oid":"%s"},"propertyId":"P-%03d","confirmationNo":"CNF%08d",'
    '"bookingStatus":"Not Arrived","roomNumber":"%d","arrivalDate":{"$date":%d},"departureDate":{"$date":%d},'
    '"guest":{"firstName":"Anne","lastName":"Olsen","email":"guest%d@example.com"}},'
    '"ns":{"db":"property","coll":"reservation"},"documentKey":{"_id":{"$oid":"%s"}}}'
)


def distinct_inserts(n):
    """Yields (key, value) for n insert events of n distinct reservations, in
    source-position order. Ids differ from the drain workload's (0x65…)."""
    day = 86_400_000
    for i in range(n):
        t, inc = 1_795_300_000 + i // 1000, i % 1000 + 1
        rid = "%024x" % (0x660000000000000000000000 + i)
        arrival = 1_795_300_000_000 + (i % 5) * day
        yield rid, INSERT % (t, inc, t, inc, t * 1000 + inc % 1000, rid, i % 20, i, 100 + i % 400,
                             arrival, arrival + (1 + i % 5) * day, i, rid)


def write_inserts(n, out):
    """`bench.py inserts N`: the generator as a process of its own, so it feeds
    `resevent replay` from the other core."""
    chunk = []
    for _, value in distinct_inserts(n):
        chunk.append(value)
        if len(chunk) == 10_000:
            out.write("\n".join(chunk) + "\n")
            chunk = []
    if chunk:
        out.write("\n".join(chunk) + "\n")
    out.flush()


# The drain workload: resevent's own generator, `resevent::workload::Workload`
# (src/workload.rs), re-implemented here step for step so that no Rust code
# has to write it out: the same xorshift64* sequence, the same lifecycle and
# the same byte layout (~1 KB MongoDB source connector events, legacy Extended
# JSON, `fullDocument` from updateLookup; the shape of gen_changes.py). Every
# reservation is inserted first, then updates pick a reservation at random
# and move it one step through its stay: check-in, room move, extension, a
# housekeeping note, checkout, and from there back to check-in (an accidental
# checkout undone).

M64 = (1 << 64) - 1
DAY_MS = 86_400_000


class Rng:
    """xorshift64*, as `resevent::workload::Rng`."""

    def __init__(self, seed):
        self.x = (seed * 0x9E3779B97F4A7C15) & M64 | 1

    def below(self, n):
        x = self.x
        x ^= x >> 12
        x ^= (x << 25) & M64
        x ^= x >> 27
        self.x = x
        return ((x * 0x2545F4914F6CDD1D) & M64) % n


DOC = ('{"_id":{"$oid":"%s"},"propertyId":"P-%03d","confirmationNo":"CNF%08d","bookingStatus":"%s","roomNumber":"%d",'
       '"arrivalDate":{"$date":%d},"departureDate":{"$date":%d},"guest":{"firstName":"Anne","lastName":"Olsen",'
       '"email":"guest%d@example.com","phone":"+47 %08d","loyalty":{"program":"Bonvoy","tier":"Gold"}},"ratePlan":"BAR","adults":2,"children":1,'
       '"notes":"Late arrival, quiet room please. Late arrival, quiet room please. Late arrival, quiet room please. ","updatedBy":"frontdesk"}')
HEAD = ('{"_id":{"_data":"82%08X%08X2B042C0100296E5A1004"},"operationType":"%s","clusterTime":{"$timestamp":{"t":%d,"i":%d}},'
        '"wallTime":{"$date":%d},"fullDocument":%s,"ns":{"db":"property","coll":"reservation"},"documentKey":{"_id":{"$oid":"%s"}}')


def workload(reservations, events, seed):
    """Yields (key, value) as bytes: `events` change events of `reservations`
    distinct reservations, as `Workload::new(reservations, seed)` makes them."""
    rng = Rng(seed)
    step = bytearray(reservations)
    t, i = 1_795_300_000, 0
    for k in range(events):
        n = k if k < reservations else rng.below(reservations)
        s = step[n]
        step[n] = 1 if s >= 6 else s + 1
        i += 1
        if i > 1000:
            t, i = t + 1, 1
        rid = "%024x" % (0x650000000000000000000000 + n)
        r = Rng(n)
        room = 100 + r.below(400)
        prop = r.below(20)
        arrival = 1_795_300_000_000 + r.below(5) * DAY_MS
        departure = arrival + (1 + r.below(5)) * DAY_MS
        if s == 0:
            status, updated = "Not Arrived", ""
        elif s == 1:
            status, updated = "Arrived", '"bookingStatus":"Arrived"'
        elif s == 2:
            status, room, updated = "Arrived", room + 1, '"roomNumber":"%d"' % (room + 1)
        elif s == 3:
            status, room, departure = "Arrived", room + 1, departure + DAY_MS
            updated = '"departureDate":{"$date":%d}' % departure
        elif s == 4:
            status, room, departure = "Arrived", room + 1, departure + DAY_MS
            updated = '"notes":"Housekeeping note %d"' % rng.below(1000)
        else:
            status, room, departure, updated = "Departure", room + 1, departure + DAY_MS, '"bookingStatus":"Departure"'
        doc = DOC % (rid, prop, n, status, room, arrival, departure, n, n)
        head = HEAD % (t, i, "insert" if s == 0 else "update", t, i, t * 1000 + i % 1000, doc, rid)
        if s == 0:
            value = head + "}"
        else:
            value = head + ',"updateDescription":{"updatedFields":{%s},"removedFields":[],"truncatedArrays":[]}}' % updated
        yield rid.encode(), value.encode()


KEY_PREFIX = b'"documentKey":{"_id":{"$oid":"'


def keyed_lines(lines):
    """(key, value) of the workload's JSON Lines: the key is the reservation's
    ObjectId, as workload() keys records (string search, not a JSON
    parse: the producer must keep up with the offered rate)."""
    for line in lines:
        value = line.rstrip(b"\n")
        at = value.rfind(KEY_PREFIX) + len(KEY_PREFIX)
        yield value[at:at + 24], value


class Produced:
    """What a producer sent: records, value bytes, distinct keys, seconds."""

    def __init__(self):
        self.records, self.bytes, self.seconds = 0, 0, 0.0
        self.keys = set()

    @property
    def mean_bytes(self):
        return self.bytes / self.records if self.records else 0


def produce(bootstrap, topic, records, settings, rate=None, limit=None, count_keys=False, copy_to=None, warm_up_topic=None,
            reports=True):
    """Produces (key, value) records to `topic`, at most `limit`, at `rate`
    records/s if given (else as fast as the client goes); waits for every
    acknowledgement. `copy_to` gets each value as a line (to replay it later).
    With `warm_up_topic`, one record goes there first: an idempotent producer
    holds its first records until it has a producer id (~0.5 s on Tansu),
    which would show as latency of the service under test. Without `reports`
    no delivery report comes back per record: they cost the Python client
    CPU time the service under test needs; a lost record then shows only as a
    count the consumer does not reach."""
    from confluent_kafka import Producer
    failed = []

    def delivered(err, _msg):
        if err is not None:
            failed.append(str(err))

    def client_error(err):
        if err.fatal():
            failed.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, **settings, "error_cb": client_error})
    if warm_up_topic:
        producer.produce(warm_up_topic, b"")
        producer.flush()
    stats = Produced()
    start = time.monotonic()

    for key, value in records:
        if limit is not None and stats.records >= limit:
            break
        if rate:
            # Never ahead of the schedule by more than a millisecond: bursts of
            # rate/1000 records at most, as a steady upstream would send.
            ahead = start + stats.records / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        while True:
            try:
                if reports:
                    producer.produce(topic, value, key, on_delivery=delivered)
                else:
                    producer.produce(topic, value, key)
                break
            except BufferError:
                producer.poll(0.05)
        stats.records += 1
        stats.bytes += len(value)
        if count_keys:
            stats.keys.add(key)
        if copy_to is not None:
            copy_to.write(value + b"\n")
        if stats.records % 1000 == 0:
            producer.poll(0)
    producer.flush()
    stats.seconds = time.monotonic() - start
    if failed:
        raise RuntimeError(f"producing to {topic}: {len(failed)} failures, first: {failed[0]}")
    return stats


# ---------------------------------------------------------------- processes

class Child:
    """A child process whose stderr is copied to a log file and kept for
    scanning; its peak resident set comes from wait4 (ru_maxrss) at exit."""

    def __init__(self, name, cmd, workdir, env=None, stdin=None, stdout=subprocess.PIPE):
        self.name = name
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.lines = []
        self.changed = threading.Condition()
        self.started = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                     env={**os.environ, **(env or {})})
        self.peak_rss_kb = None
        self.cpu_seconds = None
        self.returncode = None
        self.seconds = None
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _read_stderr(self):
        with open(self.log_path, "w") as f:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace")
                f.write(line)
                with self.changed:
                    self.lines.append(line.rstrip("\n"))
                    self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for(self, done, timeout):
        """Waits until done(lines) holds; False on timeout or if the process exits first."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not done(self.lines):
                left = deadline - time.monotonic()
                # stderr closed: the process is gone (not poll(): see signal()).
                if left <= 0 or not self._reader.is_alive():
                    return done(self.lines)
                self.changed.wait(min(left, 0.5))
        return True

    def rss_kb(self):
        """Current resident set (VmRSS), or None once the process is gone."""
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None

    def finish(self, timeout):
        """Waits for exit (killing the process past `timeout`) and returns its stdout."""
        timer = threading.Timer(timeout, self.signal, (signal.SIGKILL,))
        timer.start()
        out = self.proc.stdout.read() if self.proc.stdout is not None else b""
        # wait4 rather than Popen.wait: it also returns the child's rusage.
        _, status, usage = os.wait4(self.proc.pid, 0)
        timer.cancel()
        self.proc.returncode = self.returncode = os.waitstatus_to_exitcode(status)
        self.peak_rss_kb = usage.ru_maxrss  # kilobytes on Linux
        self.cpu_seconds = usage.ru_utime + usage.ru_stime
        self.seconds = time.monotonic() - self.started
        self._reader.join(5)
        return out.decode(errors="replace")

    def signal(self, sig):
        # os.kill, not Popen.send_signal: that polls, which would reap the
        # process before wait4 could read its rusage.
        if self.returncode is None:
            os.kill(self.proc.pid, sig)

    def tail(self, n=5):
        return "\n".join(self.lines[-n:])


class DrainClock:
    """Times a drain from outside the program, the same way for every one of
    them: from the moment its consumer group is Stable (partitions assigned)
    to the moment the group's committed offsets cover every input record —
    everything processed, its outputs acknowledged and its offsets committed.
    Polls the broker every 50 ms (the figures are up to that much late, at
    both ends). Needed because `resevent run` and `--passthrough` count the
    idle-exit wait into their own busy time (their summary is acknowledged
    once more at shutdown), and the programs start their own clocks at
    different points."""

    POLL = 0.05

    def __init__(self, bootstrap, group, topic, partitions, records):
        self.start = self.end = None
        self.seen = None  # the last group state or offsets seen, for the error message
        self._stop = threading.Event()
        self.done = threading.Event()  # set once every record is committed
        self._thread = threading.Thread(target=self._run, args=(bootstrap, group, topic, partitions, records), daemon=True)
        self._thread.start()

    def _run(self, bootstrap, group, topic, partitions, records):
        from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import AdminClient
        admin = AdminClient({"bootstrap.servers": bootstrap})
        while not self._stop.is_set() and self.start is None:
            try:
                self.seen = admin.describe_consumer_groups([group])[group].result(timeout=5).state
                if self.seen == ConsumerGroupState.STABLE:
                    self.start = time.monotonic()
                    break
            except Exception as e:  # not known yet to the coordinator
                self.seen = e
            time.sleep(self.POLL)
        request = [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(partitions)])]
        while not self._stop.is_set():
            try:
                got = admin.list_consumer_group_offsets(request)[group].result(timeout=5)
                self.seen = [tp.offset for tp in got.topic_partitions]
                if sum(max(tp.offset, 0) for tp in got.topic_partitions) >= records:
                    self.end = time.monotonic()
                    self.done.set()
                    return
            except Exception as e:  # nothing committed yet
                self.seen = e
            time.sleep(self.POLL)

    def seconds(self):
        """Stable → all committed, once the program has exited; None if either was not seen."""
        self._stop.set()
        self._thread.join(10)
        return self.end - self.start if self.start is not None and self.end is not None else None


def timed(summary, clock, records):
    """Puts the external figure (DrainClock) in `records_per_second` and keeps
    the program's own as `reported_per_second`."""
    seconds = clock.seconds()
    summary["reported_per_second"] = summary.get("records_per_second")
    summary["seconds"] = seconds
    if not seconds:
        # Not fatal: the program's own figure stands, and the table says so.
        log(f"  WARNING: not timed from outside (last seen: {clock.seen}); the program's own figure is used")
        summary["clock_failed"] = True
        return summary
    summary["records_per_second"] = records / seconds
    return summary


def last_json(stdout, what):
    """The last JSON object line of a program's stdout (its summary)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(f"{what} printed no JSON summary")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tansu:
    """The broker: Tansu with memory storage on a free loopback port."""

    def __init__(self, binary, workdir):
        port = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        url = f"tcp://{self.bootstrap}"
        self.log = open(os.path.join(workdir, f"tansu-{port}.log"), "w")
        self.proc = subprocess.Popen([binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                      "--storage-engine", "memory://tansu/"], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"Tansu did not start; see {self.log.name}")
                time.sleep(0.1)

    def create_topic(self, name, partitions):
        from confluent_kafka.admin import AdminClient, NewTopic
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        # Explicit retention configs: Quix Streams reads them back through
        # DescribeConfigs, and Tansu returns no defaults (peers/README.md).
        topic = NewTopic(name, partitions, 1, config={"retention.ms": "-1", "retention.bytes": "-1"})
        for future in admin.create_topics([topic]).values():
            future.result()

    def wait_group_stable(self, group, timeout):
        """Whether consumer group `group` reached Stable (its partitions are
        assigned) within `timeout` seconds."""
        from confluent_kafka import ConsumerGroupState
        from confluent_kafka.admin import AdminClient
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if admin.describe_consumer_groups([group])[group].result(timeout=5).state == ConsumerGroupState.STABLE:
                    return True
            except Exception:  # not known yet to the coordinator
                pass
            time.sleep(0.25)
        return False

    def cpu_seconds(self):
        """CPU time the broker has used so far (user + system)."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # fields from the 3rd on
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ---------------------------------------------------------------- resevent's logs

LOG_LINE = re.compile(r"^(\S+)\s+(TRACE|DEBUG|INFO|WARN|ERROR)\s+(.*)$")
FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def parse_log(line):
    """A resevent log line as (time, message, fields), or None. tracing's
    format: `2026-11-22T06:17:30.235180Z  INFO message key=value …`."""
    m = LOG_LINE.match(line)
    if not m:
        return None
    rest = m.group(3)
    first = FIELD.search(rest)
    message = (rest[:first.start()] if first else rest).strip()
    fields = {k: v.strip('"') for k, v in FIELD.findall(rest[first.start():])} if first else {}
    return datetime.datetime.fromisoformat(m.group(1)), message, fields


def messages(lines, message):
    return [p for p in map(parse_log, lines) if p and p[1] == message]


def partitions_ready(partitions):
    """Whether an instance has every partition assigned and its state current."""
    def ready(lines):
        done = [p for p in map(parse_log, lines) if p and p[1] in ("state is current", "restored")]
        return len(done) >= partitions
    return ready


# ---------------------------------------------------------------- the benchmark

class Bench:
    def __init__(self, args):
        self.a = args
        self.workdir = tempfile.mkdtemp(prefix="resevent-bench-")
        self.broker = None
        self.results = {"errors": {}}
        self.notes = []        # footnotes, in order
        self.settings = None   # resevent's effective config, from its first start-up log line

    # ---- helpers

    def resevent(self, name, *args, env=None, idle=IDLE_EXIT_SECS):
        """Starts `resevent run` with its own log file."""
        cmd = [self.a.resevent, "run", "--bootstrap-servers", self.broker.bootstrap, "--idle-exit-secs", str(idle), *args]
        # One commit interval for every at-least-once run and passthrough.py;
        # exactly-once keeps its own default (100 ms) unless it is given.
        interval = {} if "--guarantee" in args and not self.a.commit_interval_given else \
            {"RESEVENT_COMMIT_INTERVAL_MS": str(self.a.commit_interval_ms)}
        return Child(name, cmd, self.workdir, env={**RESEVENT_ENV, **interval, **(env or {})})

    def finish_resevent(self, child, timeout=3600):
        out = child.finish(timeout)
        if child.returncode != 0:
            raise RuntimeError(f"{child.name} exited {child.returncode}: {child.tail()}")
        if self.settings is None:
            # The effective config, logged at start as JSON (to the line's end).
            started = [l for l in child.lines if "resevent run starting config=" in l]
            if started:
                self.settings = json.loads(started[0].split("config=", 1)[1])
        return last_json(out, child.name)

    def drain_resevent(self, label, app_id, *extra, topic="raw"):
        """One instance drains the preloaded `topic` with a group of its own."""
        log(f"drain {label}: {app_id}")
        broker_cpu = self.broker.cpu_seconds()
        records = self.results["workload"]["records"]
        group = app_id + ("-passthrough" if "--passthrough" in extra else "")
        clock = DrainClock(self.broker.bootstrap, group, topic, self.a.partitions, records)
        child = self.resevent(app_id, "--input-topic", topic, "--application-id", app_id,
                              "--output-topic", f"{app_id}.out", "--state-dir", os.path.join(self.workdir, app_id), *extra)
        # With its HTTP server on, the service is scraped as Prometheus would
        # be (every second here, where Prometheus' default is 15 s): the cost
        # of /metrics counts in the drain.
        scraping = threading.Event()
        if "--no-http" not in extra and "--passthrough" not in extra:
            threading.Thread(target=scrape, args=("http://127.0.0.1:9464/metrics", scraping), daemon=True).start()
        try:
            summary = timed(self.finish_resevent(child), clock, records)
        finally:
            scraping.set()
        summary.update(peak_rss_mb=child.peak_rss_kb / 1024, cpu_s=child.cpu_seconds, broker_cpu_s=self.broker.cpu_seconds() - broker_cpu)
        log(f"  {summary['records']:,} records, {summary['records_per_second']:,.0f} records/s "
            f"(it reports {summary['reported_per_second'] or 0:,.0f}), peak RSS {child.peak_rss_kb / 1024:.0f} MB")
        shutil.rmtree(os.path.join(self.workdir, app_id), ignore_errors=True)
        return summary

    def phase(self, name, fn):
        """Runs one part; a failure is recorded in the table, the rest goes on."""
        if name in self.a.skip:
            return
        try:
            fn()
        except Exception as e:  # the table says which part failed and why
            log(f"{name} failed: {e}")
            self.results["errors"][name] = str(e).splitlines()[0][:200]

    # ---- the parts

    def drain(self):
        a = self.a
        self.broker.create_topic("raw", a.partitions)
        log(f"preloading {a.events:,} change events of {a.reservations:,} reservations (resevent's workload, seed {a.seed}) "
            f"into raw, {a.partitions} partitions")
        # The same records again feed the latency run: saved while preloading.
        with open(os.path.join(self.workdir, "changes.jsonl"), "wb") as copy:
            load = produce(self.broker.bootstrap, "raw", workload(a.reservations, a.events, a.seed), PRELOAD_PRODUCER,
                           count_keys=True, copy_to=copy)
        self.results["workload"] = {"records": load.records, "mean_bytes": round(load.mean_bytes), "keys": len(load.keys)}
        log(f"  {load.records:,} records, {load.mean_bytes:.0f} bytes each on average, {len(load.keys):,} distinct reservations, {load.seconds:.0f} s")

        # The passthroughs and (b) alternate, best of the rounds: the machine is
        # shared and noisy, and the best run is the closest to what the code
        # can do. (a) `resevent run --passthrough` and (p) passthrough.py
        # move the same topic with the same commit interval; the faster is
        # the limit.
        runs = {"a": [], "p": [], "b": []} if a.peers else {"a": [], "b": []}
        # (e): (b) with business events as Avro through a registry, in the same rounds.
        registry = None if "avro" in a.skip else MiniRegistry()
        if registry:
            runs["e"] = []
            # (f): (b) reading the same changes as the MongoDB connector's Avro.
            with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "avro", "mongo-change-stream.avsc")) as f:
                change_schema = f.read()
            sid = registry.register("raw-avro-value", change_schema)
            self.broker.create_topic("raw-avro", a.partitions)
            load = produce(self.broker.bootstrap, "raw-avro", avro_changes(workload(a.reservations, a.events, a.seed), change_schema, sid),
                           PRELOAD_PRODUCER)
            self.results["avro_input"] = {"records": load.records, "mean_bytes": round(load.mean_bytes)}
            log(f"  raw-avro: {load.records:,} records, {load.mean_bytes:.0f} bytes each on average (JSON: {self.results['workload']['mean_bytes']})")
            runs["f"] = []
        # (h): (b) without its HTTP server (/metrics, status page), in the same rounds.
        if "http" not in a.skip:
            runs["h"] = []
        for r in range(1, a.rounds + 1):
            runs["a"].append(self.drain_resevent(f"(a) resevent run --passthrough, round {r}", f"bench-pass-{r}", "--passthrough"))
            if a.peers:
                runs["p"].append(self.drain_passthrough_py(r))
            runs["b"].append(self.drain_resevent(f"(b) at-least-once, round {r}", f"bench-run-{r}"))
            if "h" in runs:
                runs["h"].append(self.drain_resevent(f"(h) at-least-once, --no-http, round {r}", f"bench-nohttp-{r}", "--no-http"))
            if registry:
                runs["e"].append(self.drain_resevent(f"(e) at-least-once, Avro out, round {r}", f"bench-avro-{r}",
                                                     "--output-format", "avro", "--schema-registry-url", registry.url))
                runs["f"].append(self.drain_resevent(f"(f) at-least-once, Avro in, round {r}", f"bench-avro-in-{r}",
                                                     "--schema-registry-url", registry.url, topic="raw-avro"))
        if registry:
            # Bytes per business event, the same events in both forms.
            for k, app in (("b", "bench-run-1"), ("e", "bench-avro-1")):
                n, total = value_bytes(self.broker.bootstrap, f"{app}.out")
                self.results.setdefault("event_bytes", {})[k] = {"events": n, "mean_bytes": total / n if n else None}
            registry.server.shutdown()
        for k, rs in runs.items():
            self.results[k] = max(rs, key=lambda s: s["records_per_second"] or 0)
            self.results[k]["rounds"] = [s["records_per_second"] for s in rs]
            self.results[k]["peak_rss_mbs"] = [s["peak_rss_mb"] for s in rs]
        if "eos" not in a.skip:
            try:
                self.results["c"] = self.drain_resevent("(c) exactly-once", "bench-eos", "--guarantee", "exactly-once")
            except RuntimeError as e:
                self.results["c"] = {"error": str(e).splitlines()[0][:200]}
        if "quix" not in a.skip and a.peers and a.quix_python:
            self.results["d"] = self.drain_quix()

    def drain_passthrough_py(self, r):
        """(p) ../shared/peers/passthrough.py: librdkafka from Python, consume
        → produce, a flush and an offset commit every commit interval, with
        resevent's producer linger and the same consumer fetch wait. It is
        told one record more than there are: told the exact count, it would
        flush and commit the moment it has the last record, where resevent
        commits on its next interval tick; this way both commit the last
        records on their timer. It is stopped once the clock has seen every
        record committed, so its own summary is not printed."""
        log(f"drain (p) passthrough.py, round {r}")
        records = self.results["workload"]["records"]
        broker_cpu = self.broker.cpu_seconds()
        fetch_wait = int(os.environ.get("RESEVENT_CONSUMER__FETCH_WAIT_MAX_MS", "500"))
        clock = DrainClock(self.broker.bootstrap, f"bench-py-{r}", "raw", self.a.partitions, records)
        child = Child(f"passthrough-py-{r}", [sys.executable, os.path.join(self.a.peers, "passthrough.py"), "--bootstrap",
                                               self.broker.bootstrap, "--input", "raw", "--output", f"bench-py-{r}.out",
                                               "--group", f"bench-py-{r}", "--records", str(records + 1),
                                               "--commit-interval-ms", str(self.a.commit_interval_ms),
                                               "--linger-ms", str(RESEVENT_LINGER_MS), "--fetch-wait-ms", str(fetch_wait)],
                      self.workdir)
        clock.done.wait(600)
        child.signal(signal.SIGTERM)
        child.finish(30)
        if not clock.done.is_set():
            raise RuntimeError(f"passthrough.py did not commit every record in 600 s ({child.returncode}): {child.tail()}")
        summary = timed({"records": records, "records_per_second": None}, clock, records)
        summary.update(peak_rss_mb=child.peak_rss_kb / 1024, cpu_s=child.cpu_seconds, broker_cpu_s=self.broker.cpu_seconds() - broker_cpu)
        log(f"  {summary['records']:,} records, {summary['records_per_second']:,.0f} records/s")
        return summary

    def drain_quix(self):
        log("drain (d): Quix Streams peer")
        state = os.path.join(self.workdir, "quix-state")
        broker_cpu = self.broker.cpu_seconds()
        records = self.results["workload"]["records"]
        clock = DrainClock(self.broker.bootstrap, "bench-quix", "raw", self.a.partitions, records)
        child = Child("quix", [self.a.quix_python, os.path.join(self.a.peers, "quix_detector.py"), "--bootstrap", self.broker.bootstrap,
                               "--input", "raw", "--output", "quix.events", "--group", "bench-quix", "--state-dir", state,
                               "--idle", str(IDLE_EXIT_SECS)], self.workdir)
        out = child.finish(3600)
        if child.returncode != 0:
            raise RuntimeError(f"quix_detector.py exited {child.returncode}: {child.tail()}")
        summary = last_json(out, "quix_detector.py")
        # Its own figure counts (first record to last record, before its
        # commits), which is kinder to it than the clock of the others; the
        # clock's figure is noted beside it.
        seconds = clock.seconds()
        summary["clocked_per_second"] = records / seconds if seconds else None
        summary.update(peak_rss_mb=child.peak_rss_kb / 1024, cpu_s=child.cpu_seconds, broker_cpu_s=self.broker.cpu_seconds() - broker_cpu)
        # Its own start-up line names its commit interval, the batch it acknowledges by.
        cfg = next((l for l in child.lines if "Starting the Application with the config" in l), "")
        m = re.search(r"commit_interval=(\S+)", cfg)
        summary["commit_interval"] = m.group(1) if m else "?"
        log(f"  {summary['records']:,} records, {summary['records_per_second'] or 0:,.0f} records/s")
        shutil.rmtree(state, ignore_errors=True)
        return summary

    def latency(self):
        a = self.a
        rate = a.latency_rate or a.latency_load * ((self.results.get("b") or {}).get("records_per_second") or 0)
        if not rate:
            raise RuntimeError("no rate for the latency run: (b) was not measured; give --latency-rate")
        available = self.results.get("workload", {}).get("records", 0)
        if not available:
            raise RuntimeError("the latency run replays the drain workload, which was not generated")
        self.broker.create_topic("warm-up", 1)
        self.results["latency"] = []
        for n, (key, label, flags, env, share) in enumerate(LATENCY_VARIANTS, 1):
            # Bounded by the workload: records are not repeated (repeats would
            # be stale changes, cheaper than real ones).
            count = int(min(rate * share * a.latency_seconds, available))
            summary = self.latency_run(n, label, flags, env, rate * share, count)
            summary.update(key=key, label=label)
            self.results["latency"].append(summary)

    def latency_run(self, n, label, flags, env, rate, count):
        """One live instance, a fresh topic, `count` records at `rate`."""
        topic, app_id = f"live-{n}", f"bench-latency-{n}"
        self.broker.create_topic(topic, self.a.partitions)
        child = self.resevent(app_id, "--input-topic", topic, "--application-id", app_id, "--output-topic", f"{app_id}.out",
                              "--state-dir", os.path.join(self.workdir, app_id), *flags, env=env, idle=LIVE_IDLE_EXIT_SECS)
        # Records sent before the group has settled would time the rebalance:
        # wait for the group, and for `run` also for its state.
        group = app_id + ("-passthrough" if "--passthrough" in flags else "")
        ready = self.broker.wait_group_stable(group, 120)
        if ready and "--passthrough" not in flags:
            ready = child.wait_for(partitions_ready(self.a.partitions), 60)
        if not ready:
            child.signal(signal.SIGKILL)
            child.finish(10)
            raise RuntimeError(f"{app_id} did not get its partitions: {child.tail()}")
        time.sleep(1)  # the first fetch positions
        log(f"latency: {label}: {rate:,.0f} records/s for {count / rate:.0f} s")
        # Who uses the 2 cores while the load runs: this process (the load
        # producer), the broker, the instance under test.
        load_cpu, broker_cpu = time.process_time(), self.broker.cpu_seconds()
        with open(os.path.join(self.workdir, "changes.jsonl"), "rb") as lines:
            load = produce(self.broker.bootstrap, topic, keyed_lines(lines), LIVE_PRODUCER, rate=rate, limit=count,
                           warm_up_topic="warm-up", reports=False)
        load_cpu, broker_cpu = time.process_time() - load_cpu, self.broker.cpu_seconds() - broker_cpu
        summary = self.finish_resevent(child)
        summary.update(offered=rate, achieved=load.records / load.seconds, seconds=load.seconds,
                       cores={"load producer": load_cpu / load.seconds, "Tansu": broker_cpu / load.seconds,
                              "instance": child.cpu_seconds / load.seconds})
        if summary["records"] != load.records:
            raise RuntimeError(f"{app_id} processed {summary['records']} of {load.records} records")
        log(f"  achieved {summary['achieved']:,.0f} records/s; latency_ms {summary['latency_ms']}")
        return summary

    def restore(self):
        a = self.a
        n = a.restore_reservations
        self.broker.create_topic("restore.raw", a.partitions)
        log(f"restore: {n:,} inserts of distinct reservations into restore.raw")
        load = produce(self.broker.bootstrap, "restore.raw", distinct_inserts(n), PRELOAD_PRODUCER)
        common = ("--input-topic", "restore.raw", "--application-id", "bench-restore", "--output-topic", "bench-restore.out")
        # First an instance builds the state and its changelog …
        clock = DrainClock(self.broker.bootstrap, "bench-restore", "restore.raw", a.partitions, n)
        first = self.resevent("bench-restore-build", *common, "--state-dir", os.path.join(self.workdir, "restore-build"))
        built = timed(self.finish_resevent(first), clock, n)
        log(f"  built by a drain at {built['records_per_second'] or 0:,.0f} records/s, peak RSS {first.peak_rss_kb / 1024:.0f} MB")
        # … then a fresh one, same group, empty state dir, rebuilds it. It has
        # nothing left to consume, so it is stopped (SIGTERM) once restored.
        empty = os.path.join(self.workdir, "restore-empty")
        broker_cpu = self.broker.cpu_seconds()
        second = self.resevent("bench-restore", *common, "--state-dir", empty, idle=3600)
        ok = second.wait_for(partitions_ready(a.partitions), 3600)
        rss_restored = second.rss_kb()
        broker_cpu = self.broker.cpu_seconds() - broker_cpu
        second.signal(signal.SIGTERM)  # prints no summary: there is nothing to sum up
        second.finish(120)
        if second.returncode != 0:
            raise RuntimeError(f"the restoring instance exited {second.returncode}: {second.tail()}")
        if not ok:
            raise RuntimeError(f"restore did not finish: {second.tail()}")
        began = messages(second.lines, "restoring state from the changelog")
        ended = messages(second.lines, "restored")
        if not began or not ended:
            raise RuntimeError("no restore in the log: was the state dir empty and the changelog written?")
        records = sum(int(f["records"]) for _, _, f in ended)
        seconds = (max(t for t, _, _ in ended) - min(t for t, _, _ in began)).total_seconds()
        self.results["restore"] = {
            "reservations": n, "records": records, "seconds": seconds, "per_second": records / seconds,
            "partitions": {f["partition"]: float(f["per_second"]) for _, _, f in ended},
            "input_mean_bytes": round(load.mean_bytes), "build_per_second": built["records_per_second"],
            "build_peak_rss_mb": first.peak_rss_kb / 1024, "restored_rss_mb": (rss_restored or 0) / 1024,
            "restored_peak_rss_mb": second.peak_rss_kb / 1024, "state_mb": dir_mb(empty),
            "cpu_s": second.cpu_seconds, "broker_cpu_s": broker_cpu,
        }
        log(f"  restored {records:,} records in {seconds:.1f} s ({records / seconds:,.0f}/s); RSS then {(rss_restored or 0) / 1024:.0f} MB")
        # The reference: a plain consumer reading the same changelog, every
        # partition from the start to its end, nothing done with the records.
        # (kcat, a C consumer, would be the better reference, but Debian's
        # build has librdkafka 2.0.2, which cannot parse Tansu's ApiVersions.)
        changelog = "bench-restore-reservation-state-changelog"
        readers = [plain_read(self.broker.bootstrap, changelog, a.partitions)]
        for plain in readers:
            log(f"  plain consumer ({plain['consumer']}) of the changelog: {plain['records']:,} records in "
                f"{plain['seconds']:.1f} s ({plain['per_second']:,.0f}/s)")
        self.results["restore"]["plain"] = max(readers, key=lambda p: p["per_second"])
        self.results["restore"]["plain_all"] = readers
        shutil.rmtree(empty, ignore_errors=True)
        shutil.rmtree(os.path.join(self.workdir, "restore-build"), ignore_errors=True)

    def state(self):
        """Peak RSS of `resevent replay` fed n distinct reservations from a
        generator process through a pipe: no broker memory involved (10M ~1 KB
        records would be ~10 GB in Tansu's memory storage)."""
        rows = []
        for n in self.a.state_reservations:
            log(f"state: {n:,} distinct reservations through resevent replay")
            dir_ = os.path.join(self.workdir, f"replay-{n}")
            gen = subprocess.Popen([sys.executable, os.path.abspath(__file__), "inserts", str(n)], stdout=subprocess.PIPE)
            child = Child(f"replay-{n}", [self.a.resevent, "replay", "--state-dir", dir_], self.workdir,
                          env={"RESEVENT_LOG": "info"}, stdin=gen.stdout, stdout=subprocess.DEVNULL)
            gen.stdout.close()  # replay holds the only read end now
            child.finish(3600)
            if gen.wait() != 0 or child.returncode != 0:
                raise RuntimeError(f"replay of {n} reservations failed ({child.returncode}): {child.tail()}")
            rows.append({"reservations": n, "peak_rss_mb": child.peak_rss_kb / 1024, "seconds": child.seconds,
                         "per_second": n / child.seconds, "state_mb": dir_mb(dir_)})
            log(f"  peak RSS {child.peak_rss_kb / 1024:.0f} MB, {n / child.seconds:,.0f} records/s, state on disk {rows[-1]['state_mb']:.0f} MB")
            shutil.rmtree(dir_, ignore_errors=True)
        self.results["state"] = rows
        self.results["state_mean_bytes"] = round(sum(len(v) for _, v in distinct_inserts(1000)) / 1000)

    def core(self):
        log("core: RESEVENT_BENCH_QUICK=1 scripts/bench-core (builds the bench first)")
        proc = subprocess.run([os.path.join(REPO, "scripts", "bench-core")], env={**os.environ, "RESEVENT_BENCH_QUICK": "1"},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        with open(os.path.join(self.workdir, "bench-core.log"), "w") as f:
            f.write(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise RuntimeError(f"scripts/bench-core exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
        figure = lambda label: float(re.search(re.escape(label) + r"\s+([\d.]+)", proc.stdout).group(1))
        try:
            self.results["core"] = {
                "core_per_second": figure("decode + table + RocksDB"),
                "decode_only_per_second": figure("decode-only (serde_json)"),
                "table": [l for l in proc.stdout.splitlines() if l.strip()][-7:],
            }
        except AttributeError:
            raise RuntimeError("scripts/bench-core's side-by-side table has changed; see bench-core.log")
        log(f"  {self.results['core']['core_per_second']:,.0f} events/s")

    # ---- the run

    def run(self):
        self.results["started"] = datetime.datetime.now(datetime.timezone.utc)
        self.results["load_before"] = os.getloadavg()
        # At the start, right after scripts/bench built the binary: whether
        # src/ had uncommitted changes then is what the figures are of.
        self.results["versions"] = versions(self.a)
        # A fresh broker for each part that needs one: Tansu's memory storage
        # never expires anything (~8 GB after the drains), and a part should
        # not pay for what the one before left behind.
        for part in ("drain", "latency", "restore"):
            if part in self.a.skip:
                continue
            self.fresh_broker()
            self.phase(part, getattr(self, part))
        self.fresh_broker(start=False)
        # Without a broker: these two use no network.
        self.phase("state", self.state)
        self.phase("core", self.core)
        self.results["minutes"] = (time.monotonic() - STARTED) / 60

    def fresh_broker(self, start=True):
        """Stops the broker in use (noting its memory) and starts another."""
        if self.broker:
            self.results["tansu_rss_mb"] = max(self.results.get("tansu_rss_mb", 0), self.broker.rss_mb())
            self.broker.stop()
            self.broker = None
        if start:
            self.broker = Tansu(self.a.tansu, self.workdir)
            log(f"Tansu on {self.broker.bootstrap}; work dir {self.workdir}")

    def close(self):
        if self.broker:
            self.broker.stop()
        if self.a.keep:
            log(f"kept {self.workdir}")
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


class MiniRegistry:
    """Just enough of a Confluent Schema Registry for the Avro drain:
    register a schema under a subject, fetch it by id. The bench needs a
    registry the way it needs a broker; the tests' double (tests/common/
    registry.rs) is the one that checks compatibility."""

    def __init__(self):
        import http.server
        schemas, subjects = [], {}

        class Handler(http.server.BaseHTTPRequestHandler):
            def reply(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                subject = self.path.split("/")[2]
                if body["schema"] not in schemas:
                    schemas.append(body["schema"])
                sid = schemas.index(body["schema"]) + 1
                subjects.setdefault(subject, []).append(sid)
                self.reply(200, {"id": sid})

            def do_GET(self):
                parts = self.path.split("?")[0].split("/")
                if parts[1] == "schemas" and 0 < int(parts[3]) <= len(schemas):
                    self.reply(200, {"schema": schemas[int(parts[3]) - 1]})
                else:
                    self.reply(404, {"error_code": 40403, "message": "Schema not found"})

            def log_message(self, *_):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def register(self, subject, schema):
        import urllib.request
        req = urllib.request.Request(f"{self.url}/subjects/{subject}/versions", data=json.dumps({"schema": schema}).encode(),
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())["id"]


def avro_changes(records, schema_text, schema_id):
    """The workload's change events as the MongoDB connector writes them
    with output.format.value=schema and the AvroConverter (its default
    ChangeStream schema, fixtures/avro/mongo-change-stream.avsc): the varying
    parts as Extended JSON strings, in the Confluent wire format."""
    import io
    import fastavro
    schema = fastavro.parse_schema(json.loads(schema_text))
    header = b"\0" + schema_id.to_bytes(4, "big")
    text = lambda v: None if v is None else json.dumps(v, separators=(",", ":"))
    for key, value in records:
        c = json.loads(value)
        wall = c.get("wallTime")
        wall = wall.get("$date") if isinstance(wall, dict) else None
        if isinstance(wall, dict):
            wall = int(wall["$numberLong"])
        upd = c.get("updateDescription")
        rec = {"_id": text(c["_id"]), "operationType": c.get("operationType"), "fullDocumentBeforeChange": None,
               "fullDocument": text(c.get("fullDocument")), "ns": c.get("ns"), "to": None, "documentKey": text(c.get("documentKey")),
               "updateDescription": None if upd is None else {"updatedFields": text(upd.get("updatedFields")),
                                                              "removedFields": upd.get("removedFields") or [], "truncatedArrays": [],
                                                              "disambiguatedPaths": None},
               "clusterTime": text(c.get("clusterTime")), "wallTime": wall, "txnNumber": c.get("txnNumber"), "lsid": None}
        out = io.BytesIO()
        fastavro.schemaless_writer(out, schema, rec)
        yield key, header + out.getvalue()


def scrape(url, stop):
    """GETs `url` every second until `stop` is set (connection errors ignored)."""
    import urllib.request
    while not stop.wait(1.0):
        try:
            urllib.request.urlopen(url, timeout=2).read()
        except OSError:
            pass


def value_bytes(bootstrap, topic):
    """Records and total value bytes of a whole topic."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-sizes", "enable.auto.commit": False, "enable.partition.eof": True})
    parts = list(c.list_topics(topic, timeout=10).topics[topic].partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    ended, records, total = set(), 0, 0
    deadline = time.monotonic() + 300
    while len(ended) < len(parts) and time.monotonic() < deadline:
        for m in c.consume(10_000, 1.0):
            if m.error() is None:
                records += 1
                total += len(m.value() or b"")
            elif m.error().code() == KafkaError._PARTITION_EOF:
                ended.add(m.partition())
    c.close()
    return records, total


def plain_read(bootstrap, topic, partitions):
    """A plain librdkafka consumer (confluent-kafka) assigned every partition
    of `topic` from the beginning, reading until each reports its end; the
    records are counted, not looked at. The fetch settings of resevent's
    restore consumer (16 MB per partition, 50 ms fetch wait). Time from the
    first record to the last partition's end, as the restore is timed."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-plain-reader", "enable.auto.commit": False,
                  "enable.partition.eof": True, "max.partition.fetch.bytes": 16 << 20, "fetch.wait.max.ms": 50})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    ended, records, first = set(), 0, None
    deadline = time.monotonic() + 600
    while len(ended) < partitions and time.monotonic() < deadline:
        for m in c.consume(10_000, 1.0):
            err = m.error()
            if err is None:
                records += 1
                first = first or time.monotonic()
            elif err.code() == KafkaError._PARTITION_EOF:
                ended.add(m.partition())
            else:
                raise RuntimeError(f"reading {topic}: {err}")
    seconds = time.monotonic() - first if first else 0.0
    c.close()
    if len(ended) < partitions:
        raise RuntimeError(f"reading {topic}: no end of partition after 600 s")
    return {"records": records, "seconds": seconds, "per_second": records / seconds if seconds else 0, "consumer": "python"}


def dir_mb(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total / 2**20


# ---------------------------------------------------------------- the report

def command_output(*cmd):
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=REPO).stdout.strip()
    except OSError:
        return ""


def locked_version(crate):
    """A dependency's version from Cargo.lock (rdkafka-sys and librocksdb-sys
    carry the C library's version after the `+`)."""
    with open(os.path.join(REPO, "Cargo.lock")) as f:
        m = re.search(r'name = "%s"\nversion = "([^"]+)"' % re.escape(crate), f.read())
    return m.group(1) if m else "?"


def machine():
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    with open("/proc/meminfo") as f:
        ram_kb = next(int(l.split()[1]) for l in f if l.startswith("MemTotal:"))
    return f"{cpu}, {os.cpu_count()} cores, {ram_kb / 2**20:.0f} GB RAM, Linux {platform.release()}"


def versions(a):
    import confluent_kafka
    quix = command_output(a.quix_python, "-c", "import quixstreams, confluent_kafka; "
                          "print(quixstreams.__version__, confluent_kafka.__version__, confluent_kafka.libversion()[0])").split() \
        if a.quix_python and a.peers else []
    rev = command_output("git", "rev-parse", "--short", "HEAD")
    # The other engineers' uncommitted work is in what was built: say so.
    dirty = command_output("git", "status", "--porcelain", "--untracked-files=no", "--", "src", "benches", "Cargo.toml", "Cargo.lock")
    rdkafka = locked_version("rdkafka-sys")
    rocksdb = locked_version("librocksdb-sys")
    return [
        "git " + rev + (" + uncommitted changes in src/" if dirty else ""),
        command_output(a.resevent, "--version"),  # "resevent X.Y.Z"
        f"librdkafka {rdkafka.split('+')[-1]} (rdkafka-sys {rdkafka.split('+')[0]}), RocksDB {rocksdb.split('+')[-1]}",
        command_output("rustc", "--version"),
        command_output(a.tansu, "--version"),
        f"quixstreams {quix[0]} (confluent-kafka {quix[1]}, librdkafka {quix[2]})" if len(quix) == 3 else "quixstreams: not run",
        f"load producers, passthrough.py, plain consumer: Python {platform.python_version()}, confluent-kafka {confluent_kafka.__version__}, "
        f"librdkafka {confluent_kafka.libversion()[0]}",
    ]


def linger_ms():
    """resevent's producer linger as its source sets it (it is reported
    nowhere else); passthrough.py is given the same."""
    try:
        with open(os.path.join(REPO, "src", "kafka.rs")) as f:
            m = re.search(r'"linger\.ms",\s*"(\d+)"', f.read())
        return int(m.group(1)) if m else 5
    except OSError:
        return 5


RESEVENT_LINGER_MS = linger_ms()


def rate(x):
    return f"{x:,.0f}" if x else "n/a"


def drained(d):
    """A drain's figure; ‡ where the outside clock failed and the program's own figure stands."""
    return f"{rate(d['records_per_second'])} records/s" + (" ‡" if d.get("clock_failed") else "")


def verdict(ok):
    return "pass" if ok else "**miss**"


def report(bench, argv):
    """The table and its header and notes, as (console text, Markdown)."""
    r, a = bench.results, bench.a
    err = r["errors"]
    rows = []  # (part, what, figure, target, verdict)

    def failed(part, what):
        rows.append((what[0], what[3:], f"failed: {err[part]}", "", "—"))

    w = r.get("workload", {})
    if "drain" in err:
        failed("drain", "1. drain")
    elif "drain" not in a.skip:
        ra, rb = r["a"]["records_per_second"], r["b"]["records_per_second"]
        rp = r.get("p", {}).get("records_per_second")
        c, d = r.get("c", {}), r.get("d", {})
        no_peers = "skipped: no peers directory" if not a.peers else "skipped"
        rows.append(("1a", "`resevent run --passthrough`", drained(r["a"]), "", ""))
        rows.append(("1p", "passthrough.py (Python confluent-kafka, same topic and commit interval)",
                     drained(r["p"]) if rp else f"n/a ({no_peers})", "", ""))
        limit = max(ra, rp or 0)
        rows.append(("1", "the limit: the faster of 1a and 1p", f"{rate(limit)} records/s ({'1p' if rp and rp > ra else '1a'})", "", ""))
        rows.append(("1b", "`resevent run`, at-least-once", drained(r["b"]), "", ""))
        rows.append(("1c", "`resevent run --guarantee exactly-once` ¹",
                     drained(c) if c.get("records_per_second") else f"n/a ({c.get('error', 'skipped')})", "", ""))
        rows.append(("1d", "Quix Streams peer", f"{rate(d['records_per_second'])} records/s" if d.get("records_per_second")
                     else f"n/a ({no_peers})", "", ""))
        rows.append(("1", "b / the limit", f"{100 * rb / limit:.0f}%", f"≥ {TARGETS['b_over_limit']:.0%}",
                     verdict(rb / limit >= TARGETS["b_over_limit"])))
        rows.append(("1", "b / 1a (`--passthrough`)", f"{100 * rb / ra:.0f}%", "", ""))
        # Variants of (b) drained in the same rounds, each with its ratio to (b).
        for k, what, ratio in (("h", "`resevent run --no-http` (no operations endpoint)", "b / h (HTTP server and metrics on vs off)"),
                               ("e", "`resevent run --output-format avro` (at-least-once, registry on loopback)", "e / b (Avro vs JSON out)"),
                               ("f", "`resevent run` reading the MongoDB connector's Avro (registry on loopback)", "f / b (Avro vs JSON in)")):
            x = r.get(k, {}).get("records_per_second")
            if x:
                rows.append((f"1{k}", what, drained(r[k]), "", ""))
                rows.append(("1", ratio, f"{100 * (rb / x if ratio.startswith('b /') else x / rb):.0f}%", "", ""))
        eb = r.get("event_bytes", {})
        if eb.get("b", {}).get("mean_bytes") and eb.get("e", {}).get("mean_bytes"):
            rows.append(("1", "bytes per business event, Avro / JSON",
                         f"{eb['e']['mean_bytes']:.0f} / {eb['b']['mean_bytes']:.0f} B ({100 * eb['e']['mean_bytes'] / eb['b']['mean_bytes']:.0f}%)", "", ""))
        if d.get("records_per_second"):
            bd = rb / d["records_per_second"]
            rows.append(("1", "b / d", f"{bd:.1f}×", f"≥ {TARGETS['b_over_d']:.0f}×", verdict(bd >= TARGETS["b_over_d"])))
        if c.get("records_per_second"):
            cb = c["records_per_second"] / rb
            rows.append(("1", "c / b", f"{100 * cb:.0f}%", f"≥ {TARGETS['c_over_b']:.0%}", verdict(cb >= TARGETS["c_over_b"])))
    if "latency" in err:
        failed("latency", "2. latency")
    elif "latency" in r:
        for lat in r["latency"]:
            ms = lat["latency_ms"]
            # The target is (b)'s at the target's load; the rest explain it.
            target = lat is r["latency"][0]
            rows.append(("2", f"latency p50 / p99 / max, {lat['label']}, {rate(lat['offered'])}/s ²",
                         f"{ms['p50']} / {ms['p99']} / {ms['max']} ms",
                         f"p99 < {TARGETS['p99_ms']} ms" if target else "",
                         verdict(ms["p99"] is not None and ms["p99"] < TARGETS["p99_ms"]) if target else ""))
    if "restore" in err:
        failed("restore", "3. restore")
    elif "restore" in r:
        rs = r["restore"]
        rows.append(("3", f"restore {rs['reservations']:,} reservations into an empty state dir ³",
                     f"{rs['seconds']:.1f} s, {rate(rs['per_second'])} records/s", f"≥ {TARGETS['restore_per_second']:,} records/s",
                     verdict(rs["per_second"] >= TARGETS["restore_per_second"])))
        if rs.get("plain"):
            pl = rs["plain"]
            rows.append(("3", "a plain consumer of the same changelog (Python confluent-kafka)",
                         f"{pl['seconds']:.1f} s, {rate(pl['per_second'])} records/s", "", ""))
            rows.append(("3", "restore / plain consumer", f"{100 * rs['per_second'] / pl['per_second']:.0f}%",
                         f"≥ {TARGETS['restore_over_plain']:.0%}", verdict(rs["per_second"] >= TARGETS["restore_over_plain"] * pl["per_second"])))
    if "state" in err:
        failed("state", "4. state")
    if "b" in r:
        peak = max(r["b"]["peak_rss_mbs"])
        rows.append(("4", f"peak RSS, `resevent run` draining the workload (highest of {len(r['b']['peak_rss_mbs'])} rounds) ⁴",
                     f"{peak:.0f} MB", f"< {TARGETS['rss_mb']} MB", verdict(peak < TARGETS["rss_mb"])))
    if "restore" in r:
        rs = r["restore"]
        rows.append(("4", f"peak RSS, `resevent run` draining {rs['reservations']:,} new reservations ⁴",
                     f"{rs['build_peak_rss_mb']:.0f} MB", f"< {TARGETS['rss_mb']} MB", verdict(rs["build_peak_rss_mb"] < TARGETS["rss_mb"])))
        rows.append(("4", f"RSS, `resevent run` having restored {rs['reservations']:,} (its peak) ⁴",
                     f"{rs['restored_rss_mb']:.0f} MB ({rs['restored_peak_rss_mb']:.0f} MB)", "", ""))
    for s in r.get("state", []):
        rows.append(("4", f"peak RSS, {s['reservations']:,} reservations (`replay`) ⁴", f"{s['peak_rss_mb']:.0f} MB", "", ""))
    if "a" in r:
        rows.append(("4", "peak RSS, `resevent run --passthrough` (no state) draining the workload ⁴", f"{r['a']['peak_rss_mb']:.0f} MB", "", ""))
    if "core" in err:
        failed("core", "5. core")
    elif "core" in r:
        co = r["core"]
        rows.append(("5", "core: decode + table + RocksDB, one thread ⁵", f"{rate(co['core_per_second'])} events/s",
                     f"≥ {TARGETS['core_per_second']:,} events/s", verdict(co["core_per_second"] >= TARGETS["core_per_second"])))
        rows.append(("5", "core / decode-only (serde_json → `Value`)",
                     f"{100 * co['core_per_second'] / co['decode_only_per_second']:.0f}% (of {rate(co['decode_only_per_second'])})", "", ""))

    cfg = bench.settings or {}
    v = r.get("versions") or versions(a)
    header = [
        f"date: {r['started']:%Y-%m-%d %H:%M} UTC, {r.get('minutes', 0):.0f} minutes; load average (1 min) before: "
        f"{r['load_before'][0]:.2f}, after: {os.getloadavg()[0]:.2f}",
        f"machine: {machine()}",
        "versions: " + "; ".join(v),
        f"workload: resevent's generator (src/workload.rs, as scripts/bench.py writes it; seed {a.seed}), {w.get('records', 0):,} "
        f"MongoDB source connector change events, {w.get('mean_bytes', 0)} bytes per value on average, "
        f"{w.get('keys', 0):,} distinct reservations (keys); {a.partitions} partitions; Tansu memory storage on loopback",
        f"resevent settings: commit_interval_ms {a.commit_interval_ms} (exactly-once: "
        f"{a.commit_interval_ms if a.commit_interval_given else 100}), max_batch_records {cfg.get('max_batch_records', '?')}, "
        f"batch_wait_ms {cfg.get('batch_wait_ms', '?')}, producer linger.ms {RESEVENT_LINGER_MS}, acks=all, idempotent; consumer "
        f"session.timeout.ms 6000; passthrough.py: --commit-interval-ms {a.commit_interval_ms} --linger-ms {RESEVENT_LINGER_MS}, "
        f"fetch.wait.max.ms as resevent's; Quix: its defaults (commit_interval {r.get('d', {}).get('commit_interval', '?')})",
        f"preload producer: {fmt_settings(PRELOAD_PRODUCER)}; latency load producer: {fmt_settings(LIVE_PRODUCER)}",
    ]
    notes = []
    if "b" in r:
        d = r.get("d", {})
        notes.append(f"Drain rates: records over the time from the program's consumer group becoming Stable to its committed "
                     f"offsets covering every record (outputs acknowledged, offsets committed), watched from outside every 50 ms, "
                     f"the same for (a), (p), (b) and (c); the Quix peer's is its own figure (first to last record processed, "
                     f"before its 5 s commits; by the same clock: {rate(d.get('clocked_per_second'))} records/s). "
                     f"What the programs report themselves: (a) {rate(r['a'].get('reported_per_second'))}, "
                     + f"(b) {rate(r['b'].get('reported_per_second'))} records/s (resevent's own figure counts the "
                     f"{IDLE_EXIT_SECS} s idle-exit wait in). passthrough.py is told one record more than there are, so that it "
                     f"commits its last records on its interval timer as resevent does (told the exact count it commits at once), "
                     f"and is stopped once they are committed. ‡ the outside clock failed; the program's own figure. "
                     f"(a), (p) and (b) best of {a.rounds} alternating rounds: "
                     + "; ".join(f"({k}) {', '.join(rate(x) for x in r[k]['rounds'])}" for k in "apb" if k in r) + ". "
                     f"Business events written: (b) {r['b']['events']:,}"
                     + (f", (c) {r['c']['events']:,}" if "events" in r.get("c", {}) else "")
                     + (f", (d) {r['d']['events']:,}" if "events" in r.get("d", {}) else "") + ".")
        drains = [(k, r[k]) for k in "apbcd" if "cpu_s" in r.get(k, {})]
        notes.append("CPU seconds per drain, the program's + Tansu's (2 cores, so at most 2 per second of wall time): "
                     + "; ".join(f"({k}) {d['cpu_s']:.1f} + {d['broker_cpu_s']:.1f} in {d['records'] / d['records_per_second']:.1f} s"
                                 for k, d in drains) + f". A fresh Tansu for each of parts 1–3; the most resident memory one reached: {r.get('tansu_rss_mb', 0):,.0f} MB.")
    notes.append("¹ Tansu 0.6.0 commits transactions but does not hide aborted records from read_committed consumers; "
                 "nothing aborts in this run, so the figure is the cost of a transaction per batch, "
                 "while the guarantee itself is tested against noida-db (tests/exactly_once.rs).")
    if r.get("latency"):
        lat = r["latency"][0]
        share = f"{lat['offered'] / r['b']['records_per_second']:.0%} of (b)'s drain rate" if "b" in r else "the given rate"
        notes.append(f"² The load is {share}. Achieved: "
                     f"{', '.join(rate(l['achieved']) for l in r['latency'])} records/s, {lat['seconds']:.0f} s each, one run after another, "
                     "each on a fresh topic once its consumer group was stable, the drain workload's records. Latency: from each "
                     "input record's Kafka timestamp (CreateTime, set when the load producer sent it) to the acknowledgement of its "
                     "business events (the passthrough: of its copy), measured inside resevent (1 ms histogram). "
                     "Tansu holds a fetch for up to fetch.wait.max.ms (librdkafka's default 500 ms) even when records arrive "
                     "meanwhile, where Apache Kafka answers once fetch.min.bytes (1) are there: the low-latency profile sets "
                     "fetch.wait.max.ms=10 (RESEVENT_CONSUMER__FETCH_WAIT_MAX_MS=10); the last row shows the default's cost. "
                     "Load producer, broker and instance share the machine's 2 cores; cores each kept busy while the load "
                     "ran (the instance's whole CPU time over the load's duration): "
                     + "; ".join(f"{l['label']} at {rate(l['offered'])}/s: " + ", ".join(f"{k} {v:.2f}" for k, v in l["cores"].items()) for l in r["latency"]) + ".")
    if "restore" in r:
        rs = r["restore"]
        notes.append(f"³ A drain of {rs['reservations']:,} insert events (~{rs['input_mean_bytes']} bytes) of distinct reservations "
                     f"(built at {rate(rs['build_per_second'])} records/s) wrote the changelog; a second instance of the same "
                     f"application with an empty --state-dir restored {rs['records']:,} changelog records: time from its first "
                     f"`restoring state from the changelog` log line to its last `restored` "
                     f"(each partition's own rate: {', '.join(rate(x) for x in rs['partitions'].values())} records/s); state on disk "
                     f"{rs['state_mb']:.0f} MB; CPU seconds, the instance's + Tansu's: {rs['cpu_s']:.1f} + {rs['broker_cpu_s']:.1f}. "
                     + (f"Plain consumers of the same changelog afterwards, on the same broker, with restore's fetch settings "
                        f"(16 MB per partition, fetch.wait.max.ms 50), every partition from the start to its end, timed from "
                        f"their first record: " + "; ".join(f"{p['consumer']}: {p['records']:,} records, {rate(p['per_second'])}/s"
                                                            for p in rs.get("plain_all", [rs["plain"]]))
                        + ". It is bound by Python's cost per record (one core), not by the broker: the reference flatters "
                        "the restore." if rs.get("plain") else ""))
    if r.get("state"):
        notes.append(f"⁴ `run` rows: ru_maxrss from wait4 of the draining instance. `replay` rows: peak resident set (ru_maxrss from wait4) of `resevent replay --state-dir DIR` fed N insert "
                     f"events (~{r['state_mean_bytes']} bytes) of N distinct reservations through a pipe, so all N are in state at "
                     "the end: " + "; ".join(f"{s['reservations']:,}: {rate(s['per_second'])} records/s, {s['state_mb']:.0f} MB on disk"
                                             for s in r["state"])
                     + ". The same store as `run`, with one column family where `run` has one per partition; "
                     "the passthrough's peak is the share of the Kafka clients alone.")
    core_table = []
    if "core" in r:
        notes.append("⁵ `RESEVENT_BENCH_QUICK=1 scripts/bench-core` (benches/core.rs: ~1 KB events, 1M reservations in state, "
                     "one thread, interleaved with serde_json's parse of the same lines); its table:")
        core_table = [l.strip() for l in r["core"]["table"]]
    command = "scripts/bench" + ("" if not argv else " " + " ".join(argv))

    width = [max(len(row[i]) for row in rows + [("", "", "", "", "")]) for i in range(5)]
    text = ["", f"$ {command}"] + header + [""]
    text += ["  ".join(c.ljust(width[i]) for i, c in enumerate(row)).rstrip().replace("**", "") for row in rows]
    text += [""] + notes + ["    " + l for l in core_table]
    md = [f"`{command}`", ""] + [f"- {h}" for h in header] + ["", "| | | figure | target | |", "|---|---|---|---|---|"]
    md += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    for n in notes:
        md += [n, ""]
    if core_table:
        md += ["```"] + core_table + ["```"]
    return "\n".join(text), "\n".join(md)


def fmt_settings(s):
    return ", ".join(f"{k}={str(v).lower()}" for k, v in s.items())


# ---------------------------------------------------------------- command line

def counts(text):
    return [int(float(x)) for x in text.split(",") if x]


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="change events preloaded for the drains (default 1M)")
    ap.add_argument("--reservations", type=int, help="distinct reservations in that workload (default: a quarter of --events)")
    ap.add_argument("--seed", type=int, default=7, help="the workload generator's seed (default 7)")
    ap.add_argument("--commit-interval-ms", type=int, help="commit interval of the at-least-once runs and passthrough.py "
                                                              "(default: resevent's, 1000; exactly-once keeps its 100 unless given)")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="alternating drains of (a), (p) and (b); the best of each counts")
    ap.add_argument("--latency-load", type=float, default=0.5, help="offered rate as a share of (b)'s (default 0.5)")
    ap.add_argument("--latency-rate", type=float, help="offered rate in records/s instead")
    ap.add_argument("--latency-seconds", type=float, default=25, help="how long the load lasts (at most the workload's records)")
    ap.add_argument("--restore-reservations", type=counts, help="distinct reservations to restore (default: --events)")
    ap.add_argument("--state-reservations", type=counts, help="comma-separated reservation counts for the RSS figure "
                                                             "(default: --events and 10x --events)")
    ap.add_argument("--skip", type=lambda s: set(s.split(",")), default=set(),
                    help="comma-separated parts to leave out: drain,eos,quix,avro,http,latency,restore,state,core")
    ap.add_argument("--peers", help="directory of the peers passthrough.py and quix_detector.py (scripts/bench gives "
                                    "$RESEVENT_PEERS or ../shared/peers when it exists; without it they are skipped)")
    ap.add_argument("--out", help="Markdown report (default: $CARGO_TARGET_DIR/../bench/latest.md); raw figures beside it as .json")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs of every process)")
    # Given by scripts/bench.
    ap.add_argument("--resevent", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--tansu", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--quix-python", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.reservations = a.reservations or max(1, a.events // 4)
    a.commit_interval_given = a.commit_interval_ms is not None
    a.commit_interval_ms = a.commit_interval_ms or 1000
    if a.peers and not os.path.isfile(os.path.join(a.peers, "passthrough.py")):
        ap.error(f"--peers {a.peers}: no passthrough.py there")
    a.restore_reservations = a.restore_reservations[0] if a.restore_reservations else a.events
    a.state_reservations = a.state_reservations or [a.events, 10 * a.events]
    if a.out is None:
        target = os.environ.get("CARGO_TARGET_DIR", os.path.expanduser("~/.cache/resevent/target"))
        a.out = os.path.join(os.path.dirname(os.path.abspath(target)), "bench", "latest.md")
    return a


def main():
    if sys.argv[1:2] == ["inserts"]:
        write_inserts(int(sys.argv[2]), sys.stdout)
        return
    args = parse_args(sys.argv[1:])
    # The command as a user types it, for the report: scripts/bench's own flags only.
    user_argv = sys.argv[1:]
    for internal in ("--resevent", "--tansu", "--quix-python", "--peers"):  # --peers: given by scripts/bench
        if internal in user_argv:
            i = user_argv.index(internal)
            del user_argv[i:i + 2]
    if not args.peers:
        log("note: no peers directory (../shared/peers next to the clone, or $RESEVENT_PEERS): "
            "passthrough.py and the Quix Streams peer are skipped")
    bench = Bench(args)
    try:
        bench.run()
    finally:
        bench.close()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    # The raw figures first: they survive a failure of the report below.
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump({**bench.results, "settings": bench.settings}, f, indent=1, default=str)
    text, md = report(bench, user_argv)
    print(text)
    with open(args.out, "w") as f:
        f.write(md + "\n")
    print(f"\nwritten: {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
