"""The broker and the processes the benchmark runs: Tansu, the Schema
Registry double, every child process (its log, peak RSS and CPU time), the
outside clock of a drain, resevent's log lines, and the plain readers of a
topic."""
import datetime
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time

from .settings import log

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


# ---------------------------------------------------------------- the registry, the readers

class RegistryDouble:
    """The tests' Confluent Schema Registry double (tests/common/registry.rs),
    served by examples/registry_double.rs on a free loopback port: the one
    double the tests and the benchmark share. The Avro drains need of it to
    register a schema under a subject and to fetch one by id; the bench needs
    a registry the way it needs a broker. It prints its URL as its first line
    and serves until its stdin is closed."""

    def __init__(self, binary, workdir):
        self.log = open(os.path.join(workdir, "registry-double.log"), "w")
        self.proc = subprocess.Popen([binary], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log)
        self.url = self.proc.stdout.readline().decode().strip()
        if not self.url.startswith("http://"):
            self.stop()
            raise RuntimeError(f"the registry double ({binary}) printed no URL; see {self.log.name}")

    def register(self, subject, schema):
        import urllib.request
        req = urllib.request.Request(f"{self.url}/subjects/{subject}/versions", data=json.dumps({"schema": schema}).encode(),
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        return json.loads(urllib.request.urlopen(req, timeout=10).read())["id"]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.stdin.close()  # its end: it stops serving and exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


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

