//! Onion (v3) addresses in multiaddrs: `/onion3/<56 base32 chars>:<port>`,
//! optionally followed by `/p2p/<PeerId>`. Pure checks, no Tor needed, so
//! that a malformed address gets a clear error in every build.
//!
//! The 35 address bytes are `pubkey (32) || checksum (2) || version (1)`,
//! with `checksum = SHA3-256(".onion checksum" || pubkey || version)[..2]`
//! and `version = 3` (rend-spec-v3, "Encoding onion addresses").

use libp2p::{Multiaddr, multiaddr::Protocol};
use sha3::{Digest, Sha3_256};

/// Length of an onion v3 address in base32 characters.
pub const ONION3_CHARS: usize = 56;

/// Why an onion address is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OnionAddrError {
    /// Not 56 characters.
    #[error("an onion v3 address has 56 characters, this one has {0}")]
    Length(usize),
    /// Not base32.
    #[error("an onion v3 address is base32 (a-z, 2-7)")]
    Encoding,
    /// The version byte is not 3.
    #[error("onion address version {0} (only version 3 is supported)")]
    Version(u8),
    /// The checksum does not match (a typo).
    #[error("the onion address checksum does not match (a typo?)")]
    Checksum,
    /// No `:<port>`.
    #[error("the onion address lacks its port: /onion3/<address>:<port>")]
    MissingPort,
    /// The port is not a number in 1..=65535.
    #[error("bad onion port {0:?} (1-65535)")]
    BadPort(String),
    /// An obsolete v2 address.
    #[error("onion v2 addresses are obsolete; use an /onion3/ address")]
    V2,
}

/// A checked onion destination: what Tor dials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnionTarget {
    /// `<56 lowercase base32 chars>.onion`.
    pub host: String,
    /// The virtual port.
    pub port: u16,
}

fn checksum(pubkey: &[u8], version: u8) -> [u8; 2] {
    let mut h = Sha3_256::new();
    h.update(b".onion checksum");
    h.update(pubkey);
    h.update([version]);
    let d = h.finalize();
    [d[0], d[1]]
}

/// Checks the 35 bytes of an onion v3 address (version, checksum).
pub fn check_bytes(bytes: &[u8; 35]) -> Result<(), OnionAddrError> {
    let version = bytes[34];
    if version != 3 {
        return Err(OnionAddrError::Version(version));
    }
    if checksum(&bytes[..32], version) != bytes[32..34] {
        return Err(OnionAddrError::Checksum);
    }
    Ok(())
}

/// Decodes and checks the 56-character address part (no `.onion`).
pub fn decode(text: &str) -> Result<[u8; 35], OnionAddrError> {
    let text = text.strip_suffix(".onion").unwrap_or(text);
    let n = text.chars().count();
    if n != ONION3_CHARS {
        return Err(OnionAddrError::Length(n));
    }
    let upper = text.to_ascii_uppercase();
    let raw = data_encoding::BASE32_NOPAD
        .decode(upper.as_bytes())
        .map_err(|_| OnionAddrError::Encoding)?;
    let bytes: [u8; 35] = raw.try_into().map_err(|_| OnionAddrError::Encoding)?;
    check_bytes(&bytes)?;
    Ok(bytes)
}

/// The 35 bytes of an address as its 56 lowercase characters.
pub fn encode(bytes: &[u8; 35]) -> String {
    data_encoding::BASE32_NOPAD
        .encode(bytes)
        .to_ascii_lowercase()
}

/// Checks the onion part of a textual address before multiaddr parsing, so
/// that a typo gets a precise message. Returns `Ok(())` for any address
/// that has no onion part (the multiaddr parser judges those).
pub fn check_text(addr: &str) -> Result<(), OnionAddrError> {
    let mut parts = addr
        .split('/')
        .skip_while(|p| *p != "onion3" && *p != "onion");
    match parts.next() {
        None => Ok(()),
        Some("onion") => Err(OnionAddrError::V2),
        Some(_) => {
            let value = parts.next().unwrap_or("");
            let (host, port) = match value.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (value, None),
            };
            decode(host)?;
            let port = port.ok_or(OnionAddrError::MissingPort)?;
            match port.parse::<u16>() {
                Ok(p) if p > 0 => Ok(()),
                _ => Err(OnionAddrError::BadPort(port.to_string())),
            }
        }
    }
}

/// Whether `addr` is an onion address (v3, or an obsolete v2).
pub fn is_onion(addr: &Multiaddr) -> bool {
    addr.iter()
        .any(|p| matches!(p, Protocol::Onion3(_) | Protocol::Onion(..)))
}

/// The onion destination of `addr`: `None` if it is not an onion address
/// (`/onion3/<addr>:<port>` first, optionally `/p2p/<PeerId>` after it).
pub fn target(addr: &Multiaddr) -> Option<Result<OnionTarget, OnionAddrError>> {
    let mut it = addr.iter();
    let first = it.next()?;
    let onion = match first {
        Protocol::Onion3(a) => a,
        Protocol::Onion(..) => return Some(Err(OnionAddrError::V2)),
        _ => return None,
    };
    match it.next() {
        None | Some(Protocol::P2p(_)) => {}
        Some(_) => return None,
    }
    if it.next().is_some() {
        return None;
    }
    Some((|| {
        check_bytes(onion.hash())?;
        if onion.port() == 0 {
            return Err(OnionAddrError::BadPort("0".into()));
        }
        Ok(OnionTarget {
            host: format!("{}.onion", encode(onion.hash())),
            port: onion.port(),
        })
    })())
}

/// `/onion3/<address>:<port>` for the 35 address bytes.
pub fn multiaddr(bytes: [u8; 35], port: u16) -> Multiaddr {
    Multiaddr::empty().with(Protocol::Onion3((bytes, port).into()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A valid address (the Tor Project's own onion site).
    const GOOD: &str = "2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid";

    fn with_char(s: &str, i: usize, c: char) -> String {
        let mut v: Vec<char> = s.chars().collect();
        v[i] = c;
        v.into_iter().collect()
    }

    #[test]
    fn a_valid_address_round_trips() {
        let bytes = decode(GOOD).unwrap();
        assert_eq!(encode(&bytes), GOOD);
        assert_eq!(decode(&format!("{GOOD}.onion")).unwrap(), bytes);
        // Upper case is the same address.
        assert_eq!(decode(&GOOD.to_ascii_uppercase()).unwrap(), bytes);
        let text = format!("/onion3/{GOOD}:4040");
        check_text(&text).unwrap();
        let addr: Multiaddr = text.parse().unwrap();
        let t = target(&addr).unwrap().unwrap();
        assert_eq!(t.host, format!("{GOOD}.onion"));
        assert_eq!(t.port, 4040);
        assert_eq!(multiaddr(bytes, 4040), addr);
    }

    #[test]
    fn a_p2p_suffix_is_allowed() {
        let text =
            format!("/onion3/{GOOD}:4040/p2p/12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA");
        check_text(&text).unwrap();
        let addr: Multiaddr = text.parse().unwrap();
        assert_eq!(target(&addr).unwrap().unwrap().port, 4040);
        assert!(is_onion(&addr));
    }

    #[test]
    fn wrong_lengths_are_refused() {
        for s in [&GOOD[..55], &format!("{GOOD}a")[..], "", "abc"] {
            let err = check_text(&format!("/onion3/{s}:80")).unwrap_err();
            assert_eq!(err, OnionAddrError::Length(s.len()), "{s}");
        }
    }

    #[test]
    fn a_typo_fails_the_checksum() {
        // Change one character of the public key part.
        let typo = with_char(GOOD, 3, if GOOD.as_bytes()[3] == b'a' { 'b' } else { 'a' });
        assert_eq!(
            check_text(&format!("/onion3/{typo}:80")),
            Err(OnionAddrError::Checksum)
        );
        // The multiaddr parser accepts it (any 35 bytes); the target check does not.
        let addr: Multiaddr = format!("/onion3/{typo}:80").parse().unwrap();
        assert_eq!(target(&addr).unwrap(), Err(OnionAddrError::Checksum));
    }

    #[test]
    fn a_wrong_version_is_refused() {
        let mut bytes = decode(GOOD).unwrap();
        bytes[34] = 4;
        // Even with a checksum made for version 4.
        let c = checksum(&bytes[..32], 4);
        bytes[32..34].copy_from_slice(&c);
        assert_eq!(decode(&encode(&bytes)), Err(OnionAddrError::Version(4)));
        assert_eq!(
            target(&multiaddr(bytes, 80)).unwrap(),
            Err(OnionAddrError::Version(4))
        );
    }

    #[test]
    fn bad_characters_are_refused() {
        let bad = with_char(GOOD, 10, '1'); // '1' is not base32
        assert_eq!(
            check_text(&format!("/onion3/{bad}:80")),
            Err(OnionAddrError::Encoding)
        );
    }

    #[test]
    fn a_missing_or_bad_port_is_refused() {
        assert_eq!(
            check_text(&format!("/onion3/{GOOD}")),
            Err(OnionAddrError::MissingPort)
        );
        assert_eq!(
            check_text(&format!("/onion3/{GOOD}/p2p/x")),
            Err(OnionAddrError::MissingPort)
        );
        for p in ["0", "65536", "x", ""] {
            assert_eq!(
                check_text(&format!("/onion3/{GOOD}:{p}")),
                Err(OnionAddrError::BadPort(p.into())),
                "{p}"
            );
        }
    }

    #[test]
    fn v2_and_non_onion_addresses() {
        assert_eq!(
            check_text("/onion/aaimaq4ygg2iegci:80"),
            Err(OnionAddrError::V2)
        );
        check_text("/ip4/127.0.0.1/tcp/4040").unwrap();
        let tcp: Multiaddr = "/ip4/127.0.0.1/tcp/4040".parse().unwrap();
        assert!(target(&tcp).is_none());
        assert!(!is_onion(&tcp));
    }
}
