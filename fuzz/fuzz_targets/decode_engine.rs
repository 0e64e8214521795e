//! Any bytes through every decoder and the default table: no panic, every
//! event well-typed, a rejected record leaves the state as it was
//! (`resevent::invariants`). Input: records one per line, `\tKEY\tVALUE`
//! for a keyed record, `~` for a tombstone.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    resevent::invariants::fuzz_one(data);
});
