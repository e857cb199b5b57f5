//! The trust table: which instances this one trusts and in which role,
//! and the recipients new envelopes are wrapped for.

use bbsync_protocol::{
    ContentKey, InstanceCard, InstanceId, ObjectId, Role, Signed, Unverified, WrapSession,
    card_from_str,
};

use crate::{error::Context, *};

impl Store {
    /// The role of `id` from this instance's point of view (itself counts as full).
    pub(crate) fn role_of(&self, id: &InstanceId) -> Result<Option<Role>> {
        if *id == self.instance_id() {
            return Ok(Some(Role::Full));
        }
        Ok(self.db.trust(id)?.map(|r| r.role))
    }

    pub(crate) fn is_full(&self, id: &InstanceId) -> bool {
        matches!(self.role_of(id), Ok(Some(Role::Full)))
    }

    /// Adds (or updates the role of) a trusted instance from its card string.
    pub fn trust_add(&self, card: &str, role: Role) -> Result<(Signed<InstanceCard>, bool)> {
        let card = card_from_str(card).ctx(|| "reading the card".to_string())?;
        let existed = self.trust_card(&card, role)?;
        Ok((card, existed))
    }

    /// Trusts an instance by its verified card (e.g. a clone's source,
    /// pinned by the address the operator gave). Returns whether it was
    /// already trusted.
    pub fn trust_card(&self, card: &Signed<InstanceCard>, role: Role) -> Result<bool> {
        if card.instance == self.instance_id() {
            return Err(StoreError::Trust("that card is this instance's own".into()));
        }
        let _g = self.lock();
        let existed = self.db.trust(&card.instance)?.is_some();
        self.db.put_trust(
            &card.instance,
            &TrustRecord {
                role,
                card: card.bytes().to_vec(),
                added_at_ms: bbsync_protocol::now_ms(),
            },
        )?;
        Ok(existed)
    }

    /// A trusted instance's verified card and role; `None` when not trusted.
    pub fn trusted_card(&self, id: &InstanceId) -> Result<Option<(InstanceCard, Role)>> {
        let Some(rec) = self.db.trust(id)? else {
            return Ok(None);
        };
        let card = Unverified::<InstanceCard>::decode(&rec.card)
            .and_then(|u| u.verify_self_signed())
            .ctx(|| format!("trust record of {}", id.short()))?;
        Ok(Some((card.into_value(), rec.role)))
    }

    /// Resolves an instance id given in full or as a unique hex prefix (>= 8).
    pub fn resolve_instance(&self, spec: &str) -> Result<InstanceId> {
        let spec = spec.trim().to_ascii_lowercase();
        if spec.len() < 8 || !spec.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Trust(format!(
                "{spec:?} is not an instance id (give at least 8 hex digits)"
            )));
        }
        let hits: Vec<_> = self
            .db
            .trusted()?
            .into_iter()
            .filter(|(id, _)| id.to_hex().starts_with(&spec))
            .collect();
        match hits.len() {
            1 => Ok(hits[0].0),
            0 => Err(StoreError::Trust(format!("no trusted instance {spec}"))),
            n => Err(StoreError::Trust(format!(
                "instance id {spec} is ambiguous ({n} matches)"
            ))),
        }
    }

    /// Removes a trusted instance.
    pub fn trust_remove(&self, id: &InstanceId) -> Result<()> {
        let _g = self.lock();
        if self.db.remove_trust(id)? {
            Ok(())
        } else {
            Err(StoreError::Trust(format!("no trusted instance {id}")))
        }
    }

    /// The ids in the trust table (any role), without reading their cards:
    /// for a gate that only pre-filters (every request still checks the
    /// peer's record and card itself).
    pub fn trusted_ids(&self) -> Result<Vec<InstanceId>> {
        Ok(self
            .trust_records()?
            .into_iter()
            .map(|(id, _)| id)
            .collect())
    }

    /// The trust table with each instance's verified card.
    pub fn trust_list(&self) -> Result<Vec<(InstanceCard, TrustRecord)>> {
        self.db
            .trusted()?
            .into_iter()
            .map(|(id, rec)| {
                let card = Unverified::<InstanceCard>::decode(&rec.card)
                    .and_then(|u| u.verify_self_signed())
                    .ctx(|| format!("trust record of {}", id.short()))?;
                Ok((card.into_value(), rec))
            })
            .collect()
    }

    /// Whether an owner is in `exclude_owners`: such objects are never
    /// served, and their keys are wrapped for this instance only.
    pub(crate) fn excluded_owner(&self, owner: Option<&str>) -> bool {
        owner.is_some_and(|o| self.config.exclude_owners.iter().any(|x| x == o))
    }

    /// The x25519 keys of every trusted `full` instance (recipients of new envelopes).
    pub(crate) fn full_recipients(&self) -> Result<Vec<(InstanceId, [u8; 32])>> {
        Ok(self
            .trust_list()?
            .into_iter()
            .filter(|(_, r)| r.role == Role::Full)
            .map(|(c, _)| (c.instance, c.x25519))
            .collect())
    }

    /// This instance and every trusted `full` instance: the recipients of new envelopes.
    pub(crate) fn recipients(&self) -> Result<Vec<(InstanceId, [u8; 32])>> {
        let mut recipients = vec![(self.instance_id(), self.identity.x25519_public())];
        recipients.extend(self.full_recipients()?);
        Ok(recipients)
    }

    /// The recipients of an object's envelope: [`Store::recipients`], or
    /// this instance alone for an owner in `exclude_owners` (those objects
    /// never leave this node, and their entries would reach every backup).
    pub(crate) fn recipients_for<'a>(
        &self,
        all: &'a [(InstanceId, [u8; 32])],
        owner: Option<&str>,
    ) -> &'a [(InstanceId, [u8; 32])] {
        if self.excluded_owner(owner) {
            let me = self.instance_id();
            let n = all.iter().position(|(i, _)| *i == me).map_or(0, |p| p + 1);
            &all[..n]
        } else {
            all
        }
    }

    /// Builds envelope entries for `key` addressed to `recipients` in one wrap session.
    pub(crate) fn wrap_for(
        &self,
        session: &WrapSession<'_>,
        recipients: &[(InstanceId, [u8; 32])],
        object_id: ObjectId,
        version: u64,
        key: &ContentKey,
    ) -> Result<Vec<Vec<u8>>> {
        let mut out = Vec::with_capacity(recipients.len());
        for (id, x) in recipients {
            let e = session.wrap(object_id, version, *id, x, key).ctx(|| {
                format!(
                    "wrapping the key of {} for {}",
                    object_id.short(),
                    id.short()
                )
            })?;
            out.push(e.bytes().to_vec());
        }
        Ok(out)
    }
}
