"""The workload feed: what the benchmark puts into the broker. The drain
workload comes from the binary (`resevent workload`); the restore's and the
state figure's inserts of distinct reservations are written here (they have
no twin in resevent); and the producer that loads either into a topic."""
import json
import subprocess
import time

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
# (src/workload.rs), as `resevent workload` writes it: ~1 KB MongoDB source
# connector events (legacy Extended JSON, `fullDocument` from updateLookup; the
# shape of gen_changes.py). Every reservation is inserted first, then updates
# pick a reservation at random and move it one step through its stay:
# check-in, room move, extension, a housekeeping note, checkout, and from there
# back to check-in (an accidental checkout undone).

def workload(resevent, reservations, events, seed):
    """Yields (key, value) as bytes: `events` change events of `reservations`
    distinct reservations, as `Workload::new(reservations, seed)` makes them,
    read from `resevent workload` while it writes them (a line at a time, never
    all of them at once); the key is the reservation's ObjectId (keyed_lines)."""
    cmd = [resevent, "workload", "--events", str(events), "--reservations", str(reservations), "--seed", str(seed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, bufsize=1 << 20)
    try:
        n = 0
        for record in keyed_lines(proc.stdout):
            n += 1
            yield record
        if proc.wait() != 0 or n != events:
            raise RuntimeError(f"`resevent workload` exited {proc.returncode} after {n:,} of {events:,} events")
    finally:
        # Stopped early (the consumer is done or failed): no more is needed.
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
        proc.wait()


KEY_PREFIX = b'"documentKey":{"_id":{"$oid":"'


def keyed_lines(lines):
    """(key, value) of the workload's JSON Lines: the key is the reservation's
    ObjectId, its documentKey (string search, not a JSON parse: the producer
    must keep up with the offered rate)."""
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

