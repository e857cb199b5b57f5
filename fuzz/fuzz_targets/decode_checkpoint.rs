//! Checkpoint wire bytes: decode + verify never panics; a verified
//! checkpoint re-encodes to the same bytes; a checkpoint body re-signed
//! verifies to the same value.

#![no_main]

use bbsync_fuzz::{check_resign, check_wire};
use bbsync_protocol::Checkpoint;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_wire::<Checkpoint>(data);
    check_resign::<Checkpoint>(data, |c, id| c.instance = id);
});
