//! Text and JSON output helpers, and where output goes: this process's
//! stdout/stderr, or the client of the control socket when the command runs
//! inside `serve` (frames of [`crate::frame`]).

use std::{
    io::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use indicatif::HumanBytes;
use serde::Serialize;

/// How many problems or failures text output lists before summarizing the rest.
pub const MAX_LISTED: usize = 20;

/// Where one output stream of a command goes.
#[derive(Clone)]
pub enum Sink {
    /// This process's stdout.
    Stdout,
    /// This process's stderr.
    Stderr,
    /// A frame stream to a control-socket client (`tag` says which stream).
    Remote(Arc<Mutex<crate::frame::FrameWriter>>, u8),
}

/// A string from outside this process (an object name, a snapshot
/// description, a peer's instance name) made safe to print: every control
/// or invisible formatting character, newlines included, written as
/// `\u{XXXX}` (see `bbsync_protocol::text`).
pub fn clean(s: &str) -> std::borrow::Cow<'_, str> {
    bbsync_protocol::text::escape_hidden(s)
}

/// A line of text output with every control or formatting character
/// escaped except the line breaks the text means to have (clap's help is
/// several lines). Terminal escapes, carriage returns and bidi overrides
/// that reached a message through a name cannot act on the terminal.
fn escape_lines(s: &str) -> std::borrow::Cow<'_, str> {
    if !s
        .chars()
        .any(|c| c != '\n' && bbsync_protocol::text::is_hidden(c))
    {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.split('\n')
            .map(|l| bbsync_protocol::text::escape_hidden(l).into_owned())
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

/// JSON text with every control or formatting character that serde_json
/// leaves raw (DEL, the C1 range, bidi overrides, ...) written as a
/// `\uXXXX` escape (a surrogate pair above U+FFFF): the same JSON value,
/// safe on a terminal. Such characters only occur inside JSON strings.
pub fn escape_json(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| c != '\n' && bbsync_protocol::text::is_hidden(c);
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        if hidden(c) {
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{:04x}", u));
            }
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

impl Sink {
    /// Writes one line of text, its control and formatting characters
    /// escaped (see [`escape_lines`]). A client that went away does not
    /// stop the command: its output is dropped.
    pub fn line(&self, s: &str) {
        self.raw(&escape_lines(s));
    }

    /// Writes one line as it is (already made safe by the caller).
    fn raw(&self, s: &str) {
        match self {
            Sink::Stdout => {
                let mut o = std::io::stdout().lock();
                let _ = writeln!(o, "{s}");
            }
            Sink::Stderr => eprintln!("{s}"),
            Sink::Remote(w, tag) => {
                let mut w = w.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let mut bytes = s.as_bytes().to_vec();
                bytes.push(b'\n');
                let _ = w.frame(*tag, &bytes);
            }
        }
    }
}

impl Sink {
    /// Writes raw bytes (a dump to stdout). Unlike [`Sink::line`], a failed
    /// write is an error: the output is the command's result.
    pub fn bytes(&self, b: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout => std::io::stdout().lock().write_all(b),
            Sink::Stderr => std::io::stderr().lock().write_all(b),
            Sink::Remote(w, tag) => w
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .frame(*tag, b),
        }
    }
}

/// `println!` to the command's stdout sink.
macro_rules! outln {
    ($ctx:expr, $($arg:tt)*) => { $ctx.out.line(&format!($($arg)*)) };
}

/// `eprintln!` to the command's stderr sink.
macro_rules! errln {
    ($ctx:expr, $($arg:tt)*) => { $ctx.err.line(&format!($($arg)*)) };
}

/// Prints `value` as pretty JSON on the command's stdout (see
/// [`escape_json`]).
pub fn json<T: Serialize>(ctx: &crate::Ctx, value: &T) -> anyhow::Result<()> {
    ctx.out
        .raw(&escape_json(&serde_json::to_string_pretty(value)?));
    Ok(())
}

/// `12.3 MB/s` for `bytes` in `elapsed`.
pub fn rate(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-6);
    format!("{:.1} MB/s", bytes as f64 / secs / 1e6)
}

/// Human size.
pub fn size(bytes: u64) -> String {
    HumanBytes(bytes).to_string()
}

/// Seconds with two decimals.
pub fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// The line under a problem list capped at [`MAX_LISTED`], if it was.
pub fn more_listed(ctx: &crate::Ctx, total: usize) {
    if total > MAX_LISTED {
        outln!(
            ctx,
            "... and {} more problem(s) (--json lists them all)",
            total - MAX_LISTED
        );
    }
}

/// What a check did: `N read in T (R)` when it read the data, else
/// `checked in T`.
pub fn checked(read_data: bool, bytes_read: u64, elapsed: Duration) -> String {
    if read_data {
        format!(
            "{} read in {} ({})",
            size(bytes_read),
            secs(elapsed),
            rate(bytes_read, elapsed)
        )
    } else {
        format!("checked in {}", secs(elapsed))
    }
}

/// A check's verdict: `OK`, or `N problem(s): <counts>`.
pub fn verdict(problems: usize, counts: &[String]) -> String {
    if problems == 0 {
        "OK".to_string()
    } else {
        format!("{problems} problem(s): {}", counts.join(", "))
    }
}
