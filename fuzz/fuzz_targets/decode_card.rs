//! Instance cards, as bytes and as `bbsync1...` strings: decoding never
//! panics; a verified card re-encodes to the same bytes and, from a string,
//! to the same (lower-cased, trimmed) string; a card body re-signed verifies
//! to the same value and survives the string form.

#![no_main]

use bbsync_fuzz::{check_resign, check_wire, ok_or_check};
use bbsync_protocol::{InstanceCard, card_from_str, card_to_string, card::CARD_PREFIX};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = check_wire::<InstanceCard>(data);
    if let Some(card) = check_resign::<InstanceCard>(data, |c, id| c.instance = id) {
        let text = card_to_string(&card);
        let back = card_from_str(&text).expect("card string of a signed card parses");
        assert_eq!(back.value(), card.value());
        assert_eq!(back.bytes(), card.bytes());
    }
    let parsed = std::str::from_utf8(data)
        .ok()
        .and_then(|text| ok_or_check(card_from_str(text)).map(|card| (text, card)));
    if let Some((text, card)) = parsed {
        let payload = text
            .trim()
            .strip_prefix(CARD_PREFIX)
            .expect("accepted strings have the prefix");
        assert_eq!(
            card_to_string(&card),
            format!("{CARD_PREFIX}{}", payload.to_ascii_lowercase())
        );
        assert!(check_wire::<InstanceCard>(card.bytes()).is_some());
    }
});
