//! The index cache's tables: sorted fixed-size records, searched by a
//! leading key through a directory of key prefixes, merged in one pass.

use std::sync::Arc;

/// Sorted fixed-size records, searched by their leading key (a key's
/// first `bits` bits pick its run of records through `dir`, sized to the
/// table: the ids are hashes, so a run holds about one record).
pub(super) struct Table {
    data: Arc<Vec<u8>>,
    /// Where the records are in `data`.
    start: usize,
    len: usize,
    rec: usize,
    key: usize,
    /// `dir[p]`: the first record whose key's first `bits` bits are >= p.
    dir: Vec<u32>,
    bits: u32,
}

/// A key's first `bits` bits (keys are at least 2 bytes; `bits` <= 16).
fn prefix(key: &[u8], bits: u32) -> Option<usize> {
    let p = u16::from_be_bytes([*key.first()?, *key.get(1)?]);
    Some(usize::from(p >> (16 - bits)))
}

impl Table {
    pub(super) fn of(mut recs: Vec<Vec<u8>>, rec: usize, key: usize) -> Table {
        recs.sort_unstable();
        let len = recs.len();
        Table::new(Arc::new(recs.concat()), 0, len, rec, key)
    }

    pub(super) fn new(
        data: Arc<Vec<u8>>,
        start: usize,
        len: usize,
        rec: usize,
        key: usize,
    ) -> Table {
        // About one record per run: 2^bits >= len, between 2^4 and 2^16.
        let bits = (usize::BITS - len.leading_zeros()).clamp(4, 16);
        let mut dir = vec![len as u32; (1 << bits) + 1];
        let mut next = 0usize;
        let recs = data
            .get(start..start + len * rec)
            .unwrap_or_default()
            .chunks_exact(rec);
        for (i, r) in recs.enumerate() {
            let p = prefix(r, bits).unwrap_or(0);
            while next <= p {
                dir[next] = i as u32;
                next += 1;
            }
        }
        Table {
            data,
            start,
            len,
            rec,
            key,
            dir,
            bits,
        }
    }

    /// Whether the keys are strictly increasing (the first 8 bytes of two
    /// hashes nearly always decide, without a call to `memcmp`).
    pub(super) fn is_sorted(&self) -> bool {
        let key = self.key;
        let head = |r: &[u8]| u64::from_be_bytes(r[..8].try_into().unwrap_or_default());
        let recs = self.bytes().chunks_exact(self.rec);
        recs.clone()
            .zip(recs.skip(1))
            .all(|(a, b)| match head(a).cmp(&head(b)) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => a[..key] < b[..key],
            })
    }

    pub(super) fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len * self.rec]
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn get(&self, key: &[u8]) -> Option<&[u8]> {
        let p = prefix(key, self.bits)?;
        self.search(key, self.dir[p] as usize, self.dir[p + 1] as usize)
    }

    /// [`Table::get`] of each key, in order. The keys are taken in groups
    /// whose memory reads are started before any is waited for: first the
    /// directory entries of all, then the first record of each run (a run
    /// mostly holds one record), then the searches, which find those in
    /// the cache. One lookup at a time waits for each read in turn: the
    /// tables are larger than the CPU's caches, and a backup asks for
    /// every chunk and manifest of the store.
    pub(super) fn get_each<'k>(
        &self,
        keys: impl ExactSizeIterator<Item = &'k [u8]>,
        mut f: impl FnMut(usize, Option<&[u8]>),
    ) {
        const GROUP: usize = 16;
        let bytes = self.bytes();
        let last = self.len.saturating_sub(1);
        let keys: Vec<&[u8]> = keys.collect();
        for (g, group) in keys.chunks(GROUP).enumerate() {
            let mut runs = [(0usize, 0usize); GROUP];
            for (r, k) in runs.iter_mut().zip(group) {
                if let Some(p) = prefix(k, self.bits) {
                    *r = (self.dir[p] as usize, self.dir[p + 1] as usize);
                }
            }
            // Each run's first record read (the first 8 bytes: one cache
            // line), whatever it holds, so that no branch waits for it.
            let mut heads = [0u8; GROUP];
            if self.len > 0 {
                for (h, (lo, _)) in heads.iter_mut().zip(&runs) {
                    *h = bytes.get((*lo).min(last) * self.rec).copied().unwrap_or(0);
                }
            }
            std::hint::black_box(&heads);
            for (i, (k, (lo, hi))) in group.iter().zip(runs).enumerate() {
                f(g * GROUP + i, self.search(k, lo, hi));
            }
        }
    }

    /// The record of `key` among the records `lo..hi` (its run).
    fn search(&self, key: &[u8], mut lo: usize, mut hi: usize) -> Option<&[u8]> {
        let bytes = self.bytes();
        let head = |k: &[u8]| u64::from_be_bytes(k[..8].try_into().unwrap_or_default());
        let want = head(key.get(..8)?);
        hi = hi.min(self.len);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let r = &bytes[mid * self.rec..(mid + 1) * self.rec];
            // (The first 8 bytes of two hashes nearly always decide.)
            match head(r).cmp(&want).then_with(|| r[..self.key].cmp(key)) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(r),
            }
        }
        None
    }

    pub(super) fn records(&self) -> impl Iterator<Item = &[u8]> {
        self.bytes().chunks_exact(self.rec)
    }
}

impl Table {
    /// This table with the records `new` merged in (one pass over both):
    /// `new` is flat, records of this table's size sorted by key, each key
    /// once (a trailing partial record is ignored). Of two records with the
    /// same key, the new one replaces the old where `replace(old, new)`.
    pub(super) fn merged(&self, new: &[u8], replace: impl Fn(&[u8], &[u8]) -> bool) -> Table {
        let mut out = Vec::with_capacity(self.len * self.rec + new.len());
        let mut n = 0usize;
        let mut new = new.chunks_exact(self.rec).peekable();
        for r in self.records() {
            while let Some(x) = new.next_if(|x| x[..self.key] < r[..self.key]) {
                out.extend_from_slice(x);
                n += 1;
            }
            match new.next_if(|x| x[..self.key] == r[..self.key]) {
                Some(x) if replace(r, x) => out.extend_from_slice(x),
                _ => out.extend_from_slice(r),
            }
            n += 1;
        }
        for x in new {
            out.extend_from_slice(x);
            n += 1;
        }
        Table::new(Arc::new(out), 0, n, self.rec, self.key)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use sha2::{Digest, Sha256};

    use super::*;

    /// Tables of every size class find exactly their keys, and an unsorted
    /// one is refused.
    #[test]
    fn tables_find_their_keys_at_every_size() {
        for n in [0usize, 1, 2, 15, 16, 17, 300, 5_000, 70_000] {
            let key = |i: usize| {
                let h = Sha256::digest(i.to_be_bytes());
                let mut r = h.to_vec();
                r.extend_from_slice(&(i as u64).to_be_bytes());
                r
            };
            let t = Table::of((0..n).map(key).collect(), 40, 32);
            assert_eq!(t.len(), n);
            assert!(t.is_sorted());
            for i in (0..n).step_by(7) {
                let k = key(i);
                assert_eq!(t.get(&k[..32]), Some(&k[..]), "n={n} i={i}");
            }
            for i in n..n + 50 {
                assert_eq!(t.get(&key(i)[..32]), None, "n={n} absent {i}");
            }
            // The same answers in groups, present and absent keys mixed.
            let asked: Vec<Vec<u8>> = (0..n + 40).step_by(3).map(key).collect();
            let mut seen = 0;
            t.get_each(asked.iter().map(|k| &k[..32]), |i, r| {
                assert_eq!(i, seen);
                assert_eq!(r, t.get(&asked[i][..32]), "n={n} asked {i}");
                seen += 1;
            });
            assert_eq!(seen, asked.len());
            if n >= 2 {
                let mut data = t.bytes().to_vec();
                data.rotate_left(40);
                let u = Table::new(Arc::new(data), 0, n, 40, 32);
                assert!(!u.is_sorted(), "n={n}");
            }
        }
    }
}
