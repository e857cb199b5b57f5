//! Identity files: decoding never panics; a decoded file re-encodes to the
//! same bytes. The input is also wrapped as a body (magic, input, SHA-256 of
//! it) so that the postcard decoder behind the checksum gets fuzzed too.

#![no_main]

use bbsync_fuzz::ok_or_check;
use bbsync_protocol::{Identity, identity::IDENTITY_MAGIC};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

fuzz_target!(|data: &[u8]| {
    if let Some(id) = ok_or_check(Identity::from_file_bytes(data)) {
        assert_eq!(
            &id.to_file_bytes()[..],
            data,
            "a decoded identity file re-encodes to itself"
        );
    }
    let file = [IDENTITY_MAGIC.as_slice(), data, &Sha256::digest(data)].concat();
    if let Some(id) = ok_or_check(Identity::from_file_bytes(&file)) {
        // The body may use non-minimal varints (the checksum is not a MAC, so
        // this is no security property); the decoded identity round-trips.
        let again =
            Identity::from_file_bytes(&id.to_file_bytes()).expect("re-encoded file decodes");
        assert_eq!(again.instance_id(), id.instance_id());
        assert_eq!(again.x25519_public(), id.x25519_public());
        assert_eq!(again.name(), id.name());
        assert_eq!(again.created_at_ms(), id.created_at_ms());
    }
});
