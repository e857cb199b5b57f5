//! Object records: resolving a name, the record MAC (a record this
//! instance verified or wrote needs no new signature check), manifests and
//! the content keys their envelopes wrap.

use bbsync_protocol::{ContentKey, EnvelopeEntry, Manifest, ObjectId, Signed, Unverified};

use crate::{error::Context, *};

/// Whether a verified entry is for exactly this manifest's object version.
pub(crate) fn entry_fits(e: &EnvelopeEntry, m: &Manifest) -> bool {
    e.object_id == m.object_id && e.version == m.version
}

/// An object's record as read from the database, and whether its bytes are
/// exactly those this instance verified or wrote (its record MAC matches,
/// [`Store::record_mac`]). Only [`Store::load`] makes one, so no caller can
/// declare a record checked.
pub(crate) struct Loaded {
    /// The record.
    pub(crate) rec: db::ObjectRecord,
    mac_ok: bool,
}

impl Store {
    /// Resolves an object given as `kind:name`, or a hex id or id prefix (>= 4 digits).
    pub fn resolve(&self, spec: &str) -> Result<ObjectId> {
        if let Some((kind, name)) = spec.split_once(':')
            && bbsync_protocol::manifest::check_kind(kind).is_ok()
        {
            return self
                .db
                .lookup(kind, name)?
                .ok_or_else(|| StoreError::UnknownObject(spec.to_string()));
        }
        let lower = spec.to_ascii_lowercase();
        if lower.len() >= 4 && lower.len() <= 32 && lower.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut hits = Vec::new();
            for r in self.db.objects() {
                let (id, _) = r?;
                if id.to_hex().starts_with(&lower) {
                    hits.push(id);
                }
            }
            return match hits.len() {
                1 => Ok(hits[0]),
                0 => Err(StoreError::UnknownObject(spec.to_string())),
                n => Err(StoreError::AmbiguousObject(spec.to_string(), n)),
            };
        }
        Err(StoreError::UnknownObject(spec.to_string()))
    }

    /// The object's state, or `UnknownObject`.
    pub fn state(&self, id: &ObjectId) -> Result<ObjectState> {
        self.db
            .object(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))
    }

    /// Keyed BLAKE3 (local-only key) over a manifest's and its envelope's
    /// exact bytes. Stored with an object when this instance has verified
    /// or written those bytes; a later read whose bytes still give the same
    /// MAC needs no new signature check (forging one takes this instance's
    /// secret, which could sign manifests anyway). Trust and format rules
    /// are still checked every time.
    pub(crate) fn record_mac(&self, manifest: &[u8], envelope: &[impl AsRef<[u8]>]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.record_key);
        h.update(b"bbsync/record-mac/v1\0");
        h.update(&(manifest.len() as u64).to_be_bytes());
        h.update(manifest);
        h.update(&(envelope.len() as u64).to_be_bytes());
        for e in envelope {
            h.update(&(e.as_ref().len() as u64).to_be_bytes());
            h.update(e.as_ref());
        }
        *h.finalize().as_bytes()
    }

    /// Whether a record's bytes are exactly what this instance verified.
    pub(crate) fn record_checked(&self, rec: &db::ObjectRecord) -> bool {
        rec.state.checked_mac.is_some()
            && rec.state.checked_mac == Some(self.record_mac(&rec.manifest, &rec.envelope))
    }

    /// An object's record with its verification state (see [`Loaded`]).
    pub(crate) fn load(&self, id: &ObjectId) -> Result<Loaded> {
        let rec = self
            .db
            .record(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        Ok(self.loaded(rec))
    }

    /// Wraps a record read from the database with its verification state.
    pub(crate) fn loaded(&self, rec: db::ObjectRecord) -> Loaded {
        let mac_ok = self.record_checked(&rec);
        Loaded { rec, mac_ok }
    }

    /// The record's manifest: its signature checked, or known checked
    /// because the record MAC matches; the author trusted (self or `full`)
    /// and the format rules applied in both cases.
    pub(crate) fn manifest_in(&self, id: &ObjectId, l: &Loaded) -> Result<Signed<Manifest>> {
        Unverified::<Manifest>::decode(&l.rec.manifest)
            .and_then(|u| {
                if l.mac_ok {
                    u.dangerously_verified_before(|a| self.is_full(a))
                } else {
                    u.verify(|a| self.is_full(a))
                }
            })
            .ctx(|| format!("manifest of object {}", id.short()))
    }

    /// The latest manifest, signature checked (or known checked, see
    /// [`Store::record_mac`]), author trusted (self or `full`).
    pub fn manifest(&self, id: &ObjectId) -> Result<Signed<Manifest>> {
        let l = self.load(id)?;
        self.manifest_in(id, &l)
    }

    /// The latest manifest and the content key, from one read of the record
    /// (what export, serving and re-import need).
    pub fn manifest_and_key(&self, id: &ObjectId) -> Result<(Signed<Manifest>, ContentKey)> {
        let l = self.load(id)?;
        let m = self.manifest_in(id, &l)?;
        let (_, key) = self.key_in(&m, &l)?;
        Ok((m, key))
    }

    /// The latest manifest as stored, without checking its signature (it was
    /// checked when it entered the database). For listing and GC only.
    pub fn dangerously_manifest_unverified(&self, id: &ObjectId) -> Result<Manifest> {
        let bytes = self
            .db
            .manifest(id)?
            .ok_or_else(|| StoreError::UnknownObject(id.to_hex()))?;
        manifest_as_stored(id, &bytes)
    }

    /// The first entry of a record that is usable for `m` (addressed to
    /// this instance, for this object version, wrapped by the author or a
    /// trusted `full` instance, unwrapping to the key the manifest commits
    /// to) and the content key it holds. No entry for this instance:
    /// `Undecryptable`; entries, none usable: the last problem.
    pub(crate) fn key_in(
        &self,
        m: &Manifest,
        l: &Loaded,
    ) -> Result<(Signed<EnvelopeEntry>, ContentKey)> {
        let ctx = || format!("envelope of object {}", m.object_id.short());
        let protocol = |source| StoreError::Protocol {
            context: ctx(),
            source,
        };
        let (candidates, decode_err) = self.entry_candidates(&l.rec);
        let mut last_err: Option<StoreError> = decode_err.map(protocol);
        let author = m.author;
        for u in candidates {
            let trusted = |w: &InstanceId| *w == author || self.is_full(w);
            let r = if l.mac_ok {
                u.dangerously_verified_before(trusted)
            } else {
                u.verify(trusted)
            };
            match r {
                Ok(e) => match self.usable_entry(m, e) {
                    Ok(found) => return Ok(found),
                    Err(e) => last_err = Some(e),
                },
                Err(e) => last_err = Some(protocol(e)),
            }
        }
        Err(last_err.unwrap_or_else(|| StoreError::Undecryptable(m.object_id.to_hex())))
    }

    /// The checks on an entry after its signature: for this manifest's
    /// object version, unwraps, and the key matches the manifest's key
    /// commitment.
    pub(crate) fn usable_entry(
        &self,
        m: &Manifest,
        e: Signed<EnvelopeEntry>,
    ) -> Result<(Signed<EnvelopeEntry>, ContentKey)> {
        if e.recipient != self.instance_id() || !entry_fits(&e, m) {
            return Err(StoreError::Invalid(format!(
                "envelope entry of {} is for another instance or version",
                m.object_id.short()
            )));
        }
        let key = self.unwrap_for(m, &e)?;
        Ok((e, key))
    }

    /// The entries of a record that claim this instance as recipient (not
    /// yet verified), in stored order, and the last decoding error seen.
    pub(crate) fn entry_candidates(
        &self,
        rec: &db::ObjectRecord,
    ) -> (
        Vec<Unverified<EnvelopeEntry>>,
        Option<bbsync_protocol::Error>,
    ) {
        let me = self.instance_id();
        let mut out = Vec::new();
        let mut err = None;
        for raw in &rec.envelope {
            match Unverified::<EnvelopeEntry>::decode(raw) {
                // Entries for other instances are none of our business here.
                Ok(u) if u.claimed().recipient == me => out.push(u),
                Ok(_) => {}
                Err(e) => err = Some(e),
            }
        }
        (out, err)
    }

    /// The content key of a manifest's object.
    pub fn content_key(&self, m: &Manifest) -> Result<ContentKey> {
        let l = self.load(&m.object_id)?;
        Ok(self.key_in(m, &l)?.1)
    }

    /// Unwraps an entry addressed to this instance (exchange results
    /// cached) and checks the key against `m`'s key commitment
    /// ([`Manifest::check_key`]): the only way this store turns an entry
    /// into a content key.
    pub fn unwrap_for(&self, m: &Manifest, entry: &Signed<EnvelopeEntry>) -> Result<ContentKey> {
        let key = self
            .unwrapper
            .unwrap(&self.identity, entry)
            .and_then(|k| m.check_key(&k).map(|()| k))
            .ctx(|| format!("envelope entry of {}", m.object_id.short()))?;
        Ok(key)
    }

    /// Verifies the envelope entries of a manifest received whole (a peer's
    /// page, a backup's manifest file, a record written before schema 2):
    /// keeps the bytes of each entry whose signature checks, whose wrapper
    /// is the author, this instance or trusted (`trusted`), and that is for
    /// this object version; returns them and how many were dropped. What is
    /// recorded (and covered by a record MAC) is only what this returns.
    pub(crate) fn verified_entries(
        &self,
        m: &Manifest,
        raw: &[Vec<u8>],
        trusted: &dyn Fn(&InstanceId) -> bool,
    ) -> (Vec<Vec<u8>>, usize) {
        let (kept, _, dropped) = self.verified_entry_values(m, raw, trusted);
        (kept, dropped)
    }

    /// [`Store::verified_entries`], with the verified entries themselves
    /// (in the order of the kept bytes), so that a caller looking for its
    /// key does not check their signatures a second time.
    pub(crate) fn verified_entry_values(
        &self,
        m: &Manifest,
        raw: &[Vec<u8>],
        trusted: &dyn Fn(&InstanceId) -> bool,
    ) -> (Vec<Vec<u8>>, Vec<Signed<EnvelopeEntry>>, usize) {
        let me = self.instance_id();
        let author = m.author;
        let decoded: Vec<(usize, Unverified<EnvelopeEntry>)> = raw
            .iter()
            .enumerate()
            .filter_map(|(i, b)| Unverified::<EnvelopeEntry>::decode(b).ok().map(|u| (i, u)))
            .collect();
        let idx: Vec<usize> = decoded.iter().map(|(i, _)| *i).collect();
        let results =
            bbsync_protocol::verify_many(decoded.into_iter().map(|(_, u)| u).collect(), |_, w| {
                *w == author || *w == me || trusted(w)
            });
        let mut kept = Vec::new();
        let mut values = Vec::new();
        for (i, r) in idx.into_iter().zip(results) {
            if let Ok(e) = r
                && entry_fits(&e, m)
            {
                kept.push(raw[i].clone());
                values.push(e);
            }
        }
        let dropped = raw.len() - kept.len();
        (kept, values, dropped)
    }
}

/// An object's manifest decoded from its record's bytes, its signature not
/// checked again (it was when the record was written).
pub(crate) fn manifest_as_stored(id: &ObjectId, bytes: &[u8]) -> Result<Manifest> {
    Ok(Unverified::<Manifest>::decode(bytes)
        .ctx(|| format!("manifest of object {}", id.short()))?
        .dangerously_assume_verified()
        .into_value())
}
