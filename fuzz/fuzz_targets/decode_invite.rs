//! Invite strings (`bbsyncinvite1...`): parsing never panics and never
//! repeats the input in an error; an accepted string re-encodes to itself
//! (lower-cased, trimmed); and any input, taken as a payload and given a
//! checksum that fits, is either refused or re-encodes to the same payload.

#![no_main]

use bbsync_fuzz::ok_or_check;
use bbsync_protocol::invite::{INVITE_PREFIX, Invite, text_of_payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match Invite::parse(text) {
            Ok(inv) => {
                let payload = text
                    .trim()
                    .strip_prefix(INVITE_PREFIX)
                    .expect("accepted strings have the prefix");
                assert_eq!(
                    inv.to_text().as_str(),
                    format!("{INVITE_PREFIX}{}", payload.to_ascii_lowercase())
                );
            }
            Err(e) => {
                let msg = e.to_string();
                let body = text.trim().strip_prefix(INVITE_PREFIX).unwrap_or("");
                if body.len() >= 16 {
                    assert!(!msg.contains(body), "the error repeats the string: {msg}");
                }
                let _ = ok_or_check::<()>(Err(e));
            }
        }
    }
    if let Some(inv) = ok_or_check(Invite::parse(&text_of_payload(data))) {
        assert_eq!(&inv.payload()[..], data, "accepted payloads are canonical");
    }
});
