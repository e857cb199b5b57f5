//! Strict postcard encoding helpers: size limit first, no trailing bytes,
//! format number checked.

use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// The format number every structure of this version writes first.
pub const FORMAT_V1: u16 = 1;

/// Encodes `value` with postcard. Encoding our own types cannot fail short of
/// running out of memory, which aborts anyway.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Sized first, so that a large message (a batch of chunks) is written
    // into one allocation instead of being copied at every doubling.
    let size = postcard::experimental::serialized_size(value).unwrap_or(0);
    match postcard::to_extend(value, Vec::with_capacity(size)) {
        Ok(v) => v,
        // postcard only fails on sequences of unknown length, which our types never use.
        Err(e) => panic!("postcard encoding of an in-memory value failed: {e}"),
    }
}

/// Appends `v` as postcard writes an unsigned integer (LEB128: seven bits
/// per byte, low first).
pub fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// How many bytes [`push_varint`] writes for `v`.
pub fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Decodes exactly one `T` from `bytes`: rejects input over `limit` bytes
/// before looking at it, and rejects trailing bytes.
pub fn decode<T: DeserializeOwned>(what: &'static str, bytes: &[u8], limit: usize) -> Result<T> {
    if bytes.len() > limit {
        return Err(Error::TooLarge {
            what,
            len: bytes.len(),
            limit,
        });
    }
    let (value, rest) =
        postcard::take_from_bytes::<T>(bytes).map_err(|e| Error::malformed(what, e))?;
    if !rest.is_empty() {
        return Err(Error::malformed(
            what,
            format!("{} trailing bytes", rest.len()),
        ));
    }
    Ok(value)
}

/// Checks a decoded format number.
pub fn check_format(what: &'static str, found: u16) -> Result<()> {
    if found == FORMAT_V1 {
        Ok(())
    } else {
        Err(Error::UnsupportedFormat {
            what,
            found,
            supported: FORMAT_V1,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_are_postcards() {
        for v in [
            0u64,
            1,
            127,
            128,
            300,
            16_383,
            16_384,
            u32::MAX as u64,
            u64::MAX,
        ] {
            let mut out = Vec::new();
            push_varint(&mut out, v);
            assert_eq!(out, encode(&v), "{v}");
            assert_eq!(varint_len(v), out.len(), "{v}");
        }
    }
}
