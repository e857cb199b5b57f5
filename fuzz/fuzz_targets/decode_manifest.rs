//! Manifest wire bytes: decode + verify never panics; a verified manifest
//! re-encodes to the same bytes; a manifest body re-signed verifies to the
//! same value.

#![no_main]

use bbsync_fuzz::{check_resign, check_wire};
use bbsync_protocol::{Manifest, ManifestId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(signed) = check_wire::<Manifest>(data) {
        assert_eq!(signed.id(), ManifestId::of(signed.body_bytes()));
    }
    check_resign::<Manifest>(data, |m, id| m.author = id);
});
