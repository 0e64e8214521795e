//! A deterministic workload of MongoDB Kafka source connector change events
//! (legacy Extended JSON, `fullDocument` from updateLookup, ~1 KB each), for
//! benchmarks and load tests. The same shape as ../shared/peers/gen_changes.py
//! produces, written here so Rust benchmarks need no Python.
//!
//! Not used by the service itself.

/// A small, fast, seedable generator (xorshift64*); determinism matters more
/// than quality here.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// The ObjectId of reservation `n`.
pub fn object_id(n: u64) -> String {
    format!("{:024x}", 0x6500_0000_0000_0000_0000_0000u128 + u128::from(n))
}

/// Generates change events for `reservations` distinct reservations: each one
/// is inserted, then moves through a stay (check-in, room move, extension,
/// notes, checkout) one change at a time, picked at random.
pub struct Workload {
    rng: Rng,
    reservations: u64,
    /// Next lifecycle step of each reservation (0 = not inserted yet).
    step: Vec<u8>,
    clock: (u32, u32),
    inserted: u64,
}

impl Workload {
    pub fn new(reservations: u64, seed: u64) -> Workload {
        Workload { rng: Rng::new(seed), reservations, step: vec![0; reservations as usize], clock: (1_795_300_000, 0), inserted: 0 }
    }

    fn tick(&mut self) -> (u32, u32) {
        self.clock.1 += 1;
        if self.clock.1 > 1000 {
            self.clock = (self.clock.0 + 1, 1);
        }
        self.clock
    }

    /// The next event: inserts first until every reservation exists, then
    /// lifecycle updates. Returns (reservation id, record value).
    pub fn next_event(&mut self) -> (String, String) {
        let n = if self.inserted < self.reservations {
            self.inserted += 1;
            self.inserted - 1
        } else {
            self.rng.below(self.reservations)
        };
        let step = self.step[n as usize];
        self.step[n as usize] = if step >= 6 { 1 } else { step + 1 };
        let (t, i) = self.tick();
        let id = object_id(n);
        let mut r = Rng::new(n);
        let room = 100 + r.below(400);
        let property = r.below(20);
        let arrival = 1_795_300_000_000u64 + r.below(5) * 86_400_000;
        let departure = arrival + (1 + r.below(5)) * 86_400_000;
        let (status, room, departure, updated) = match step {
            0 => ("Not Arrived", room, departure, String::new()),
            1 => ("Arrived", room, departure, r#""bookingStatus":"Arrived""#.to_string()),
            2 => ("Arrived", room + 1, departure, format!(r#""roomNumber":"{}""#, room + 1)),
            3 => ("Arrived", room + 1, departure + 86_400_000, format!(r#""departureDate":{{"$date":{}}}"#, departure + 86_400_000)),
            4 => ("Arrived", room + 1, departure + 86_400_000, format!(r#""notes":"Housekeeping note {}""#, self.rng.below(1000))),
            _ => ("Departure", room + 1, departure + 86_400_000, r#""bookingStatus":"Departure""#.to_string()),
        };
        let doc = format!(
            concat!(
                r#"{{"_id":{{"$oid":"{id}"}},"propertyId":"P-{property:03}","confirmationNo":"CNF{n:08}","bookingStatus":"{status}","roomNumber":"{room}","#,
                r#""arrivalDate":{{"$date":{arrival}}},"departureDate":{{"$date":{departure}}},"guest":{{"firstName":"Anne","lastName":"Olsen","#,
                r#""email":"guest{n}@example.com","phone":"+47 {n:08}","loyalty":{{"program":"Bonvoy","tier":"Gold"}}}},"ratePlan":"BAR","adults":2,"children":1,"#,
                r#""notes":"Late arrival, quiet room please. Late arrival, quiet room please. Late arrival, quiet room please. ","updatedBy":"frontdesk"}}"#
            ),
            id = id,
            property = property,
            n = n,
            status = status,
            room = room,
            arrival = arrival,
            departure = departure
        );
        let head = format!(
            r#"{{"_id":{{"_data":"82{t:08X}{i:08X}2B042C0100296E5A1004"}},"operationType":"{op}","clusterTime":{{"$timestamp":{{"t":{t},"i":{i}}}}},"wallTime":{{"$date":{wall}}},"fullDocument":{doc},"ns":{{"db":"property","coll":"reservation"}},"documentKey":{{"_id":{{"$oid":"{id}"}}}}"#,
            op = if step == 0 { "insert" } else { "update" },
            wall = u64::from(t) * 1000 + u64::from(i % 1000),
        );
        let value = if step == 0 { format!("{head}}}") } else { format!(r#"{head},"updateDescription":{{"updatedFields":{{{updated}}},"removedFields":[],"truncatedArrays":[]}}}}"#) };
        (id, value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_about_one_kilobyte_of_valid_json_and_deterministic() {
        let mut a = Workload::new(100, 1);
        let mut b = Workload::new(100, 1);
        for _ in 0..500 {
            let (ida, va) = a.next_event();
            let (idb, vb) = b.next_event();
            assert_eq!((ida, &va), (idb, &vb));
            let v: serde_json::Value = serde_json::from_str(&va).unwrap();
            assert!(v["operationType"].is_string());
            assert!((800..1200).contains(&va.len()), "{} bytes", va.len());
        }
    }
}
