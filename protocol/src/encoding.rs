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
