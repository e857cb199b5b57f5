//! One-time invites (issue 15): the copy-pasteable string an operator gives
//! a new node, and the proof the new node sends when it redeems it.
//!
//! An invite string names the issuing instance (its ed25519 key, so also
//! its libp2p PeerId), addresses it can be dialed at, an invite id and a
//! 32-byte secret. Nothing else: the role, the expiry and the number of
//! uses live only in the issuer's store, so no edit of the string can get
//! more than the issuer granted.
//!
//! ```text
//! string   = "bbsyncinvite1" || lower(base32-nopad(payload || checksum))
//! payload  = postcard {format = 1, source: InstanceId (32), id: InviteId (16),
//!                      secret: [u8; 32], addresses: Vec<String>}
//! checksum = SHA-256("bbsync/invite-string/v1\0" || payload)[..4]
//! ```
//!
//! The checksum catches copy-and-paste damage before anything is dialed;
//! it is not a security check (anyone can recompute it). What protects an
//! invite is its secret, which never travels: the redeemer proves it with
//!
//! ```text
//! mac = HMAC-SHA256(secret, "bbsync/invite-redeem/v1\0" || source (32) || redeemer (32)
//!                   || invite id (16) || challenge (32) || SHA-256(redeemer's card wire bytes) (32))
//! ```
//!
//! where `challenge` is a fresh random value the issuer handed out to
//! that (Noise-authenticated) peer for this one attempt: a captured
//! redemption cannot be replayed, neither by another peer (another
//! redeemer id) nor by the same one (the challenge is used up).

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    Error, InstanceId, Result,
    encoding::{FORMAT_V1, check_format, decode, encode},
    ids::InviteId,
};

/// Prefix of the invite string form.
pub const INVITE_PREFIX: &str = "bbsyncinvite1";
/// Most addresses in one invite.
pub const MAX_INVITE_ADDRESSES: usize = 16;
/// Longest address in an invite, in bytes.
pub const MAX_INVITE_ADDRESS_LEN: usize = 512;
/// Most base32 characters after the prefix (the payload of 16 addresses
/// of the longest length, with room to spare).
pub const MAX_INVITE_CHARS: usize = 16 * 1024;
/// Bytes of the checksum at the end of the decoded string.
pub const INVITE_CHECKSUM_LEN: usize = 4;

const WHAT: &str = "invite string";
const STRING_DOMAIN: &[u8] = b"bbsync/invite-string/v1\0";
const SECRET_DOMAIN: &[u8] = b"bbsync/invite-secret/v1\0";
const REDEEM_DOMAIN: &[u8] = b"bbsync/invite-redeem/v1\0";

/// The encoded payload of an invite string.
#[derive(Serialize, Deserialize)]
struct Payload {
    format: u16,
    source: InstanceId,
    id: InviteId,
    secret: [u8; 32],
    addresses: Vec<String>,
}

impl Drop for Payload {
    fn drop(&mut self) {
        self.secret.zeroize();
    }
}

/// A parsed invite: who issued it, where to dial it, which invite, and its
/// secret. `Debug` leaves the secret out; the string form
/// ([`Invite::to_text`]) is itself a secret and is never logged.
pub struct Invite {
    /// The issuing instance (its libp2p PeerId is derived from this key).
    pub source: InstanceId,
    /// The invite's id in the issuer's store.
    pub id: InviteId,
    /// Addresses the issuer can be dialed at (multiaddr text, without
    /// `/p2p/<PeerId>`), in the issuer's order of preference.
    pub addresses: Vec<String>,
    secret: Zeroizing<[u8; 32]>,
}

impl fmt::Debug for Invite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Invite")
            .field("source", &self.source)
            .field("id", &self.id)
            .field("addresses", &self.addresses)
            .field("secret", &"[redacted]")
            .finish()
    }
}

fn check_addresses(addresses: &[String]) -> Result<()> {
    if addresses.is_empty() {
        return Err(Error::invalid(
            "invite",
            "it names no address to dial the issuer at",
        ));
    }
    if addresses.len() > MAX_INVITE_ADDRESSES {
        return Err(Error::invalid(
            "invite",
            format!(
                "{} addresses (at most {MAX_INVITE_ADDRESSES})",
                addresses.len()
            ),
        ));
    }
    if let Some(bad) = addresses.iter().find(|a| {
        a.is_empty()
            || a.len() > MAX_INVITE_ADDRESS_LEN
            || a.chars().any(|c| c.is_control() || c.is_whitespace())
    }) {
        return Err(Error::invalid(
            "invite",
            format!(
                "address {:?} (1..={MAX_INVITE_ADDRESS_LEN} bytes without spaces or control characters)",
                bad.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(())
}

fn checksum(payload: &[u8]) -> [u8; INVITE_CHECKSUM_LEN] {
    let mut h = Sha256::new();
    h.update(STRING_DOMAIN);
    h.update(payload);
    let d = h.finalize();
    let mut out = [0u8; INVITE_CHECKSUM_LEN];
    out.copy_from_slice(&d[..INVITE_CHECKSUM_LEN]);
    out
}

/// The string form of arbitrary payload bytes: prefix, base32 of the bytes
/// and their checksum. For [`Invite::to_text`], and for tests and tools
/// that build strings by hand (the checksum is not a security check: the
/// issuer's store decides what an invite grants).
pub fn text_of_payload(payload: &[u8]) -> Zeroizing<String> {
    let mut bytes = Zeroizing::new(Vec::with_capacity(payload.len() + INVITE_CHECKSUM_LEN));
    bytes.extend_from_slice(payload);
    bytes.extend_from_slice(&checksum(payload));
    let mut s = Zeroizing::new(String::with_capacity(
        INVITE_PREFIX.len() + bytes.len() * 8 / 5 + 1,
    ));
    s.push_str(INVITE_PREFIX);
    let b32 = Zeroizing::new(data_encoding::BASE32_NOPAD.encode(&bytes));
    for c in b32.chars() {
        s.push(c.to_ascii_lowercase());
    }
    s
}

/// Whether `s` looks like an invite string (its prefix), as opposed to an
/// address: which of the two a command argument is.
pub fn is_invite_text(s: &str) -> bool {
    s.trim().to_ascii_lowercase().starts_with(INVITE_PREFIX)
}

impl Invite {
    /// An invite of `source` with this id, secret and addresses.
    pub fn new(
        source: InstanceId,
        id: InviteId,
        secret: Zeroizing<[u8; 32]>,
        addresses: Vec<String>,
    ) -> Result<Self> {
        check_addresses(&addresses)?;
        Ok(Invite {
            source,
            id,
            addresses,
            secret,
        })
    }

    /// The encoded payload (holds the secret: zeroized on drop).
    pub fn payload(&self) -> Zeroizing<Vec<u8>> {
        let p = Payload {
            format: FORMAT_V1,
            source: self.source,
            id: self.id,
            secret: *self.secret,
            addresses: self.addresses.clone(),
        };
        Zeroizing::new(encode(&p))
    }

    /// The copy-pasteable string (a secret: zeroized on drop, never logged).
    pub fn to_text(&self) -> Zeroizing<String> {
        text_of_payload(&self.payload())
    }

    /// Parses an invite string. Whitespace around it is ignored; the letters
    /// after the prefix may be in any case. Refused: another prefix, a
    /// string over [`MAX_INVITE_CHARS`], bad base32, a checksum mismatch (a
    /// character changed or lost in copying), a payload that does not
    /// decode strictly (trailing bytes, non-canonical encoding), another
    /// format, and bad addresses. No error message repeats the string.
    pub fn parse(s: &str) -> Result<Self> {
        let s = s.trim();
        let b32 = s.strip_prefix(INVITE_PREFIX).ok_or_else(|| {
            Error::malformed(WHAT, format!("does not start with {INVITE_PREFIX}"))
        })?;
        if b32.len() > MAX_INVITE_CHARS {
            return Err(Error::malformed(
                WHAT,
                format!("too long ({} characters)", b32.len()),
            ));
        }
        let upper = Zeroizing::new(b32.to_ascii_uppercase());
        let bytes = Zeroizing::new(
            data_encoding::BASE32_NOPAD
                .decode(upper.as_bytes())
                .map_err(|e| {
                    Error::malformed(
                        WHAT,
                        format!(
                            "not base32 at character {} (was it cut or changed in copying?)",
                            e.position + INVITE_PREFIX.len() + 1
                        ),
                    )
                })?,
        );
        if bytes.len() <= INVITE_CHECKSUM_LEN {
            return Err(Error::malformed(WHAT, "truncated"));
        }
        let (payload, sum) = bytes.split_at(bytes.len() - INVITE_CHECKSUM_LEN);
        if checksum(payload) != sum {
            return Err(Error::malformed(
                WHAT,
                "checksum mismatch (a character was changed or lost in copying)",
            ));
        }
        let p: Payload = decode(WHAT, payload, MAX_INVITE_CHARS)?;
        check_format(WHAT, p.format)?;
        if *Zeroizing::new(encode(&p)) != payload {
            return Err(Error::malformed(WHAT, "not in canonical encoding"));
        }
        check_addresses(&p.addresses)?;
        Ok(Invite {
            source: p.source,
            id: p.id,
            addresses: p.addresses.clone(),
            secret: Zeroizing::new(p.secret),
        })
    }

    /// The redemption proof for `redeemer`, answering `challenge`, with
    /// `card` (the redeemer's signed card wire bytes).
    pub fn redeem_mac(&self, redeemer: &InstanceId, challenge: &[u8; 32], card: &[u8]) -> [u8; 32] {
        redeem_mac(
            &self.secret,
            &self.source,
            redeemer,
            &self.id,
            challenge,
            card,
        )
    }
}

/// What the issuer keeps of a secret: `SHA-256("bbsync/invite-secret/v1\0" || secret)`.
pub fn secret_hash(secret: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(SECRET_DOMAIN);
    h.update(secret);
    h.finalize().into()
}

fn redeem_hmac(
    secret: &[u8; 32],
    source: &InstanceId,
    redeemer: &InstanceId,
    id: &InviteId,
    challenge: &[u8; 32],
    card: &[u8],
) -> Hmac<Sha256> {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    m.update(REDEEM_DOMAIN);
    m.update(source.as_bytes());
    m.update(redeemer.as_bytes());
    m.update(id.as_bytes());
    m.update(challenge);
    m.update(&Sha256::digest(card));
    m
}

/// The redemption proof (see the module docs).
pub fn redeem_mac(
    secret: &[u8; 32],
    source: &InstanceId,
    redeemer: &InstanceId,
    id: &InviteId,
    challenge: &[u8; 32],
    card: &[u8],
) -> [u8; 32] {
    redeem_hmac(secret, source, redeemer, id, challenge, card)
        .finalize()
        .into_bytes()
        .into()
}

/// Checks a redemption proof in constant time.
pub fn check_redeem_mac(
    secret: &[u8; 32],
    source: &InstanceId,
    redeemer: &InstanceId,
    id: &InviteId,
    challenge: &[u8; 32],
    card: &[u8],
    mac: &[u8; 32],
) -> bool {
    redeem_hmac(secret, source, redeemer, id, challenge, card)
        .verify_slice(mac)
        .is_ok()
}

/// Why an issuer refused a redemption (sent on the wire; the redeemer
/// prints it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InviteRefusal {
    /// No such invite, or the proof does not match its secret (the two are
    /// not told apart, so that a guesser learns nothing).
    UnknownOrWrongSecret,
    /// The invite's time is up.
    Expired,
    /// The issuer's operator revoked it.
    Revoked,
    /// Every use of it was spent.
    UsedUp,
    /// This node redeemed it before and is not trusted with its role any
    /// more (removed or changed since): an invite is redeemed once per node.
    AlreadyRedeemed,
    /// The challenge was not handed to this peer, was used already, or is
    /// too old (a replayed redemption looks like this).
    BadChallenge,
    /// The card sent does not decode or its signature does not verify.
    BadCard,
    /// The card is not the requester's own (its Noise-authenticated key),
    /// or it is the issuer's.
    CardMismatch,
    /// Too many attempts from this peer (or from everyone) lately.
    RateLimited {
        /// When to try again.
        retry_after_secs: u32,
    },
    /// The issuer failed to look (its log says why).
    Unavailable,
}

impl fmt::Display for InviteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InviteRefusal::UnknownOrWrongSecret => f.write_str(
                "no such invite, or the secret does not match (was the invite string changed?)",
            ),
            InviteRefusal::Expired => f.write_str("the invite has expired"),
            InviteRefusal::Revoked => f.write_str("the invite was revoked"),
            InviteRefusal::UsedUp => f.write_str("the invite has no uses left"),
            InviteRefusal::AlreadyRedeemed => f.write_str(
                "this node redeemed the invite before, and its trust was changed since (ask for a new invite)",
            ),
            InviteRefusal::BadChallenge => f.write_str(
                "the redemption does not answer a challenge issued to this node (replayed or too old)",
            ),
            InviteRefusal::BadCard => f.write_str("the card sent with the redemption is not valid"),
            InviteRefusal::CardMismatch => {
                f.write_str("the card sent is not the redeeming node's own")
            }
            InviteRefusal::RateLimited { retry_after_secs } => write!(
                f,
                "too many invite attempts; try again in {retry_after_secs} s"
            ),
            InviteRefusal::Unavailable => {
                f.write_str("the source could not check the invite (see its log)")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::ErrorKind;
    use proptest::prelude::*;

    fn sample() -> Invite {
        Invite::new(
            InstanceId([3; 32]),
            InviteId([4; 16]),
            Zeroizing::new([5; 32]),
            vec![
                "/ip4/192.0.2.7/tcp/4040".into(),
                "/onion3/2gzyxa5ihm7nsggfxnu52rck2vv4rvmdlkiu3zzui5du4xyclen53wid:4040".into(),
            ],
        )
        .unwrap()
    }

    #[test]
    fn round_trips_in_any_case_and_with_whitespace() {
        let i = sample();
        let s = i.to_text();
        assert!(s.starts_with(INVITE_PREFIX));
        assert!(
            s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        );
        for text in [
            s.to_string(),
            format!("  {}\n", s.as_str()),
            format!(
                "{INVITE_PREFIX}{}",
                s[INVITE_PREFIX.len()..].to_ascii_uppercase()
            ),
        ] {
            let back = Invite::parse(&text).unwrap();
            assert_eq!(back.source, i.source);
            assert_eq!(back.id, i.id);
            assert_eq!(back.addresses, i.addresses);
            assert_eq!(*back.secret, *i.secret);
        }
        assert!(is_invite_text(&s));
        assert!(!is_invite_text("/ip4/1.2.3.4/tcp/1"));
    }

    #[test]
    fn debug_hides_the_secret() {
        let d = format!("{:?}", sample());
        assert!(d.contains("redacted"));
        assert!(!d.contains("[5, 5"));
    }

    #[test]
    fn any_changed_character_is_caught_by_the_checksum() {
        let s = sample().to_text();
        let body = &s[INVITE_PREFIX.len()..];
        for pos in 0..body.len() {
            let mut chars: Vec<char> = body.chars().collect();
            chars[pos] = if chars[pos] == 'a' { 'b' } else { 'a' };
            let edited: String = chars.into_iter().collect();
            let e = Invite::parse(&format!("{INVITE_PREFIX}{edited}")).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Malformed, "position {pos}: {e}");
        }
        // A cut string.
        let e = Invite::parse(&s[..s.len() - 3]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed);
    }

    #[test]
    fn extra_fields_other_formats_and_bad_addresses_are_refused() {
        let i = sample();
        // A role appended to the payload (checksum recomputed): trailing bytes.
        let mut p = i.payload().to_vec();
        p.push(0);
        let e = Invite::parse(&text_of_payload(&p)).unwrap_err();
        assert!(e.to_string().contains("trailing bytes"), "{e}");
        // Format 2.
        let mut p = i.payload().to_vec();
        p[0] = 2;
        let e = Invite::parse(&text_of_payload(&p)).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UnsupportedFormat, "{e}");
        // An over-long varint for the format: not canonical.
        let mut p = vec![0x81, 0x00];
        p.extend_from_slice(&i.payload()[1..]);
        let e = Invite::parse(&text_of_payload(&p)).unwrap_err();
        assert!(e.to_string().contains("canonical"), "{e}");
        // No address, a bad one, too many.
        for addrs in [
            vec![],
            vec!["/ip4/1.2.3.4/tcp/1 x".to_string()],
            vec!["/ip4/1.2.3.4/tcp/1".to_string(); MAX_INVITE_ADDRESSES + 1],
        ] {
            assert!(Invite::new(i.source, i.id, Zeroizing::new([1; 32]), addrs).is_err());
        }
        assert!(Invite::parse("bbsync1abc").is_err());
        let long = format!("{INVITE_PREFIX}{}", "a".repeat(MAX_INVITE_CHARS + 1));
        assert!(
            Invite::parse(&long)
                .unwrap_err()
                .to_string()
                .contains("too long")
        );
    }

    #[test]
    fn errors_never_repeat_the_string() {
        let s = sample().to_text();
        let body = &s[INVITE_PREFIX.len()..];
        let cut = format!("{INVITE_PREFIX}{}", &body[..body.len() - 1]);
        let bad_char = format!("{INVITE_PREFIX}{}!", &body[..20]);
        for text in [cut.as_str(), bad_char.as_str()] {
            let e = Invite::parse(text).unwrap_err().to_string();
            assert!(!e.contains(&body[..20]), "{e}");
        }
    }

    #[test]
    fn the_proof_binds_every_input() {
        let i = sample();
        let me = InstanceId([9; 32]);
        let ch = [7u8; 32];
        let card = b"card bytes";
        let mac = i.redeem_mac(&me, &ch, card);
        let s = &[5u8; 32];
        assert!(check_redeem_mac(s, &i.source, &me, &i.id, &ch, card, &mac));
        assert!(!check_redeem_mac(
            &[6; 32], &i.source, &me, &i.id, &ch, card, &mac
        ));
        assert!(!check_redeem_mac(
            s,
            &InstanceId([8; 32]),
            &me,
            &i.id,
            &ch,
            card,
            &mac
        ));
        assert!(!check_redeem_mac(
            s,
            &i.source,
            &InstanceId([1; 32]),
            &i.id,
            &ch,
            card,
            &mac
        ));
        assert!(!check_redeem_mac(
            s,
            &i.source,
            &me,
            &InviteId([1; 16]),
            &ch,
            card,
            &mac
        ));
        assert!(!check_redeem_mac(
            s, &i.source, &me, &i.id, &[1; 32], card, &mac
        ));
        assert!(!check_redeem_mac(
            s,
            &i.source,
            &me,
            &i.id,
            &ch,
            b"other card",
            &mac
        ));
        // Recomputed from the raw crates.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(s).unwrap();
        m.update(b"bbsync/invite-redeem/v1\0");
        m.update(&[3; 32]);
        m.update(&[9; 32]);
        m.update(&[4; 16]);
        m.update(&[7; 32]);
        m.update(&Sha256::digest(card));
        assert_eq!(m.finalize().into_bytes().as_slice(), mac.as_slice());
        assert_ne!(secret_hash(&[5; 32]), secret_hash(&[6; 32]));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".{0,300}") {
            let _ = Invite::parse(&s);
            let _ = Invite::parse(&format!("{INVITE_PREFIX}{s}"));
        }

        #[test]
        fn arbitrary_payloads_never_panic(p in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = Invite::parse(&text_of_payload(&p));
        }
    }
}
