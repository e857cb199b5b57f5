//! The offline transfer file of `backups export` (docs/format.md §17.9): a
//! POSIX ustar archive whose members are the repository files one snapshot
//! needs, and [`TarBackend`], a read-only [`Backend`] over such a file, so
//! that `restore --repo FILE` reads it in place (positioned reads at the
//! members' offsets; nothing is extracted).
//!
//! Only what this module writes is read: regular files (type `0`), names of
//! at most 100 bytes that are repository paths (no `..`, no leading `/`),
//! each name once, header checksums verified, sizes within the file.

use std::{
    collections::BTreeMap,
    fs::File,
    io::{self, Write},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

use super::super::backend::Backend;

const BLOCK: u64 = 512;

/// Whether `name` may be a member: a relative repository path of plain
/// components (`[A-Za-z0-9._-]`, not `.` or `..`), at most 100 bytes.
pub fn valid_member_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 100
        && name.split('/').all(|c| {
            !c.is_empty()
                && c != "."
                && c != ".."
                && c.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        })
}

fn octal(field: &mut [u8], value: u64) {
    let s = format!("{value:0w$o}", w = field.len() - 1);
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// The 512-byte ustar header of a regular file `name` of `size` bytes
/// (mode 0600, owner 0, mtime `mtime` seconds).
pub fn header(name: &str, size: u64, mtime: u64) -> io::Result<[u8; 512]> {
    if !valid_member_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} cannot be a member of an export file"),
        ));
    }
    if size >= 1 << 33 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name}: {size} bytes is too large for a ustar member"),
        ));
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    octal(&mut h[100..108], 0o600);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime.min((1 << 33) - 1));
    h[148..156].copy_from_slice(b"        ");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    Ok(h)
}

/// Writes members to a tar stream, in the order given.
#[derive(Debug)]
pub struct TarWriter<W: Write> {
    out: W,
    mtime: u64,
    written: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer onto `out`; every member gets `mtime` (seconds).
    pub fn new(out: W, mtime: u64) -> Self {
        TarWriter {
            out,
            mtime,
            written: 0,
        }
    }

    /// Appends one member.
    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        let h = header(name, data.len() as u64, self.mtime)?;
        self.out.write_all(&h)?;
        self.out.write_all(data)?;
        let pad = (BLOCK - data.len() as u64 % BLOCK) % BLOCK;
        self.out.write_all(&vec![0u8; pad as usize])?;
        self.written += BLOCK + data.len() as u64 + pad;
        Ok(())
    }

    /// Writes the two zero blocks that end an archive; returns the stream
    /// and the archive's length.
    pub fn finish(mut self) -> io::Result<(W, u64)> {
        self.out.write_all(&[0u8; 2 * BLOCK as usize])?;
        self.written += 2 * BLOCK;
        Ok((self.out, self.written))
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0 && b != b' ')
        .collect();
    if s.is_empty() || !s.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return None;
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Where each member's bytes are in an archive of `len` bytes, read
/// through `read_at(offset, buf)`. Refuses anything this module does not
/// write, with the member (or offset) and why.
pub fn scan(
    len: u64,
    read_at: impl Fn(u64, &mut [u8]) -> io::Result<()>,
) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let mut members = BTreeMap::new();
    let mut pos = 0u64;
    let mut h = [0u8; 512];
    loop {
        if pos + BLOCK > len {
            return Err(format!(
                "cut short at offset {pos} (no end-of-archive blocks)"
            ));
        }
        read_at(pos, &mut h).map_err(|e| format!("reading offset {pos}: {e}"))?;
        if h.iter().all(|&b| b == 0) {
            return Ok(members);
        }
        let stored = parse_octal(&h[148..156])
            .ok_or_else(|| format!("header at offset {pos}: bad checksum field"))?;
        let sum: u64 = h[..148]
            .iter()
            .chain([b' '; 8].iter())
            .chain(h[156..].iter())
            .map(|&b| u64::from(b))
            .sum();
        if sum != stored {
            return Err(format!(
                "header at offset {pos}: checksum mismatch (damaged)"
            ));
        }
        let name_len = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = std::str::from_utf8(&h[..name_len])
            .ok()
            .filter(|n| valid_member_name(n) && h[345] == 0)
            .ok_or_else(|| format!("header at offset {pos}: not a repository file name"))?
            .to_string();
        if h[156] != b'0' {
            return Err(format!("{name}: not a regular file"));
        }
        let size = parse_octal(&h[124..136]).ok_or_else(|| format!("{name}: bad size field"))?;
        let start = pos + BLOCK;
        if start + size > len {
            return Err(format!(
                "{name}: cut short ({size} bytes from offset {start}, the file has {len})"
            ));
        }
        if members.insert(name.clone(), (start, size)).is_some() {
            return Err(format!("{name}: appears twice"));
        }
        pos = start + size.div_ceil(BLOCK) * BLOCK;
    }
}

/// A read-only backend over an export file.
#[derive(Debug)]
pub struct TarBackend {
    path: PathBuf,
    file: File,
    members: BTreeMap<String, (u64, u64)>,
}

impl TarBackend {
    /// Opens and scans an export file.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let members = scan(len, |off, buf| file.read_exact_at(buf, off)).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a valid bbsync export file: {e}", path.display()),
            )
        })?;
        Ok(TarBackend {
            path: path.to_path_buf(),
            file,
            members,
        })
    }

    fn member(&self, path: &str) -> io::Result<(u64, u64)> {
        self.members.get(path).copied().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{path} is not in {}", self.path.display()),
            )
        })
    }

    fn refused(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is an export file, read only", self.path.display()),
        )
    }
}

impl Backend for TarBackend {
    fn is_read_only(&self) -> bool {
        true
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn read(&self, path: &str) -> io::Result<Vec<u8>> {
        let (_, len) = self.member(path)?;
        self.read_range(path, 0, len)
    }

    fn read_range(&self, path: &str, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        let (start, size) = self.member(path)?;
        if offset.saturating_add(len) > size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{path} is shorter than {} bytes",
                    offset.saturating_add(len)
                ),
            ));
        }
        let mut buf = vec![0u8; usize::try_from(len).map_err(io::Error::other)?];
        self.file.read_exact_at(&mut buf, start + offset)?;
        Ok(buf)
    }

    fn write(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Err(self.refused())
    }

    fn write_lazy(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Err(self.refused())
    }

    fn stage(&self, _: &str, _: &[u8]) -> io::Result<()> {
        Err(self.refused())
    }

    fn publish(&self, _: &str) -> io::Result<()> {
        Err(self.refused())
    }

    fn size(&self, path: &str) -> io::Result<Option<u64>> {
        Ok(self.members.get(path).map(|(_, s)| *s))
    }

    fn list(&self, dir: &str) -> io::Result<Vec<String>> {
        let prefix = format!("{dir}/");
        let mut out: Vec<String> = self
            .members
            .keys()
            .filter_map(|k| k.strip_prefix(&prefix))
            .map(|rest| rest.split('/').next().unwrap_or(rest).to_string())
            .collect();
        out.dedup();
        Ok(out)
    }

    fn remove(&self, _: &str) -> io::Result<()> {
        Err(self.refused())
    }

    fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    fn link_from(&self, _: &Path, _: &str) -> io::Result<bool> {
        Ok(false)
    }

    fn local_path(&self, _: &str) -> Option<PathBuf> {
        None
    }

    fn remove_temp_files(&self) -> io::Result<u64> {
        Ok(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut w = TarWriter::new(Vec::new(), 1_764_489_600);
        for (n, d) in members {
            w.append(n, d).unwrap();
        }
        let (v, len) = w.finish().unwrap();
        assert_eq!(v.len() as u64, len);
        v
    }

    fn scan_vec(v: &[u8]) -> Result<BTreeMap<String, (u64, u64)>, String> {
        scan(v.len() as u64, |off, buf| {
            let s = v
                .get(off as usize..off as usize + buf.len())
                .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
            buf.copy_from_slice(s);
            Ok(())
        })
    }

    #[test]
    fn members_read_back_in_place() {
        let a: Vec<u8> = (0..1300u32).map(|i| i as u8).collect();
        let v = archive(&[
            ("config", b"{}".to_vec()),
            ("data/ab/x.pack", a.clone()),
            ("snapshots/s", vec![]),
        ]);
        let m = scan_vec(&v).unwrap();
        assert_eq!(m.len(), 3);
        let (off, len) = m["data/ab/x.pack"];
        assert_eq!(&v[off as usize..(off + len) as usize], &a[..]);
        assert_eq!(m["snapshots/s"].1, 0);
    }

    #[test]
    fn system_tar_reads_what_we_write() {
        // The format is plain ustar: GNU tar (if present) lists it.
        let v = archive(&[("config", b"{}\n".to_vec()), ("index/ab", vec![7; 600])]);
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.tar");
        std::fs::write(&f, &v).unwrap();
        if let Ok(o) = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&f)
            .output()
        {
            assert!(o.status.success());
            assert_eq!(String::from_utf8_lossy(&o.stdout), "config\nindex/ab\n");
        }
        let b = TarBackend::open(&f).unwrap();
        assert_eq!(b.read("index/ab").unwrap(), vec![7; 600]);
        assert_eq!(b.read_range("index/ab", 590, 10).unwrap(), vec![7; 10]);
        assert!(b.read_range("index/ab", 595, 10).is_err());
        assert_eq!(b.list("index").unwrap(), vec!["ab".to_string()]);
        assert_eq!(b.read("nope").unwrap_err().kind(), io::ErrorKind::NotFound);
        assert!(b.write("config", b"x").is_err());
    }

    #[test]
    fn damaged_archives_are_refused() {
        let v = archive(&[("config", b"{}".to_vec())]);
        let mut bad = v.clone();
        bad[0] = b'x'; // name changed: checksum no longer matches
        assert!(scan_vec(&bad).unwrap_err().contains("checksum mismatch"));
        assert!(scan_vec(&v[..600]).unwrap_err().contains("cut short"));
        let twice = archive(&[("config", vec![]), ("config", vec![])]);
        assert!(scan_vec(&twice).unwrap_err().contains("appears twice"));
        assert!(header("../etc/passwd", 1, 0).is_err());
        assert!(header("/abs", 1, 0).is_err());
    }
}
