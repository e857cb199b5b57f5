//! Snapshot wire bytes: decode + verify never panics (the host card and the
//! trust cards inside are decoded and verified too); a verified snapshot
//! re-encodes to the same bytes; a snapshot body re-signed verifies to the
//! same value when its host card is the fuzzing identity's.

#![no_main]

use bbsync_fuzz::{check_resign, check_wire, fuzz_identity};
use bbsync_protocol::Snapshot;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(signed) = check_wire::<Snapshot>(data) {
        assert_eq!(signed.host_card().map(|c| c.instance).ok(), Some(signed.host));
    }
    check_resign::<Snapshot>(data, |s, id| {
        s.host = id;
        if let Ok(card) = fuzz_identity().card(Vec::new(), 0) {
            s.host_card = card.bytes().to_vec();
        }
    });
});
