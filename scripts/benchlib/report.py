"""The report: the table of figures against their targets, with the run's
machine, versions and settings above it and its notes below, as console text
and as Markdown."""
import os
import platform
import re
import subprocess

from .settings import IDLE_EXIT_SECS, LIVE_PRODUCER, PRELOAD_PRODUCER, REPO, RESEVENT_LINGER_MS, TARGETS

# ---------------------------------------------------------------- the run's context

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


# ---------------------------------------------------------------- the table

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
        # The target is (b)'s at the target's load, against the passthrough's
        # p99 in the same run; the rest explain it.
        floor = next((lat["latency_ms"]["p99"] for lat in r["latency"] if lat.get("key") == "a"), None)
        bound = floor * TARGETS["p99_over_passthrough"] + TARGETS["p99_slack_ms"] if floor is not None else None
        for lat in r["latency"]:
            ms = lat["latency_ms"]
            target = lat is r["latency"][0] and bound is not None
            rows.append(("2", f"latency p50 / p99 / max, {lat['label']}, {rate(lat['offered'])}/s ²",
                         f"{ms['p50']} / {ms['p99']} / {ms['max']} ms",
                         f"p99 ≤ {bound:.0f} ms (passthrough's × {TARGETS['p99_over_passthrough']} + {TARGETS['p99_slack_ms']} ms)" if target else "",
                         verdict(ms["p99"] is not None and ms["p99"] <= bound) if target else ""))
            if lat.get("paused"):
                rows.append(("2", f"processing paused while loaded, {lat['label']} (`resevent_processing_paused_seconds`)",
                             "; ".join(f"{why}: {p['count']} × {p['mean_ms']:.1f} ms mean, p99 ≤ {p['p99_bound_ms']:.1f} ms" for why, p in lat["paused"].items()),
                             "", ""))
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
        f"workload: resevent's generator (src/workload.rs, as `resevent workload` writes it; seed {a.seed}), {w.get('records', 0):,} "
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

