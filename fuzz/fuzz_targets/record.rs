//! The side record of a snapshot (`FILE.qbsnap`), which anyone who can write beside the
//! snapshot may have tampered with: never a panic, and whatever the parser accepts keeps its
//! promises (a fingerprint a page, a chaining value a leaf, the same record when written back).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    qemu_bridge::ram::incremental::fuzz_record(data);
});
