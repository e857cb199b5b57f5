//! What a snapshot holds, assembled: the cache's objects (but those changed
//! since) merged with the records read, in object-id order, in two halves
//! on two cores when there are many.

use std::collections::BTreeMap;

use bbsync_protocol::{ChunkId, ObjectId, SnapshotObject};

use super::{Cache, Chunks, Collected, CollectedManifest, Fresh, IdHash, IdSet, Item, ObjView};

/// One object of the selection, wherever it was read from.
pub(super) enum Entry<'a> {
    Taken(ObjView<'a>),
    Incomplete(ObjectId, &'a str),
}

/// Object ids from `lo` (inclusive) to `hi` (exclusive); `None`: no bound.
#[derive(Clone, Copy, Default)]
pub(super) struct Bounds {
    lo: Option<ObjectId>,
    hi: Option<ObjectId>,
}

impl Bounds {
    fn holds(&self, id: &ObjectId) -> bool {
        self.lo.is_none_or(|l| *id >= l) && self.hi.is_none_or(|h| *id < h)
    }
}

/// The objects of the selection within `bounds`, in object-id order: the
/// cache's, except those changed since, and the records read (`fresh`,
/// sorted, all within `bounds`).
pub(super) fn for_each_entry<'a>(
    cache: Option<&'a Cache>,
    changed: &IdSet<ObjectId>,
    fresh: &'a [(ObjectId, Item)],
    bounds: Bounds,
    mut f: impl FnMut(Entry<'a>),
) {
    let fresh_entry = |(id, item): &'a (ObjectId, Item)| match item {
        Item::Taken(t) => Entry::Taken(ObjView {
            id: *id,
            version: t.version,
            manifest_id: t.manifest_id,
            file: t.file,
            kind: &t.kind,
            deleted: t.deleted,
            plaintext_len: t.plaintext_len,
            chunks: Chunks::List(&t.chunks),
        }),
        Item::Incomplete(name) => Entry::Incomplete(*id, name),
    };
    // Each entry, after the fresh ones whose id is below its own.
    let mut fresh = fresh.iter().peekable();
    let mut emit = |e: Entry<'a>, f: &mut dyn FnMut(Entry<'a>)| {
        let id = match &e {
            Entry::Taken(v) => v.id,
            Entry::Incomplete(id, _) => *id,
        };
        while let Some(n) = fresh.next_if(|n| n.0 < id) {
            f(fresh_entry(n));
        }
        f(e);
    };
    if let Some(c) = cache {
        // The incomplete objects (few) merged into the table's order.
        let mut inc = c
            .incomplete
            .iter()
            .filter(|(id, _)| bounds.holds(id) && !changed.contains(id))
            .peekable();
        let range = c.position(bounds.lo, 0)..c.position(bounds.hi, c.objects);
        for i in range {
            let v = c.view(i);
            while let Some((iid, name)) = inc.next_if(|(iid, _)| *iid < v.id) {
                emit(Entry::Incomplete(*iid, name), &mut f);
            }
            if !changed.contains(&v.id) {
                emit(Entry::Taken(v), &mut f);
            }
        }
        for (iid, name) in inc {
            emit(Entry::Incomplete(*iid, name), &mut f);
        }
    }
    for n in fresh {
        f(fresh_entry(n));
    }
}

/// What the snapshot holds: the cache's objects (but the changed ones)
/// and the records read, in object-id order; in two halves on two cores
/// when there are many.
pub(super) fn collected(
    cache: Option<&Cache>,
    changed: &IdSet<ObjectId>,
    fresh: Fresh,
    from_cache: bool,
) -> Collected {
    let Fresh { items, mut bytes } = fresh;
    let n = cache.map_or(0, |c| c.objects) + items.len();
    let split = match cache {
        Some(c) if c.objects >= 4096 => Some(c.view(c.objects / 2).id),
        _ => None,
    };
    let (a, b) = match split {
        Some(mid) => {
            let at = items.partition_point(|(id, _)| *id < mid);
            let (lo, hi) = items.split_at(at);
            let lo_bounds = Bounds {
                lo: None,
                hi: split,
            };
            let hi_bounds = Bounds {
                lo: split,
                hi: None,
            };
            let hi_bytes = bytes.split_off(&mid);
            let (a, b) = rayon::join(
                || Part::of(cache, changed, lo, lo_bounds, bytes, n / 2),
                || Part::of(cache, changed, hi, hi_bounds, hi_bytes, n / 2),
            );
            (a, Some(b))
        }
        None => (
            Part::of(cache, changed, &items, Bounds::default(), bytes, n),
            None,
        ),
    };
    let mut c = Collected {
        objects: a.objects,
        manifests: a.manifests,
        counts: BTreeMap::new(),
        plaintext_bytes: a.plaintext_bytes,
        chunks: a.chunks,
        bytes: 0,
        skipped_incomplete: a.skipped,
        from_cache,
    };
    let mut counts = a.counts;
    if let Some(b) = b {
        c.objects.extend(b.objects);
        c.manifests.extend(b.manifests);
        c.plaintext_bytes += b.plaintext_bytes;
        c.skipped_incomplete.extend(b.skipped);
        // A chunk both halves reference counts once.
        c.chunks
            .extend(b.chunks.into_iter().filter(|(id, _)| !a.seen.contains(id)));
        for (k, v) in b.counts {
            *counts.entry(k).or_default() += v;
        }
    }
    c.bytes = c.chunks.iter().map(|(_, l)| u64::from(*l)).sum();
    c.counts = counts
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    c
}

/// What one range of object ids contributes to a snapshot.
struct Part<'a> {
    objects: Vec<SnapshotObject>,
    manifests: Vec<CollectedManifest>,
    /// Its distinct chunks, and the set of them.
    chunks: Vec<(ChunkId, u32)>,
    seen: IdSet<ChunkId>,
    counts: BTreeMap<&'a str, u64>,
    plaintext_bytes: u64,
    skipped: Vec<String>,
}

impl<'a> Part<'a> {
    fn of(
        cache: Option<&'a Cache>,
        changed: &IdSet<ObjectId>,
        fresh: &'a [(ObjectId, Item)],
        bounds: Bounds,
        mut bytes: BTreeMap<ObjectId, Vec<u8>>,
        n: usize,
    ) -> Part<'a> {
        let mut p = Part {
            objects: Vec::with_capacity(n),
            manifests: Vec::with_capacity(n),
            chunks: Vec::with_capacity(n),
            seen: IdSet::with_capacity_and_hasher(n, IdHash::new()),
            counts: BTreeMap::new(),
            plaintext_bytes: 0,
            skipped: Vec::new(),
        };
        for_each_entry(cache, changed, fresh, bounds, |e| {
            let v = match e {
                Entry::Taken(v) => v,
                Entry::Incomplete(_, name) => {
                    p.skipped.push(name.to_string());
                    return;
                }
            };
            if !v.deleted {
                v.chunks.for_each(|ch, len| {
                    if p.seen.insert(ch) {
                        p.chunks.push((ch, len));
                    }
                });
                p.plaintext_bytes += v.plaintext_len;
            }
            *p.counts.entry(v.kind).or_default() += 1;
            p.objects.push(SnapshotObject {
                object_id: v.id,
                version: v.version,
                manifest_id: v.manifest_id,
            });
            p.manifests.push(CollectedManifest {
                object_id: v.id,
                manifest_id: v.manifest_id,
                file: v.file,
                bytes: bytes.remove(&v.id),
            });
        });
        p
    }
}
