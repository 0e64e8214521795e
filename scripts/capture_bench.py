#!/usr/bin/env python3
"""Measures `resevent capture` (run by scripts/capture-bench, which installs the
tools and builds resevent first).

Phase 1, live: writer threads insert reservations through pymongo as fast as
they can while capture runs; a consumer reads the topic as records arrive.
  - writes/s: what the driver achieved against the server;
  - captured/s: records on the topic / (last record seen - first write);
  - lag: time the record was read from the topic - time just before its
    insert was sent (both this machine's clock), p50 / p99 / max.
Phase 2, backlog: capture stopped (SIGTERM), N updates written, capture
started again; captured/s from its start to the last record read.
"""
import argparse, json, os, signal, socket, subprocess, sys, tempfile, threading, time

import pymongo
from bson import ObjectId
from confluent_kafka import Consumer, TopicPartition


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(port, what, proc):
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            sys.exit(f"{what} exited")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close(); return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port}")


def pct(xs, p):
    xs = sorted(xs); return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=20000, help="writes per phase")
    ap.add_argument("--writers", type=int, default=4, help="writer threads")
    ap.add_argument("--partitions", type=int, default=3)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="capture-bench-")
    kport, mport = free_port(), free_port()
    procs = []
    def spawn(cmd, log):
        p = subprocess.Popen(cmd, stdout=open(os.path.join(tmp, log), "w"), stderr=subprocess.STDOUT); procs.append(p); return p
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    try:
        t = spawn([os.environ["RESEVENT_TANSU"], "broker", "--listener-url", f"tcp://127.0.0.1:{kport}", "--advertised-listener-url", f"tcp://127.0.0.1:{kport}", "--storage-engine", "memory://tansu/"], "tansu.log")
        wait_port(kport, "tansu", t)
        m = spawn([os.environ["RESEVENT_SECANTUS"], "--host", "127.0.0.1", "--port", str(mport), "--storage-path", ":memory:"], "secantus.log")
        wait_port(mport, "secantus", m)
        uri = f"mongodb://127.0.0.1:{mport}/?directConnection=true"
        topic = "bench.reservation"
        def start_capture(tag):
            env = dict(os.environ, RESEVENT_LOG="info")
            return subprocess.Popen([os.environ["RESEVENT_BIN"], "capture", "--mongo-uri", uri, "--database", "property", "--collection", "reservation", "--topic", topic,
                                     "--bootstrap-servers", f"127.0.0.1:{kport}", "--partitions", str(a.partitions), "--no-http", "--lease-ms", "2000"],
                                    stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, f"capture-{tag}.log"), "w"), env=env)
        def wait_following(tag, proc):
            deadline = time.time() + 60
            while "following the change stream" not in open(os.path.join(tmp, f"capture-{tag}.log")).read():
                if proc.poll() is not None or time.time() > deadline:
                    sys.exit(f"capture did not start; see {tmp}/capture-{tag}.log")
                time.sleep(0.05)

        cap = start_capture("live"); wait_following("live", cap)
        consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{kport}", "group.id": "bench", "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(a.partitions)])
        seen = []  # (arrival time, value)
        stop = threading.Event()
        def consume():
            while not stop.is_set():
                for msg in consumer.consume(1000, 0.05):
                    if msg.error() is None:
                        seen.append((time.time(), msg.value()))
        ct = threading.Thread(target=consume); ct.start()

        client = pymongo.MongoClient(uri)
        coll = client.property.reservation
        ids = []
        def writer(n, out):
            c = pymongo.MongoClient(uri).property.reservation
            for _ in range(n):
                oid = ObjectId(); out.append(oid)
                c.insert_one({"_id": oid, "propertyId": "P-OSL-01", "bookingStatus": "Not Arrived", "roomNumber": "101", "writtenAt": time.time()})
        def write_all(fn):
            per = a.writes // a.writers; outs = [[] for _ in range(a.writers)]
            ths = [threading.Thread(target=fn, args=(per, outs[i])) for i in range(a.writers)]
            t0 = time.time(); [x.start() for x in ths]; [x.join() for x in ths]
            return t0, time.time(), per * a.writers, [i for o in outs for i in o]
        t0, t1, n, ids = write_all(writer)
        deadline = time.time() + 300
        while len(seen) < n and time.time() < deadline:
            time.sleep(0.1)
        lags = []
        for arrived, v in seen:
            d = json.loads(v)
            lags.append(arrived - d["fullDocument"]["writtenAt"])
        live = {"writes": n, "writes_per_s": n / (t1 - t0), "captured": len(seen), "captured_per_s": len(seen) / (max(x for x, _ in seen) - t0),
                "lag_p50_ms": pct(lags, 0.5) * 1000, "lag_p99_ms": pct(lags, 0.99) * 1000, "lag_max_ms": max(lags) * 1000}

        # Backlog: stop capture, write, start again.
        cap.send_signal(signal.SIGTERM); cap.wait(60)
        before = len(seen)
        def updater(n, out):
            # A room number no write before used: every update changes the
            # document (an update to the same value writes nothing to the oplog).
            c = pymongo.MongoClient(uri).property.reservation
            me = threading.get_ident()
            for i in range(n):
                c.update_one({"_id": ids[i % len(ids)]}, {"$set": {"roomNumber": f"{me}-{i}"}})
        write_all(updater)
        started = time.time()
        cap = start_capture("backlog")
        deadline = time.time() + 300
        while len(seen) < before + n and time.time() < deadline:
            time.sleep(0.05)
        drained = len(seen) - before
        backlog = {"backlog": n, "drained": drained, "seconds_from_start": max(x for x, _ in seen) - started, "captured_per_s": drained / (max(x for x, _ in seen) - started)}
        stop.set(); ct.join(); consumer.close()
        cap.send_signal(signal.SIGTERM); cap.wait(60)
        print(json.dumps({"live": live, "backlog": backlog, "logs": tmp}, indent=2))
        print(f"\nlive: {live['writes_per_s']:.0f} writes/s by {a.writers} pymongo threads, {live['captured_per_s']:.0f} changes/s captured, "
              f"write→topic lag p50 {live['lag_p50_ms']:.1f} ms, p99 {live['lag_p99_ms']:.1f} ms (max {live['lag_max_ms']:.1f})")
        print(f"backlog: {drained}/{n} changes drained at {backlog['captured_per_s']:.0f} changes/s (including start-up, lease and read-back)")
    finally:
        for p in procs + [c for c in [locals().get("cap")] if c]:
            p.kill()


if __name__ == "__main__":
    main()
