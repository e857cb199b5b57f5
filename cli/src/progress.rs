//! indicatif progress bars behind the library's `Progress` trait.

use bbsync_store::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar on stderr, drawn only when stderr is a terminal.
pub struct Bar {
    bar: ProgressBar,
    by_items: std::sync::atomic::AtomicBool,
}

impl Bar {
    /// A bar that draws only if `enabled` and stderr is a TTY.
    pub fn new(enabled: bool) -> Self {
        let target = if enabled {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        Bar {
            bar: ProgressBar::with_draw_target(None, target),
            by_items: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, items: u64, bytes: u64) {
        self.bar.reset();
        // A phase with a byte total counts bytes; one with only an item
        // total (e.g. the objects of a clone) counts items.
        let by_items = bytes == 0 && items > 0;
        self.by_items
            .store(by_items, std::sync::atomic::Ordering::Relaxed);
        self.bar.set_length(if by_items { items } else { bytes });
        self.bar.set_message(phase.to_string());
        let template = if by_items {
            "{msg:>8} [{bar:30}] {human_pos}/{human_len} {per_sec} ETA {eta}"
        } else {
            "{msg:>8} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    fn advance(&self, items: u64, bytes: u64) {
        if self.by_items.load(std::sync::atomic::Ordering::Relaxed) {
            self.bar.inc(items);
        } else {
            self.bar.inc(bytes);
        }
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
