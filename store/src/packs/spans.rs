//! Reading parts of a pack back for a check (`verify --read-data`,
//! `backups verify --read-data`): the ranges wanted, in offset order,
//! several neighbours per positioned read, each handed on right after its
//! read, while its bytes are still in the CPU's cache (a whole 16 MiB pack
//! read first and hashed after is copied to memory and read back from it).

/// Bytes read at once: several small entries per read; a longer range is
/// read alone, whole.
pub const READ_WINDOW: u64 = 256 << 10;

/// What one range of a pack is read back for: a trailer entry's header,
/// or an entry (with or without its header, as the caller made the
/// range), each by its place in the caller's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Span {
    /// The header of the trailer's entry `i`.
    Trailer(usize),
    /// The caller's entry `i`.
    Entry(usize),
}

/// Reads the ranges `spans` (`(start, end, what)`) through `read(buf,
/// offset)`, sorting them by offset first, up to [`READ_WINDOW`] bytes
/// per read, and hands each range's bytes to `visit` right after its read.
/// Stops at the first read error. One buffer per thread, kept between
/// calls.
pub fn read_spans(
    spans: &mut [(u64, u64, Span)],
    read: &dyn Fn(&mut [u8], u64) -> std::io::Result<()>,
    visit: &mut dyn FnMut(Span, &[u8]),
) -> std::io::Result<()> {
    spans.sort_unstable_by_key(|s| (s.0, s.1));
    thread_local! {
        static WINDOW: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    WINDOW.with_borrow_mut(|buf| {
        let mut k = 0;
        while k < spans.len() {
            let start = spans[k].0;
            let mut end = spans[k].1;
            let mut j = k + 1;
            while j < spans.len() && spans[j].1.max(end) - start <= READ_WINDOW {
                end = end.max(spans[j].1);
                j += 1;
            }
            let n = (end - start) as usize;
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let window = &mut buf[..n];
            read(window, start)?;
            for (s, e, what) in &spans[k..j] {
                visit(*what, &window[(s - start) as usize..(e - start) as usize]);
            }
            k = j;
        }
        Ok(())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn every_range_is_handed_its_own_bytes_once() {
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let mut spans = vec![
            (900_000, 1_700_000, Span::Entry(0)),
            (10, 46, Span::Trailer(0)),
            (46, 300, Span::Entry(1)),
            (300, 260_000, Span::Entry(2)),
            (10, 300, Span::Entry(3)),
            (2_999_000, 3_000_000, Span::Entry(4)),
        ];
        let want: Vec<(Span, Vec<u8>)> = spans
            .iter()
            .map(|(s, e, w)| (*w, data[*s as usize..*e as usize].to_vec()))
            .collect();
        let reads = std::cell::Cell::new(0);
        let read = |buf: &mut [u8], at: u64| {
            reads.set(reads.get() + 1);
            buf.copy_from_slice(&data[at as usize..at as usize + buf.len()]);
            Ok(())
        };
        let mut got = Vec::new();
        read_spans(&mut spans, &read, &mut |w, b| got.push((w, b.to_vec()))).unwrap();
        assert_eq!(got.len(), want.len());
        for w in &want {
            assert!(got.contains(w), "{:?}", w.0);
        }
        // The four small ranges at the start share one read.
        assert_eq!(reads.get(), 3);
        let failing = |_: &mut [u8], _: u64| Err(std::io::Error::other("gone"));
        assert!(read_spans(&mut spans, &failing, &mut |_, _| ()).is_err());
    }
}
