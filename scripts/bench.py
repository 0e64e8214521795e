#!/usr/bin/env python3
"""The benchmark of issue 5, run by scripts/bench (which installs the tools and
builds resevent first). One run, one broker (Tansu, memory storage, loopback),
one table:

  1. drain     N change events of resevent's own workload generator
               (src/workload.rs, written by `resevent workload`) preloaded into
               a P-partition topic, drained by (a) `resevent run --passthrough`,
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

  bench.py --resevent BIN --tansu BIN [--registry-double BIN] [--quix-python PY] [--peers DIR] [options]
  bench.py inserts N      # N insert events of N distinct reservations, JSON Lines on stdout
"""
# The parts live in benchlib/: settings (shared settings, targets, the log),
# procs (Tansu, the registry double, child processes, the drain clock), feed
# (the workload from `resevent workload`, the inserts, the producer), phases
# (drain, eos, quix, latency, restore, state, core), runner (Bench: one run,
# a fresh broker per part) and report (the table). This file is the command
# line.
import argparse
import json
import os
import sys

from benchlib.feed import write_inserts
from benchlib.runner import Bench
from benchlib.report import report
from benchlib.settings import log

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
    # The tests' Schema Registry double (examples/registry_double.rs) for the
    # Avro drains; scripts/bench builds it beside resevent.
    ap.add_argument("--registry-double", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.reservations = a.reservations or max(1, a.events // 4)
    a.commit_interval_given = a.commit_interval_ms is not None
    a.commit_interval_ms = a.commit_interval_ms or 1000
    if a.peers and not os.path.isfile(os.path.join(a.peers, "passthrough.py")):
        ap.error(f"--peers {a.peers}: no passthrough.py there")
    a.registry_double = a.registry_double or os.path.join(os.path.dirname(os.path.abspath(a.resevent)), "examples", "registry_double")
    if not {"drain", "avro"} & a.skip and not os.access(a.registry_double, os.X_OK):
        ap.error(f"no registry double at {a.registry_double} (the Avro drains need it): build it with "
                 "`cargo build --release --example registry_double`, or give --skip avro")
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
    for internal in ("--resevent", "--tansu", "--registry-double", "--quix-python", "--peers"):  # --peers: given by scripts/bench
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
