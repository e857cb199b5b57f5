//! Invites (issue 15), the issuer's side: what an invite grants lives only
//! here, in one record per invite (`i/<invite id>` in the database), and a
//! redemption is checked and applied in one database transaction.
//!
//! The invite's secret is not stored at all: it is derived when needed
//! from this instance's identity secret and the invite id
//! (`Identity::local_key("invite-secret/<id hex>")`). The record keeps a
//! hash of it (`bbsync_protocol::invite::secret_hash`), checked at each
//! redemption, so a record can only be redeemed with the secret of the
//! identity that issued it, and a copy of the database without
//! `identity.key` holds nothing that redeems an invite.

use std::time::Duration;

use bbsync_protocol::{
    InstanceCard, Invite, InviteId, InviteRefusal, Role, Unverified,
    identity::MAX_NAME_LEN,
    invite::{check_redeem_mac, secret_hash},
    now_ms,
};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{
    Store,
    db::{InviteDecision, TrustRecord},
    error::{Result, StoreError},
};

/// Most uses one invite may grant.
pub const MAX_USES: u32 = 1000;
/// Longest an invite may stay valid.
pub const MAX_EXPIRY: Duration = Duration::from_secs(30 * 24 * 3600);
/// Shortest an invite may stay valid.
pub const MIN_EXPIRY: Duration = Duration::from_secs(1);
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 128;

/// One redemption of an invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Redemption {
    /// The redeeming instance.
    pub instance: bbsync_protocol::InstanceId,
    /// Its name, from its card.
    pub name: String,
    /// When (ms since the epoch).
    pub at_ms: u64,
}

/// What the issuer stores of one invite (postcard under `i/<id>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    /// Format number (1).
    pub format: u16,
    /// The invite's id.
    pub id: InviteId,
    /// The role a redeemer is trusted with.
    pub role: Role,
    /// The operator's label (`--name`).
    pub label: Option<String>,
    /// When it was made (ms since the epoch).
    pub created_at_ms: u64,
    /// When it stops being redeemable (ms since the epoch).
    pub expires_at_ms: u64,
    /// Uses granted.
    pub uses: u32,
    /// Uses spent.
    pub used: u32,
    /// When it was revoked, if it was.
    pub revoked_at_ms: Option<u64>,
    /// `secret_hash` of its secret.
    pub secret_hash: [u8; 32],
    /// Who redeemed it, in order.
    pub redeemed: Vec<Redemption>,
}

/// Where an invite stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum InviteState {
    /// Redeemable.
    Active,
    /// Its time is up.
    Expired,
    /// Revoked by the operator.
    Revoked,
    /// Every use spent.
    UsedUp,
}

impl std::fmt::Display for InviteState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InviteState::Active => "active",
            InviteState::Expired => "expired",
            InviteState::Revoked => "revoked",
            InviteState::UsedUp => "used-up",
        })
    }
}

impl InviteRecord {
    /// Its state at `now_ms` (revoked first, then used up, then expired).
    pub fn state(&self, now_ms: u64) -> InviteState {
        if self.revoked_at_ms.is_some() {
            InviteState::Revoked
        } else if self.used >= self.uses {
            InviteState::UsedUp
        } else if now_ms >= self.expires_at_ms {
            InviteState::Expired
        } else {
            InviteState::Active
        }
    }
}

/// What `invite create` asks for.
#[derive(Debug, Clone)]
pub struct InviteOptions {
    /// The role a redeemer gets.
    pub role: Role,
    /// How long the invite stays redeemable.
    pub expires: Duration,
    /// How many redemptions it allows.
    pub uses: u32,
    /// A label for `invite list`.
    pub label: Option<String>,
}

/// What a refused or accepted redemption did, for the caller's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redeemed {
    /// A use was spent and the card trusted with the role.
    Granted(Role),
    /// This instance redeemed this invite before and is still trusted
    /// with its role: nothing changed (a retry after a lost answer).
    Again(Role),
}

impl Redeemed {
    /// The role the redeemer holds now.
    pub fn role(&self) -> Role {
        match self {
            Redeemed::Granted(r) | Redeemed::Again(r) => *r,
        }
    }
}

impl Store {
    fn invite_secret(&self, id: &InviteId) -> Zeroizing<[u8; 32]> {
        self.identity()
            .local_key(&format!("invite-secret/{}", id.to_hex()))
    }

    /// Makes an invite: records what it grants and returns the record and
    /// the invite (its string carries `addresses`, which must be
    /// multiaddrs without `/p2p/`, this instance's id, the id and the
    /// secret).
    pub fn invite_create(
        &self,
        opts: &InviteOptions,
        addresses: Vec<String>,
    ) -> Result<(InviteRecord, Invite)> {
        if !(1..=MAX_USES).contains(&opts.uses) {
            return Err(StoreError::Invite(format!(
                "--uses must be 1 to {MAX_USES}, not {}",
                opts.uses
            )));
        }
        if opts.expires < MIN_EXPIRY || opts.expires > MAX_EXPIRY {
            return Err(StoreError::Invite(format!(
                "--expires must be between {} s and {} days",
                MIN_EXPIRY.as_secs(),
                MAX_EXPIRY.as_secs() / 86_400
            )));
        }
        if let Some(l) = &opts.label
            && (l.is_empty() || l.len() > MAX_LABEL || l.chars().any(char::is_control))
        {
            return Err(StoreError::Invite(format!(
                "--name must be 1..={MAX_LABEL} bytes without control characters"
            )));
        }
        let id = InviteId::random();
        let secret = self.invite_secret(&id);
        let invite = Invite::new(self.instance_id(), id, secret.clone(), addresses)
            .map_err(|e| StoreError::Invite(e.to_string()))?;
        let now = now_ms();
        let rec = InviteRecord {
            format: 1,
            id,
            role: opts.role,
            label: opts.label.clone(),
            created_at_ms: now,
            expires_at_ms: now.saturating_add(opts.expires.as_millis() as u64),
            uses: opts.uses,
            used: 0,
            revoked_at_ms: None,
            secret_hash: secret_hash(&secret),
            redeemed: Vec::new(),
        };
        let _g = self.lock();
        self.db.put_invite(&rec)?;
        Ok((rec, invite))
    }

    /// Every invite, newest first.
    pub fn invites(&self) -> Result<Vec<InviteRecord>> {
        let mut all = self.db.invites()?;
        all.sort_by_key(|r| std::cmp::Reverse(r.created_at_ms));
        Ok(all)
    }

    /// Resolves an invite id given in full or as a unique hex prefix of at
    /// least 6 digits.
    pub fn resolve_invite(&self, spec: &str) -> Result<InviteId> {
        let spec = spec.trim().to_ascii_lowercase();
        if spec.len() < 6 || spec.len() > 32 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Invite(format!(
                "{spec:?} is not an invite id (give at least 6 hex digits, as `invite list` shows)"
            )));
        }
        let hits: Vec<InviteId> = self
            .db
            .invites()?
            .into_iter()
            .map(|r| r.id)
            .filter(|id| id.to_hex().starts_with(&spec))
            .collect();
        match hits.as_slice() {
            [one] => Ok(*one),
            [] => Err(StoreError::Invite(format!("no invite {spec}"))),
            many => Err(StoreError::Invite(format!(
                "invite id {spec} is ambiguous ({} matches)",
                many.len()
            ))),
        }
    }

    /// Revokes an invite: it cannot be redeemed any more (trust it granted
    /// stays; `trust remove` takes that back). Returns the record and
    /// whether it was revoked before.
    pub fn invite_revoke(&self, id: &InviteId) -> Result<(InviteRecord, bool)> {
        let _g = self.lock();
        let mut rec = self
            .db
            .invite(id)?
            .ok_or_else(|| StoreError::Invite(format!("no invite {id}")))?;
        if rec.revoked_at_ms.is_some() {
            return Ok((rec, true));
        }
        rec.revoked_at_ms = Some(now_ms());
        self.db.put_invite(&rec)?;
        Ok((rec, false))
    }

    /// Redeems one of this instance's invites for `peer` (the
    /// Noise-authenticated instance that asks), with its signed `card`,
    /// answering `challenge` (which the caller handed to that peer) with
    /// `mac`. In one database transaction: the invite must exist, the
    /// proof must match its secret (compared in constant time; an unknown
    /// invite and a wrong secret get the same answer), it must not be
    /// revoked, expired or used up; then one use is spent, the redeemer
    /// recorded and its card trusted with the invite's role. A peer that
    /// redeemed this invite before and is still trusted with its role gets
    /// its role again and nothing changes (a retry after a lost answer);
    /// one whose trust was removed or changed since is refused
    /// (`AlreadyRedeemed`): an invite is redeemed once per node.
    ///
    /// The outer error is a store failure; the inner one the refusal.
    pub fn redeem_invite(
        &self,
        peer: &bbsync_protocol::InstanceId,
        invite: &InviteId,
        card: &[u8],
        challenge: &[u8; 32],
        mac: &[u8; 32],
    ) -> Result<std::result::Result<Redeemed, InviteRefusal>> {
        let Ok(signed) =
            Unverified::<InstanceCard>::decode(card).and_then(|u| u.verify_self_signed())
        else {
            return Ok(Err(InviteRefusal::BadCard));
        };
        if signed.instance != *peer || signed.instance == self.instance_id() {
            return Ok(Err(InviteRefusal::CardMismatch));
        }
        let me = self.instance_id();
        let secret = self.invite_secret(invite);
        let expected_hash = secret_hash(&secret);
        let name: String = signed.name.chars().take(MAX_NAME_LEN).collect();
        let now = now_ms();
        let _g = self.lock();
        let decide = |inv: Option<InviteRecord>,
                      trust: Option<TrustRecord>|
         -> std::result::Result<InviteDecision, InviteRefusal> {
            let Some(mut inv) = inv else {
                return Err(InviteRefusal::UnknownOrWrongSecret);
            };
            // The record must be of this identity's secret, and the proof
            // of that secret (constant time).
            if !ct_eq(&inv.secret_hash, &expected_hash)
                || !check_redeem_mac(&secret, &me, peer, invite, challenge, card, mac)
            {
                return Err(InviteRefusal::UnknownOrWrongSecret);
            }
            if inv.redeemed.iter().any(|r| r.instance == *peer) {
                // Once per node: a retry is answered as before; a node
                // removed (or whose role changed) since gets nothing back.
                return if trust.as_ref().is_some_and(|t| t.role == inv.role) {
                    Ok(InviteDecision::Again(inv.role))
                } else {
                    Err(InviteRefusal::AlreadyRedeemed)
                };
            }
            match inv.state(now) {
                InviteState::Active => {}
                InviteState::Revoked => return Err(InviteRefusal::Revoked),
                InviteState::UsedUp => return Err(InviteRefusal::UsedUp),
                InviteState::Expired => return Err(InviteRefusal::Expired),
            }
            inv.used += 1;
            inv.redeemed.push(Redemption {
                instance: *peer,
                name: name.clone(),
                at_ms: now,
            });
            let role = inv.role;
            Ok(InviteDecision::Grant {
                invite: inv,
                trust: TrustRecord {
                    role,
                    card: card.to_vec(),
                    added_at_ms: now,
                },
            })
        };
        Ok(self
            .db
            .redeem_invite(invite, peer, decide)?
            .map(|d| match d {
                InviteDecision::Grant { invite, .. } => Redeemed::Granted(invite.role),
                InviteDecision::Again(role) => Redeemed::Again(role),
            }))
    }
}

/// Equality of two 32-byte values in time independent of where they differ.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn opts(uses: u32) -> InviteOptions {
        InviteOptions {
            role: Role::Full,
            expires: Duration::from_secs(3600),
            uses,
            label: Some("mirror".into()),
        }
    }

    fn redeem(
        src: &Store,
        who: &Store,
        inv: &Invite,
    ) -> std::result::Result<Redeemed, InviteRefusal> {
        let card = who.card().unwrap();
        let ch = [7u8; 32];
        let mac = inv.redeem_mac(&who.instance_id(), &ch, card.bytes());
        src.redeem_invite(&who.instance_id(), &inv.id, card.bytes(), &ch, &mac)
            .unwrap()
    }

    #[test]
    fn a_redemption_spends_one_use_and_trusts_the_card_once() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Store::init(&tmp.path().join("src"), "src").unwrap();
        let a = Store::init(&tmp.path().join("a"), "a").unwrap();
        let b = Store::init(&tmp.path().join("b"), "b").unwrap();
        let (rec, inv) = src
            .invite_create(&opts(1), vec!["/ip4/127.0.0.1/tcp/1".into()])
            .unwrap();
        assert_eq!(rec.state(now_ms()), InviteState::Active);
        // The secret is derived, not stored: the record holds its hash.
        assert_eq!(rec.secret_hash, secret_hash(&src.invite_secret(&inv.id)));
        assert_eq!(redeem(&src, &a, &inv), Ok(Redeemed::Granted(Role::Full)));
        // A retry of the same redeemer changes nothing.
        assert_eq!(redeem(&src, &a, &inv), Ok(Redeemed::Again(Role::Full)));
        assert_eq!(redeem(&src, &b, &inv), Err(InviteRefusal::UsedUp));
        let trusted: Vec<_> = src.db().trusted().unwrap();
        assert_eq!(trusted.len(), 1);
        assert_eq!(trusted[0].0, a.instance_id());
        let rec = &src.invites().unwrap()[0];
        assert_eq!((rec.used, rec.redeemed.len()), (1, 1));
        assert_eq!(rec.redeemed[0].name, "a");
        assert_eq!(rec.state(now_ms()), InviteState::UsedUp);
        // Removed from the trust table afterwards: the invite does not
        // bring it back, even with uses left.
        src.trust_remove(&a.instance_id()).unwrap();
        assert_eq!(redeem(&src, &a, &inv), Err(InviteRefusal::AlreadyRedeemed));
        let (_, multi) = src
            .invite_create(&opts(3), vec!["/ip4/127.0.0.1/tcp/1".into()])
            .unwrap();
        assert_eq!(redeem(&src, &b, &multi), Ok(Redeemed::Granted(Role::Full)));
        src.trust_remove(&b.instance_id()).unwrap();
        assert_eq!(
            redeem(&src, &b, &multi),
            Err(InviteRefusal::AlreadyRedeemed)
        );
        assert!(src.db().trusted().unwrap().is_empty());
    }

    #[test]
    fn refusals_change_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let src = Store::init(&tmp.path().join("src"), "src").unwrap();
        let a = Store::init(&tmp.path().join("a"), "a").unwrap();
        let b = Store::init(&tmp.path().join("b"), "b").unwrap();
        let addrs = vec!["/ip4/127.0.0.1/tcp/1".to_string()];
        let (_, inv) = src.invite_create(&opts(3), addrs.clone()).unwrap();
        // Wrong secret.
        let forged =
            Invite::new(inv.source, inv.id, Zeroizing::new([1; 32]), addrs.clone()).unwrap();
        assert_eq!(
            redeem(&src, &a, &forged),
            Err(InviteRefusal::UnknownOrWrongSecret)
        );
        // Unknown id with the secret that id would have.
        let other = InviteId::random();
        let unknown =
            Invite::new(inv.source, other, src.invite_secret(&other), addrs.clone()).unwrap();
        assert_eq!(
            redeem(&src, &a, &unknown),
            Err(InviteRefusal::UnknownOrWrongSecret)
        );
        // Another instance's card, and a bad card.
        let card_b = b.card().unwrap();
        let ch = [1u8; 32];
        let mac = inv.redeem_mac(&a.instance_id(), &ch, card_b.bytes());
        assert_eq!(
            src.redeem_invite(&a.instance_id(), &inv.id, card_b.bytes(), &ch, &mac)
                .unwrap(),
            Err(InviteRefusal::CardMismatch)
        );
        let mut bad = a.card().unwrap().bytes().to_vec();
        let n = bad.len();
        bad[n - 1] ^= 1;
        assert_eq!(
            src.redeem_invite(&a.instance_id(), &inv.id, &bad, &ch, &mac)
                .unwrap(),
            Err(InviteRefusal::BadCard)
        );
        // A proof for another challenge.
        let card_a = a.card().unwrap();
        let mac = inv.redeem_mac(&a.instance_id(), &[2; 32], card_a.bytes());
        assert_eq!(
            src.redeem_invite(&a.instance_id(), &inv.id, card_a.bytes(), &ch, &mac)
                .unwrap(),
            Err(InviteRefusal::UnknownOrWrongSecret)
        );
        // Revoked.
        let (_, before) = src.invite_revoke(&inv.id).unwrap();
        assert!(!before);
        assert!(src.invite_revoke(&inv.id).unwrap().1);
        assert_eq!(redeem(&src, &a, &inv), Err(InviteRefusal::Revoked));
        assert!(src.db().trusted().unwrap().is_empty());
        let rec = &src.invites().unwrap()[0];
        assert_eq!((rec.used, rec.redeemed.len()), (0, 0));
        // Expired (written as expired: no waiting in a unit test).
        let (mut rec, inv) = src.invite_create(&opts(1), addrs).unwrap();
        rec.expires_at_ms = now_ms() - 1;
        src.db().put_invite(&rec).unwrap();
        assert_eq!(redeem(&src, &a, &inv), Err(InviteRefusal::Expired));
        assert!(src.db().trusted().unwrap().is_empty());
        // Bad options.
        let mut o = opts(0);
        assert!(
            src.invite_create(&o, vec!["/ip4/1.2.3.4/tcp/1".into()])
                .is_err()
        );
        o.uses = 1;
        o.expires = MAX_EXPIRY + Duration::from_secs(1);
        assert!(
            src.invite_create(&o, vec!["/ip4/1.2.3.4/tcp/1".into()])
                .is_err()
        );
        o.expires = Duration::from_secs(60);
        assert!(src.invite_create(&o, vec![]).is_err());
    }

    #[test]
    fn concurrent_redemptions_of_a_one_use_invite_grant_one() {
        let tmp = tempfile::tempdir().unwrap();
        let src = std::sync::Arc::new(Store::init(&tmp.path().join("src"), "src").unwrap());
        let (_, inv) = src
            .invite_create(&opts(1), vec!["/ip4/127.0.0.1/tcp/1".into()])
            .unwrap();
        let inv = std::sync::Arc::new(inv);
        let redeemers: Vec<Store> = (0..4)
            .map(|i| Store::init(&tmp.path().join(format!("r{i}")), "r").unwrap())
            .collect();
        let granted = std::thread::scope(|s| {
            let handles: Vec<_> = redeemers
                .iter()
                .map(|r| {
                    let (src, inv) = (src.clone(), inv.clone());
                    s.spawn(move || redeem(&src, r, &inv))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .filter(|r| matches!(r, Ok(Redeemed::Granted(_))))
                .count()
        });
        assert_eq!(granted, 1);
        assert_eq!(src.db().trusted().unwrap().len(), 1);
        assert_eq!(src.invites().unwrap()[0].used, 1);
    }
}
