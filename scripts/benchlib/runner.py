"""The benchmark's run: one Bench holds the arguments, the work dir, the broker
in use and the results; it starts resevent instances for the phases
(benchlib.phases) and runs each phase on a fresh broker."""
import datetime
import json
import os
import shutil
import tempfile
import threading
import time

from . import phases
from .procs import Child, DrainClock, Tansu, last_json, scrape, timed
from .report import versions
from .settings import IDLE_EXIT_SECS, RESEVENT_ENV, STARTED, log

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
        """Runs one part, fn(self); a failure is recorded in the table, the rest goes on."""
        if name in self.a.skip:
            return
        try:
            fn(self)
        except Exception as e:  # the table says which part failed and why
            log(f"{name} failed: {e}")
            self.results["errors"][name] = str(e).splitlines()[0][:200]

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
            self.phase(part, getattr(phases, part))
        self.fresh_broker(start=False)
        # Without a broker: these two use no network.
        self.phase("state", phases.state)
        self.phase("core", phases.core)
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

