//! Who may use the admin HTTP API: two bearer tokens kept in
//! `<data>/http.token` (owner-only), one-time login codes that `bbsync ui`
//! mints, and the browser sessions they open (an HttpOnly, SameSite=Strict
//! cookie, with a CSRF token that every state-changing request of the page
//! carries in `X-CSRF-Token`).
//!
//! Tokens and session ids are compared in constant time; none of them is
//! ever logged or put into an error message.

use std::{
    collections::HashMap,
    io::Write as _,
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use rand::RngCore as _;
use zeroize::Zeroizing;

use super::HttpError;

/// The token file's name in the data dir.
pub const TOKEN_FILE: &str = "http.token";
/// How long a login code of `bbsync ui` may wait to be used.
pub const LOGIN_CODE_TTL: Duration = Duration::from_secs(10 * 60);
/// How long a browser session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);
/// Most login codes waiting at once (older ones are dropped first).
const MAX_LOGIN_CODES: usize = 16;
/// Most sessions at once (the oldest is dropped first).
const MAX_SESSIONS: usize = 64;

/// The two API tokens.
pub struct Tokens {
    /// Full access.
    pub admin: Zeroizing<String>,
    /// Reads only (monitoring, `/metrics`).
    pub read: Zeroizing<String>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tokens { .. }")
    }
}

/// What a request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Everything (the admin token, or a browser session).
    Admin,
    /// Reads only (the read-only token).
    Read,
}

fn random_hex(bytes: usize) -> Zeroizing<String> {
    let mut b = Zeroizing::new(vec![0u8; bytes]);
    rand::rngs::OsRng.fill_bytes(&mut b);
    Zeroizing::new(data_encoding::HEXLOWER.encode(&b))
}

fn new_tokens() -> Tokens {
    Tokens {
        admin: Zeroizing::new(format!("bba_{}", *random_hex(32))),
        read: Zeroizing::new(format!("bbr_{}", *random_hex(32))),
    }
}

/// Compares two secrets in time that depends on their lengths only.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token file of a data dir.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TOKEN_FILE)
}

fn parse(path: &Path, text: &str) -> Result<Tokens, HttpError> {
    let bad = |why: &str| HttpError::TokenFile(path.to_path_buf(), why.to_string());
    let (mut admin, mut read) = (None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once(' ') {
            Some(("admin", t)) if t.trim().starts_with("bba_") => {
                admin = Some(Zeroizing::new(t.trim().to_string()));
            }
            Some(("read", t)) if t.trim().starts_with("bbr_") => {
                read = Some(Zeroizing::new(t.trim().to_string()));
            }
            _ => return Err(bad("a line is neither `admin bba_...` nor `read bbr_...`")),
        }
    }
    match (admin, read) {
        (Some(admin), Some(read)) if admin.len() >= 36 && read.len() >= 36 => {
            Ok(Tokens { admin, read })
        }
        _ => Err(bad("it must hold an `admin` and a `read` token")),
    }
}

fn write(path: &Path, t: &Tokens) -> Result<(), HttpError> {
    let io = |e: std::io::Error| HttpError::TokenFile(path.to_path_buf(), e.to_string());
    let tmp = path.with_extension("token.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    let text = Zeroizing::new(format!(
        "# bbsync admin HTTP API tokens (`bbsync http token [--rotate]`); keep this file private.\nadmin {}\nread {}\n",
        *t.admin, *t.read
    ));
    f.write_all(text.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(())
}

/// The tokens of a data dir, created on first use. A token file that other
/// users can read, or that belongs to another user, is refused.
pub fn load_or_create(data_dir: &Path) -> Result<Tokens, HttpError> {
    let path = token_path(data_dir);
    match std::fs::symlink_metadata(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let t = new_tokens();
            write(&path, &t)?;
            tracing::info!("created {}", path.display());
            return Ok(t);
        }
        Err(e) => return Err(HttpError::TokenFile(path, e.to_string())),
        Ok(m) => {
            if !m.file_type().is_file() {
                return Err(HttpError::TokenFile(path, "not a regular file".into()));
            }
            if m.uid() != rustix_uid() {
                return Err(HttpError::TokenFile(
                    path,
                    format!("it belongs to uid {}, not to this user", m.uid()),
                ));
            }
            if m.mode() & 0o077 != 0 {
                return Err(HttpError::TokenFile(
                    path,
                    format!(
                        "other users can read or write it (mode {:04o}); chmod 600 it",
                        m.mode() & 0o7777
                    ),
                ));
            }
        }
    }
    let text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| HttpError::TokenFile(path.clone(), e.to_string()))?,
    );
    parse(&path, &text)
}

fn rustix_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Replaces both tokens with new ones (the old ones stop working at once
/// in a running node, see [`super::reload_tokens`]).
pub fn rotate(data_dir: &Path) -> Result<Tokens, HttpError> {
    let t = new_tokens();
    write(&token_path(data_dir), &t)?;
    Ok(t)
}

/// A browser session.
struct Session {
    csrf: Zeroizing<String>,
    expires: Instant,
}

/// Login codes and sessions of a running server (in memory only: a
/// restart logs every browser out).
#[derive(Default)]
pub struct Sessions {
    codes: HashMap<String, Instant>,
    sessions: HashMap<String, Session>,
}

impl Sessions {
    /// A new one-time login code, valid for [`LOGIN_CODE_TTL`].
    pub fn new_code(&mut self) -> Zeroizing<String> {
        let now = Instant::now();
        self.codes.retain(|_, exp| *exp > now);
        while self.codes.len() >= MAX_LOGIN_CODES {
            let Some(oldest) = self
                .codes
                .iter()
                .min_by_key(|(_, e)| **e)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.codes.remove(&oldest);
        }
        let code = random_hex(24);
        self.codes.insert((*code).clone(), now + LOGIN_CODE_TTL);
        code
    }

    /// Uses up a login code; on success opens a session and returns its id.
    pub fn redeem(&mut self, code: &str) -> Option<Zeroizing<String>> {
        let now = Instant::now();
        let key = self
            .codes
            .keys()
            .find(|k| same_secret(k.as_bytes(), code.as_bytes()))
            .cloned()?;
        let exp = self.codes.remove(&key)?;
        if exp <= now {
            return None;
        }
        self.sessions.retain(|_, s| s.expires > now);
        while self.sessions.len() >= MAX_SESSIONS {
            let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.sessions.remove(&oldest);
        }
        let id = random_hex(32);
        self.sessions.insert(
            (*id).clone(),
            Session {
                csrf: random_hex(24),
                expires: now + SESSION_TTL,
            },
        );
        Some(id)
    }

    /// The CSRF token of a live session.
    pub fn csrf_of(&self, session: &str) -> Option<Zeroizing<String>> {
        let now = Instant::now();
        self.sessions
            .iter()
            .find(|(k, s)| s.expires > now && same_secret(k.as_bytes(), session.as_bytes()))
            .map(|(_, s)| s.csrf.clone())
    }

    /// Ends a session.
    pub fn end(&mut self, session: &str) {
        self.sessions
            .retain(|k, _| !same_secret(k.as_bytes(), session.as_bytes()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_code_works_once_and_opens_a_session_with_a_csrf_token() {
        let mut s = Sessions::default();
        let code = s.new_code();
        assert!(s.redeem("not-a-code").is_none());
        let id = s.redeem(&code).expect("the code works");
        assert!(s.redeem(&code).is_none(), "a code works once");
        let csrf = s.csrf_of(&id).expect("a live session");
        assert_eq!(csrf.len(), 48);
        assert!(s.csrf_of("forged").is_none());
        s.end(&id);
        assert!(s.csrf_of(&id).is_none());
    }

    #[test]
    fn tokens_are_created_private_and_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = load_or_create(dir.path()).expect("created");
        let again = load_or_create(dir.path()).expect("read back");
        assert_eq!(*t.admin, *again.admin);
        assert_eq!(*t.read, *again.read);
        assert!(t.admin.starts_with("bba_") && t.read.starts_with("bbr_"));
        let r = rotate(dir.path()).expect("rotated");
        assert_ne!(*r.admin, *t.admin);
        std::fs::write(token_path(dir.path()), "admin x\n").expect("write");
        let e = load_or_create(dir.path()).expect_err("a broken file");
        assert!(e.to_string().contains("http.token"), "{e}");
        assert!(
            same_secret(b"abc", b"abc")
                && !same_secret(b"abc", b"abd")
                && !same_secret(b"ab", b"abc")
        );
    }
}
