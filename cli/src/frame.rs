//! The frames a serving node writes back to a control-socket client (see
//! [`crate::control`]): `tag (1 byte) || length (u32, big-endian) || bytes`,
//! tag [`TAG_OUT`] = stdout, [`TAG_ERR`] = stderr, [`TAG_EXIT`] = exit code
//! (one byte), which ends the exchange. Kept apart from the socket's
//! handling so that [`crate::output`] can write to a client without
//! depending on it.

use std::{
    io::{Read, Write as _},
    os::unix::net::UnixStream,
};

/// A frame of the command's stdout.
pub const TAG_OUT: u8 = 1;
/// A frame of the command's stderr.
pub const TAG_ERR: u8 = 2;
/// The command's exit code (one byte); the last frame.
pub const TAG_EXIT: u8 = 3;
/// Largest output frame a client accepts.
pub const MAX_FRAME: u32 = 64 << 20;

/// Writes output frames to a client.
pub struct FrameWriter(UnixStream);

impl FrameWriter {
    /// A writer of frames on `stream`.
    pub fn new(stream: UnixStream) -> Self {
        FrameWriter(stream)
    }

    /// Writes one frame.
    pub fn frame(&mut self, tag: u8, bytes: &[u8]) -> std::io::Result<()> {
        let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let mut head = [0u8; 5];
        head[0] = tag;
        head[1..].copy_from_slice(&len.to_be_bytes());
        self.0.write_all(&head)?;
        self.0.write_all(&bytes[..len as usize])?;
        self.0.flush()
    }
}

/// Why a frame could not be read.
#[derive(Debug)]
pub enum ReadFrameError {
    /// The stream ended or failed before a whole frame came.
    Lost,
    /// The frame's length is over [`MAX_FRAME`].
    Oversized,
}

/// Reads one frame: its tag and its bytes.
pub fn read_frame(r: &mut impl Read) -> Result<(u8, Vec<u8>), ReadFrameError> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).map_err(|_| ReadFrameError::Lost)?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]);
    if len > MAX_FRAME {
        return Err(ReadFrameError::Oversized);
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body).map_err(|_| ReadFrameError::Lost)?;
    Ok((head[0], body))
}
