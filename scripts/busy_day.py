#!/usr/bin/env python3
"""A busy hotel day as MongoDB Kafka source connector change events.

Writes JSON Lines to stdout: one record value per line, exactly as the MongoDB Kafka
source connector publishes a change-stream document with
`output.json.formatter = ...DefaultJson` (legacy strict Extended JSON: {"$oid": ..},
{"$date": <ms>}, {"$timestamp": {"t": .., "i": ..}}) and
`change.stream.full.document = updateLookup`.

The day (2026-11-21, UTC) across three properties, ~60 reservations, ~400 events:
overnight bookings, morning checkouts of guests already in house, afternoon
check-ins, room moves, stay extensions, housekeeping notes, one accidental checkout
that the front desk undoes, one walk-in (inserted directly as Arrived) and one
reservation deleted while the guest is in house.

Deterministic: the same --seed gives byte-identical output.

With --expected FILE it also writes the business events PRODUCT.md's default
table (pipelines/reservations.toml) must produce for the day, derived from the
story as it is generated, not from resevent: one event per line in emission
order, every field but `eventId`, as fixtures/*.expected.jsonl.

  scripts/busy_day.py --expected fixtures/busy-day.expected.jsonl > fixtures/busy-day.jsonl
  scripts/busy_day.py --seed 7 --reservations 60 --events 400
"""
import argparse
import json
import random
import sys
import time

PROPERTIES = ("P-OSL-01", "P-BGO-02", "P-TRD-03")
DAY = 1795219200  # 2026-11-21T00:00:00Z
DAY_MS = 86400 * 1000
COLLECTION_UUID = "5A0C9E2B7D1F4C3A8B6E0D2F4A6C8E10"
FIRST_NAMES = ("Anne", "Bao", "Carlos", "Dina", "Erik", "Fatima", "Gustav", "Hana", "Ivar", "Jonas")
LAST_NAMES = ("Nguyen", "Olsen", "Garcia", "Smith", "Tanaka", "Berg", "Haugen", "Larsen")
NOTES = ("Late arrival", "Extra towels", "Quiet room please", "Crib requested",
         "Airport taxi 06:30", "Allergic to feathers", "Breakfast in room")


def object_id(n):
    """A stable 24-hex-digit ObjectId for reservation number n."""
    return "6561%08x%012x" % (DAY, 0xA0000 + n)


def date(ms):
    return {"$date": ms}


class Clock:
    """Cluster time: seconds plus an increment within the second, strictly increasing."""

    def __init__(self, start):
        self.t, self.i = start, 0

    def at(self, seconds):
        if seconds > self.t:
            self.t, self.i = seconds, 1
        else:
            self.i += 1
        return self.t, self.i


class Day:
    def __init__(self, rng, reservations):
        self.rng = rng
        self.clock = Clock(DAY)
        self.docs = {}
        self.plans = []  # (second, sequence, reservation number, action, argument)
        self.seq = 0
        self.n_reservations = reservations
        self.used_rooms = {p: set() for p in PROPERTIES}

    def room(self, prop):
        while True:
            r = str(self.rng.randrange(1, 7) * 100 + self.rng.randrange(1, 40))
            if r not in self.used_rooms[prop]:
                self.used_rooms[prop].add(r)
                return r

    def plan(self, second, n, action, arg=None):
        self.seq += 1
        self.plans.append((second, self.seq, n, action, arg))

    def new_doc(self, n, prop, status, arrival_day, nights):
        arrival = (DAY + arrival_day * 86400) * 1000
        return {
            "_id": {"$oid": object_id(n)},
            "propertyId": prop,
            "confirmationNo": "%s-%06d" % (prop[2:5], 480000 + n),
            "bookingStatus": status,
            "roomNumber": self.room(prop),
            "arrivalDate": date(arrival),
            "departureDate": date(arrival + nights * DAY_MS),
            "guest": {"firstName": self.rng.choice(FIRST_NAMES), "lastName": self.rng.choice(LAST_NAMES),
                      "email": "guest%03d@example.com" % n},
            "adults": self.rng.randrange(1, 4),
            "ratePlan": self.rng.choice(("BAR", "CORP", "PKG")),
        }

    def hour(self, lo, hi):
        return DAY + self.rng.randrange(int(lo * 3600), int(hi * 3600))

    def build(self):
        rng = self.rng
        n_total = self.n_reservations
        in_house = list(range(0, n_total // 3))              # already staying: seeded by early inserts
        arriving = list(range(n_total // 3, n_total - 2))     # arriving today
        walk_in = n_total - 2
        deleted = n_total - 1
        # The start of the stream: yesterday's inserts as seen by the connector at 00:xx.
        for n in in_house + arriving + [deleted]:
            prop = PROPERTIES[n % 3]
            status = "Arrived" if n in in_house or n == deleted else "Not Arrived"
            first_day = -rng.randrange(1, 4) if status == "Arrived" else 0
            nights = rng.randrange(1, 5) - first_day if status == "Arrived" else rng.randrange(1, 5)
            self.plan(DAY + rng.randrange(0, 3600), n, "insert",
                      self.new_doc(n, prop, status, first_day, nights))
        # Morning: in-house guests whose stay ends today check out; others get notes or extend.
        accidental = in_house[3]
        for n in in_house:
            if n % 4 != 3 or n == accidental:
                t = self.hour(6.5, 11.5)
                self.plan(t, n, "update", {"bookingStatus": "Departure"})
                if n == accidental:
                    self.plan(t + rng.randrange(90, 400), n, "update", {"bookingStatus": "Arrived"})
                    self.plan(self.hour(16, 18), n, "update", {"bookingStatus": "Departure"})
            else:
                self.plan(self.hour(8, 12), n, "update", {"departureDate": "+1"})
            for _ in range(rng.randrange(1, 4)):
                self.plan(self.hour(7, 12), n, "update", {"notes": rng.choice(NOTES)})
            for _ in range(rng.randrange(1, 4)):  # folio postings: breakfast, minibar, parking
                self.plan(self.hour(6, 11), n, "update", {"folioBalance": "post"})
        # The reservation deleted while in house (a duplicate booking cleaned up by the PMS).
        self.plan(self.hour(10, 11), deleted, "delete")
        # Afternoon: arrivals check in; some move rooms, some extend, some leave notes.
        for n in arriving:
            t = self.hour(12, 21)
            if rng.random() < 0.1:  # a no-show, closed out at night
                self.plan(self.hour(23, 23.9), n, "update", {"bookingStatus": "Departure"})
                continue
            self.plan(t, n, "update", {"bookingStatus": "Arrived"})
            if rng.random() < 0.3:
                self.plan(t + rng.randrange(600, 7200), n, "update", {"roomNumber": "move"})
            if rng.random() < 0.2:
                self.plan(t + rng.randrange(7200, 10000), n, "update", {"departureDate": "+1"})
            if rng.random() < 0.1:  # moved and extended in one write
                self.plan(t + rng.randrange(10000, 11000), n, "update", {"roomNumber": "move", "departureDate": "+1"})
            for _ in range(rng.randrange(1, 5)):
                self.plan(t + rng.randrange(60, 10000), n, "update", {"notes": rng.choice(NOTES)})
            for _ in range(rng.randrange(1, 5)):
                self.plan(t + rng.randrange(1800, 10800), n, "update", {"folioBalance": "post"})
        # A walk-in: no reservation beforehand, inserted directly as Arrived.
        prop = PROPERTIES[walk_in % 3]
        self.plan(self.hour(22, 22.5), walk_in, "insert", self.new_doc(walk_in, prop, "Arrived", 0, 1))

    def events(self):
        for second, _, n, action, arg in sorted(self.plans):
            t, i = self.clock.at(second)
            oid = object_id(n)
            ev = {
                "_id": {"_data": "82%08X%08X2B022C0100296E5A1004%s46645F69640064%s0004"
                                 % (t, i, COLLECTION_UUID, oid.upper())},
                "operationType": action,
                "clusterTime": {"$timestamp": {"t": t, "i": i}},
                "wallTime": date(t * 1000 + self.rng.randrange(0, 1000)),
            }
            if action == "insert":
                self.docs[n] = arg
                ev["fullDocument"] = arg
            elif action == "update":
                doc = self.docs[n]
                changes = {}
                for field, value in arg.items():
                    if field == "roomNumber" and value == "move":
                        value = self.room(doc["propertyId"])
                    elif field == "folioBalance" and value == "post":
                        value = doc.get("folioBalance", 0) + self.rng.choice((95, 145, 210, 320, 480))
                    elif field == "departureDate" and value == "+1":
                        value = date(doc["departureDate"]["$date"] + DAY_MS)
                    changes[field] = value
                doc.update(changes)
                ev["fullDocument"] = json.loads(json.dumps(doc))
                ev["updateDescription"] = {"updatedFields": changes, "removedFields": [], "truncatedArrays": []}
            elif action == "delete":
                self.docs.pop(n, None)
            ev["ns"] = {"db": "property", "coll": "reservation"}
            ev["documentKey"] = {"_id": {"$oid": oid}}
            if action == "update":  # the server puts updateDescription after documentKey
                ev["updateDescription"] = ev.pop("updateDescription")
            yield ev


# PRODUCT.md's default table, written out here on its own (the expected
# events must not come from resevent's copy of it). States: NONE (never seen,
# or deleted), NOT_ARRIVED, IN_HOUSE, DEPARTED. IN_HOUSE -> IN_HOUSE emits
# by what changed (see Table.emits); any pair not listed emits nothing.
STATES = {"Not Arrived": "NOT_ARRIVED", "Arrived": "IN_HOUSE", "Departure": "DEPARTED"}
TABLE = {
    ("NONE", "NOT_ARRIVED"): [],
    ("NONE", "DEPARTED"): [],
    ("NONE", "IN_HOUSE"): ["CHECKED_IN"],  # a walk-in, or first seen in house
    ("NOT_ARRIVED", "IN_HOUSE"): ["CHECKED_IN"],
    ("IN_HOUSE", "DEPARTED"): ["CHECKED_OUT"],
    ("DEPARTED", "IN_HOUSE"): ["ACCIDENTAL_CHECKOUT"],
    ("IN_HOUSE", "NOT_ARRIVED"): ["CHECKIN_REVERSED"],
    ("NOT_ARRIVED", "DEPARTED"): ["CHECKED_OUT"],
    ("IN_HOUSE", "NONE"): ["CHECKED_OUT"],  # deleted while in house
}
# The tracked fields: the event's name for each, and the document's.
FIELDS = (("bookingStatus", "bookingStatus"), ("propertyId", "propertyId"), ("roomNumber", "roomNumber"),
          ("arrivalDate", "arrivalDate"), ("departureDate", "departureDate"))


def rfc3339(ms):
    """UTC, with milliseconds only when there are some (fixtures/README.md)."""
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
    return text + (".%03d" % (ms % 1000) if ms % 1000 else "") + "Z"


def tracked(values):
    """A document's (or a delta's) tracked fields, as the events carry them."""
    out = {}
    for name, path in FIELDS:
        if path in values:
            v = values[path]
            out[name] = rfc3339(v["$date"]) if isinstance(v, dict) and "$date" in v else v
    return out


class Table:
    """The default table applied to the day's change events, in order: each
    reservation's stored state and source position, and the events emitted."""

    def __init__(self):
        self.stored = {}  # reservation id -> {"state", "position", tracked fields...}
        self.events = []

    def apply(self, ev):
        rid = ev["documentKey"]["_id"]["$oid"]
        position = (ev["clusterTime"]["$timestamp"]["t"], ev["clusterTime"]["$timestamp"]["i"])
        before = self.stored.get(rid)
        if before is not None and position <= before["position"]:
            # The generated day's clock only moves forward, so it has no stale
            # or duplicate change; deciding one needs more than this model.
            raise SystemExit("busy_day.py: change at %s:%s is not newer than the stored one" % position)
        old = dict(before) if before else {"state": "NONE"}
        op = ev["operationType"]
        if op == "delete":
            new = dict(old, state="NONE", bookingStatus=None)
        elif op == "insert":
            new = dict(tracked(ev["fullDocument"]))
            new["state"] = STATES[new["bookingStatus"]]
        elif op == "update" and before is None:
            # First seen: the looked-up document seeds the state.
            new = dict(tracked(ev["fullDocument"]))
            new["state"] = STATES[new["bookingStatus"]]
        else:
            # A known reservation: what the delta names, over the stored state.
            new = dict(old, **tracked(ev["updateDescription"]["updatedFields"]))
            new["state"] = STATES[new["bookingStatus"]]
        new["position"] = position
        self.stored[rid] = new
        for event_type in self.emits(old, new):
            room_changed = old.get("roomNumber") != new.get("roomNumber")
            departure_changed = old.get("departureDate") != new.get("departureDate")
            self.events.append({
                "eventType": event_type,
                "reservationId": rid,
                "propertyId": new.get("propertyId"),
                "bookingStatus": new.get("bookingStatus"),
                "previousBookingStatus": old.get("bookingStatus"),
                "roomNumber": new.get("roomNumber"),
                "previousRoomNumber": old.get("roomNumber") if room_changed else None,
                "arrivalDate": new.get("arrivalDate"),
                "departureDate": new.get("departureDate"),
                "previousDepartureDate": old.get("departureDate") if departure_changed else None,
                "occurredAt": rfc3339(ev["wallTime"]["$date"]),
                "sourcePosition": "%d:%d" % position,
            })

    @staticmethod
    def emits(old, new):
        pair = (old["state"], new["state"])
        if pair == ("IN_HOUSE", "IN_HOUSE"):
            room = old.get("roomNumber") != new.get("roomNumber")
            departure = old.get("departureDate") != new.get("departureDate")
            return ["ROOM_CHANGED"] * room + ["DEPARTURE_CHANGED"] * departure
        return TABLE.get(pair, [])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--reservations", type=int, default=60)
    ap.add_argument("--events", type=int, default=400, help="stop after this many events (the day may be shorter)")
    ap.add_argument("--expected", metavar="FILE", help="also write the business events the default table must produce here")
    a = ap.parse_args()
    day = Day(random.Random(a.seed), a.reservations)
    day.build()
    out = sys.stdout
    table = Table()
    for k, ev in enumerate(day.events()):
        if k >= a.events:
            break
        # The Java driver's toJson() separators: ", " and ": ".
        out.write(json.dumps(ev, separators=(", ", ": ")) + "\n")
        table.apply(ev)
    if a.expected:
        with open(a.expected, "w") as f:
            for e in table.events:
                f.write(json.dumps(e, separators=(", ", ": ")) + "\n")


if __name__ == "__main__":
    main()
