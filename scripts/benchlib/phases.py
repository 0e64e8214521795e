"""The benchmark's phases, one function of the Bench (benchlib.runner) each:
drain (with its variants: eos, quix and the passthrough.py rounds), latency,
restore, state and core. Each puts its figures in bench.results."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request

from .feed import avro_changes, distinct_inserts, keyed_lines, produce, workload
from .procs import Child, DrainClock, RegistryDouble, dir_mb, last_json, messages, partitions_ready, plain_read, timed, value_bytes
from .settings import (IDLE_EXIT_SECS, LATENCY_VARIANTS, LIVE_IDLE_EXIT_SECS, LIVE_PRODUCER, PRELOAD_PRODUCER, REPO,
                       RESEVENT_LINGER_MS, log)


def drain(bench):
    """1. The workload preloaded into `raw`, drained by (a), (p), (b) and the
    variants of (b) in alternating rounds, then (c) and (d)."""
    a = bench.a
    bench.broker.create_topic("raw", a.partitions)
    log(f"preloading {a.events:,} change events of {a.reservations:,} reservations (resevent's workload, seed {a.seed}) "
        f"into raw, {a.partitions} partitions")
    # The same records again feed the latency run: saved while preloading.
    with open(os.path.join(bench.workdir, "changes.jsonl"), "wb") as copy:
        load = produce(bench.broker.bootstrap, "raw", workload(a.resevent, a.reservations, a.events, a.seed), PRELOAD_PRODUCER,
                       count_keys=True, copy_to=copy)
    bench.results["workload"] = {"records": load.records, "mean_bytes": round(load.mean_bytes), "keys": len(load.keys)}
    log(f"  {load.records:,} records, {load.mean_bytes:.0f} bytes each on average, {len(load.keys):,} distinct reservations, {load.seconds:.0f} s")

    # The passthroughs and (b) alternate, best of the rounds: the machine is
    # shared and noisy, and the best run is the closest to what the code
    # can do. (a) `resevent run --passthrough` and (p) passthrough.py
    # move the same topic with the same commit interval; the faster is
    # the limit.
    runs = {"a": [], "p": [], "b": []} if a.peers else {"a": [], "b": []}
    # (e): (b) with business events as Avro through a registry, in the same rounds.
    registry = None if "avro" in a.skip else RegistryDouble(a.registry_double, bench.workdir)
    try:
        if registry:
            runs["e"] = []
            # (f): (b) reading the same changes as the MongoDB connector's Avro.
            with open(os.path.join(REPO, "fixtures", "avro", "mongo-change-stream.avsc")) as f:
                change_schema = f.read()
            sid = registry.register("raw-avro-value", change_schema)
            bench.broker.create_topic("raw-avro", a.partitions)
            load = produce(bench.broker.bootstrap, "raw-avro",
                           avro_changes(workload(a.resevent, a.reservations, a.events, a.seed), change_schema, sid), PRELOAD_PRODUCER)
            bench.results["avro_input"] = {"records": load.records, "mean_bytes": round(load.mean_bytes)}
            log(f"  raw-avro: {load.records:,} records, {load.mean_bytes:.0f} bytes each on average (JSON: {bench.results['workload']['mean_bytes']})")
            runs["f"] = []
        # (h): (b) without its HTTP server (/metrics, status page), in the same rounds.
        if "http" not in a.skip:
            runs["h"] = []
        for r in range(1, a.rounds + 1):
            runs["a"].append(bench.drain_resevent(f"(a) resevent run --passthrough, round {r}", f"bench-pass-{r}", "--passthrough"))
            if a.peers:
                runs["p"].append(drain_passthrough_py(bench, r))
            runs["b"].append(bench.drain_resevent(f"(b) at-least-once, round {r}", f"bench-run-{r}"))
            if "h" in runs:
                runs["h"].append(bench.drain_resevent(f"(h) at-least-once, --no-http, round {r}", f"bench-nohttp-{r}", "--no-http"))
            if registry:
                runs["e"].append(bench.drain_resevent(f"(e) at-least-once, Avro out, round {r}", f"bench-avro-{r}",
                                                      "--output-format", "avro", "--schema-registry-url", registry.url))
                runs["f"].append(bench.drain_resevent(f"(f) at-least-once, Avro in, round {r}", f"bench-avro-in-{r}",
                                                      "--schema-registry-url", registry.url, topic="raw-avro"))
        if registry:
            # Bytes per business event, the same events in both forms.
            for k, app in (("b", "bench-run-1"), ("e", "bench-avro-1")):
                n, total = value_bytes(bench.broker.bootstrap, f"{app}.out")
                bench.results.setdefault("event_bytes", {})[k] = {"events": n, "mean_bytes": total / n if n else None}
    finally:
        if registry:
            registry.stop()
    for k, rs in runs.items():
        bench.results[k] = max(rs, key=lambda s: s["records_per_second"] or 0)
        bench.results[k]["rounds"] = [s["records_per_second"] for s in rs]
        bench.results[k]["peak_rss_mbs"] = [s["peak_rss_mb"] for s in rs]
    if "eos" not in a.skip:
        eos(bench)
    if "quix" not in a.skip and a.peers and a.quix_python:
        bench.results["d"] = quix(bench)


def eos(bench):
    """(c) `resevent run --guarantee exactly-once` drains the same topic; a
    failure is its row's figure, not the drain's."""
    try:
        bench.results["c"] = bench.drain_resevent("(c) exactly-once", "bench-eos", "--guarantee", "exactly-once")
    except RuntimeError as e:
        bench.results["c"] = {"error": str(e).splitlines()[0][:200]}


def drain_passthrough_py(bench, r):
    """(p) ../shared/peers/passthrough.py: librdkafka from Python, consume
    → produce, a flush and an offset commit every commit interval, with
    resevent's producer linger and the same consumer fetch wait. It is
    told one record more than there are: told the exact count, it would
    flush and commit the moment it has the last record, where resevent
    commits on its next interval tick; this way both commit the last
    records on their timer. It is stopped once the clock has seen every
    record committed, so its own summary is not printed."""
    log(f"drain (p) passthrough.py, round {r}")
    records = bench.results["workload"]["records"]
    broker_cpu = bench.broker.cpu_seconds()
    fetch_wait = int(os.environ.get("RESEVENT_CONSUMER__FETCH_WAIT_MAX_MS", "500"))
    clock = DrainClock(bench.broker.bootstrap, f"bench-py-{r}", "raw", bench.a.partitions, records)
    child = Child(f"passthrough-py-{r}", [sys.executable, os.path.join(bench.a.peers, "passthrough.py"), "--bootstrap",
                                           bench.broker.bootstrap, "--input", "raw", "--output", f"bench-py-{r}.out",
                                           "--group", f"bench-py-{r}", "--records", str(records + 1),
                                           "--commit-interval-ms", str(bench.a.commit_interval_ms),
                                           "--linger-ms", str(RESEVENT_LINGER_MS), "--fetch-wait-ms", str(fetch_wait)],
                  bench.workdir)
    clock.done.wait(600)
    child.signal(signal.SIGTERM)
    child.finish(30)
    if not clock.done.is_set():
        raise RuntimeError(f"passthrough.py did not commit every record in 600 s ({child.returncode}): {child.tail()}")
    summary = timed({"records": records, "records_per_second": None}, clock, records)
    summary.update(peak_rss_mb=child.peak_rss_kb / 1024, cpu_s=child.cpu_seconds, broker_cpu_s=bench.broker.cpu_seconds() - broker_cpu)
    log(f"  {summary['records']:,} records, {summary['records_per_second']:,.0f} records/s")
    return summary


def quix(bench):
    """(d) the Quix Streams peer drains the same topic."""
    log("drain (d): Quix Streams peer")
    state = os.path.join(bench.workdir, "quix-state")
    broker_cpu = bench.broker.cpu_seconds()
    records = bench.results["workload"]["records"]
    clock = DrainClock(bench.broker.bootstrap, "bench-quix", "raw", bench.a.partitions, records)
    child = Child("quix", [bench.a.quix_python, os.path.join(bench.a.peers, "quix_detector.py"), "--bootstrap", bench.broker.bootstrap,
                           "--input", "raw", "--output", "quix.events", "--group", "bench-quix", "--state-dir", state,
                           "--idle", str(IDLE_EXIT_SECS)], bench.workdir)
    out = child.finish(3600)
    if child.returncode != 0:
        raise RuntimeError(f"quix_detector.py exited {child.returncode}: {child.tail()}")
    summary = last_json(out, "quix_detector.py")
    # Its own figure counts (first record to last record, before its
    # commits), which is kinder to it than the clock of the others; the
    # clock's figure is noted beside it.
    seconds = clock.seconds()
    summary["clocked_per_second"] = records / seconds if seconds else None
    summary.update(peak_rss_mb=child.peak_rss_kb / 1024, cpu_s=child.cpu_seconds, broker_cpu_s=bench.broker.cpu_seconds() - broker_cpu)
    # Its own start-up line names its commit interval, the batch it acknowledges by.
    cfg = next((l for l in child.lines if "Starting the Application with the config" in l), "")
    m = re.search(r"commit_interval=(\S+)", cfg)
    summary["commit_interval"] = m.group(1) if m else "?"
    log(f"  {summary['records']:,} records, {summary['records_per_second'] or 0:,.0f} records/s")
    shutil.rmtree(state, ignore_errors=True)
    return summary


def latency(bench):
    """2. Live instances fed the drain workload at a share of (b)'s rate."""
    a = bench.a
    rate = a.latency_rate or a.latency_load * ((bench.results.get("b") or {}).get("records_per_second") or 0)
    if not rate:
        raise RuntimeError("no rate for the latency run: (b) was not measured; give --latency-rate")
    available = bench.results.get("workload", {}).get("records", 0)
    if not available:
        raise RuntimeError("the latency run replays the drain workload, which was not generated")
    bench.broker.create_topic("warm-up", 1)
    bench.results["latency"] = []
    for n, (key, label, flags, env, share) in enumerate(LATENCY_VARIANTS, 1):
        # Bounded by the workload: records are not repeated (repeats would
        # be stale changes, cheaper than real ones).
        count = int(min(rate * share * a.latency_seconds, available))
        summary = latency_run(bench, n, label, flags, env, rate * share, count)
        summary.update(key=key, label=label)
        bench.results["latency"].append(summary)


def latency_run(bench, n, label, flags, env, rate, count):
    """One live instance, a fresh topic, `count` records at `rate`."""
    topic, app_id = f"live-{n}", f"bench-latency-{n}"
    bench.broker.create_topic(topic, bench.a.partitions)
    child = bench.resevent(app_id, "--input-topic", topic, "--application-id", app_id, "--output-topic", f"{app_id}.out",
                           "--state-dir", os.path.join(bench.workdir, app_id), *flags, env=env, idle=LIVE_IDLE_EXIT_SECS)
    # Records sent before the group has settled would time the rebalance:
    # wait for the group, and for `run` also for its state.
    group = app_id + ("-passthrough" if "--passthrough" in flags else "")
    ready = bench.broker.wait_group_stable(group, 120)
    if ready and "--passthrough" not in flags:
        ready = child.wait_for(partitions_ready(bench.a.partitions), 60)
    if not ready:
        child.signal(signal.SIGKILL)
        child.finish(10)
        raise RuntimeError(f"{app_id} did not get its partitions: {child.tail()}")
    time.sleep(1)  # the first fetch positions
    log(f"latency: {label}: {rate:,.0f} records/s for {count / rate:.0f} s")
    # Who uses the 2 cores while the load runs: this process (the load
    # producer), the broker, the instance under test.
    load_cpu, broker_cpu = time.process_time(), bench.broker.cpu_seconds()
    with open(os.path.join(bench.workdir, "changes.jsonl"), "rb") as lines:
        load = produce(bench.broker.bootstrap, topic, keyed_lines(lines), LIVE_PRODUCER, rate=rate, limit=count,
                       warm_up_topic="warm-up", reports=False)
    load_cpu, broker_cpu = time.process_time() - load_cpu, bench.broker.cpu_seconds() - broker_cpu
    # The loop's pauses while the load ran (the commit's above all), read
    # before the idle exit: a figure that does not depend on the broker's speed.
    paused = pauses("http://127.0.0.1:9464/metrics") if "--passthrough" not in flags else None
    summary = bench.finish_resevent(child)
    summary["paused"] = paused
    summary.update(offered=rate, achieved=load.records / load.seconds, seconds=load.seconds,
                   cores={"load producer": load_cpu / load.seconds, "Tansu": broker_cpu / load.seconds,
                          "instance": child.cpu_seconds / load.seconds})
    if summary["records"] != load.records:
        raise RuntimeError(f"{app_id} processed {summary['records']} of {load.records} records")
    log(f"  achieved {summary['achieved']:,.0f} records/s; latency_ms {summary['latency_ms']}")
    return summary


def pauses(url):
    """`resevent_processing_paused_seconds` by reason: how many, the mean and
    the p99 bucket bound in ms; None when it cannot be read."""
    try:
        text = urllib.request.urlopen(url, timeout=5).read().decode()
    except OSError:
        return None
    out = {}
    for reason in ("commit", "cache-full", "revocation", "restore"):
        def value(series):
            m = re.search(r"^resevent_processing_paused_seconds_" + re.escape(series) + r" (\S+)$", text, re.M)
            return float(m.group(1)) if m else None
        count, total = value(f'count{{reason="{reason}"}}'), value(f'sum{{reason="{reason}"}}')
        if not count:
            continue
        buckets = []
        p99 = None
        for m in re.finditer(r'^resevent_processing_paused_seconds_bucket\{([^}]*)\} (\S+)$', text, re.M):
            labels = dict(kv.split("=", 1) for kv in m.group(1).split(","))
            if labels.get("reason", "").strip('"') != reason:
                continue
            le = labels.get("le", "").strip('"')
            bound = float("inf") if le == "+Inf" else float(le)
            buckets.append((bound, float(m.group(2))))
        for bound, cumulative in sorted(buckets):
            if cumulative >= 0.99 * count:
                p99 = bound * 1000
                break
        out[reason] = {"count": int(count), "mean_ms": 1000 * total / count, "p99_bound_ms": p99}
    return out


def restore(bench):
    """3. A changelog of distinct reservations built by a drain, restored by a
    fresh instance, then read by a plain consumer."""
    a = bench.a
    n = a.restore_reservations
    bench.broker.create_topic("restore.raw", a.partitions)
    log(f"restore: {n:,} inserts of distinct reservations into restore.raw")
    load = produce(bench.broker.bootstrap, "restore.raw", distinct_inserts(n), PRELOAD_PRODUCER)
    common = ("--input-topic", "restore.raw", "--application-id", "bench-restore", "--output-topic", "bench-restore.out")
    # First an instance builds the state and its changelog …
    clock = DrainClock(bench.broker.bootstrap, "bench-restore", "restore.raw", a.partitions, n)
    first = bench.resevent("bench-restore-build", *common, "--state-dir", os.path.join(bench.workdir, "restore-build"))
    built = timed(bench.finish_resevent(first), clock, n)
    log(f"  built by a drain at {built['records_per_second'] or 0:,.0f} records/s, peak RSS {first.peak_rss_kb / 1024:.0f} MB")
    # … then a fresh one, same group, empty state dir, rebuilds it. It has
    # nothing left to consume, so it is stopped (SIGTERM) once restored.
    empty = os.path.join(bench.workdir, "restore-empty")
    broker_cpu = bench.broker.cpu_seconds()
    second = bench.resevent("bench-restore", *common, "--state-dir", empty, idle=3600)
    ok = second.wait_for(partitions_ready(a.partitions), 3600)
    rss_restored = second.rss_kb()
    broker_cpu = bench.broker.cpu_seconds() - broker_cpu
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
    bench.results["restore"] = {
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
    readers = [plain_read(bench.broker.bootstrap, changelog, a.partitions)]
    for plain in readers:
        log(f"  plain consumer ({plain['consumer']}) of the changelog: {plain['records']:,} records in "
            f"{plain['seconds']:.1f} s ({plain['per_second']:,.0f}/s)")
    bench.results["restore"]["plain"] = max(readers, key=lambda p: p["per_second"])
    bench.results["restore"]["plain_all"] = readers
    shutil.rmtree(empty, ignore_errors=True)
    shutil.rmtree(os.path.join(bench.workdir, "restore-build"), ignore_errors=True)


def state(bench):
    """4. Peak RSS of `resevent replay` fed n distinct reservations from a
    generator process through a pipe: no broker memory involved (10M ~1 KB
    records would be ~10 GB in Tansu's memory storage)."""
    rows = []
    for n in bench.a.state_reservations:
        log(f"state: {n:,} distinct reservations through resevent replay")
        dir_ = os.path.join(bench.workdir, f"replay-{n}")
        gen = subprocess.Popen([sys.executable, os.path.join(REPO, "scripts", "bench.py"), "inserts", str(n)], stdout=subprocess.PIPE)
        child = Child(f"replay-{n}", [bench.a.resevent, "replay", "--state-dir", dir_], bench.workdir,
                      env={"RESEVENT_LOG": "info"}, stdin=gen.stdout, stdout=subprocess.DEVNULL)
        gen.stdout.close()  # replay holds the only read end now
        child.finish(3600)
        if gen.wait() != 0 or child.returncode != 0:
            raise RuntimeError(f"replay of {n} reservations failed ({child.returncode}): {child.tail()}")
        rows.append({"reservations": n, "peak_rss_mb": child.peak_rss_kb / 1024, "seconds": child.seconds,
                     "per_second": n / child.seconds, "state_mb": dir_mb(dir_)})
        log(f"  peak RSS {child.peak_rss_kb / 1024:.0f} MB, {n / child.seconds:,.0f} records/s, state on disk {rows[-1]['state_mb']:.0f} MB")
        shutil.rmtree(dir_, ignore_errors=True)
    bench.results["state"] = rows
    bench.results["state_mean_bytes"] = round(sum(len(v) for _, v in distinct_inserts(1000)) / 1000)


def core(bench):
    """5. scripts/bench-core's side-by-side table."""
    log("core: RESEVENT_BENCH_QUICK=1 scripts/bench-core (builds the bench first)")
    proc = subprocess.run([os.path.join(REPO, "scripts", "bench-core")], env={**os.environ, "RESEVENT_BENCH_QUICK": "1"},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open(os.path.join(bench.workdir, "bench-core.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"scripts/bench-core exited {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}")
    figure = lambda label: float(re.search(re.escape(label) + r"\s+([\d.]+)", proc.stdout).group(1))
    try:
        bench.results["core"] = {
            "core_per_second": figure("decode + table + RocksDB"),
            "decode_only_per_second": figure("decode-only (serde_json)"),
            "table": [l for l in proc.stdout.splitlines() if l.strip()][-7:],
        }
    except AttributeError:
        raise RuntimeError("scripts/bench-core's side-by-side table has changed; see bench-core.log")
    log(f"  {bench.results['core']['core_per_second']:,.0f} events/s")

