//! Progress of long commands on stderr: an indicatif bar on a terminal,
//! plain lines with the time left otherwise (a log file, CI), so that a
//! long `eval` is never silent.

use std::cell::Cell;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Progress over a known number of items.
pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    len: u64,
    pos: Cell<u64>,
    start: Instant,
    /// When the last plain line was printed.
    last: Cell<Instant>,
}

/// A plain line at most this often.
const PLAIN_EVERY: Duration = Duration::from_secs(10);

/// A bar over `len` items, or plain lines when stderr is not a terminal.
pub fn bar(len: u64, what: &str) -> Progress {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let bar = terminal.then(|| {
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    });
    let now = Instant::now();
    Progress {
        bar,
        what: what.to_string(),
        len,
        pos: Cell::new(0),
        start: now,
        last: Cell::new(now),
    }
}

impl Progress {
    /// `n` more items done.
    pub fn inc(&self, n: u64) {
        self.set_position(self.pos.get() + n);
    }

    /// `pos` items done in all.
    pub fn set_position(&self, pos: u64) {
        self.pos.set(pos);
        if let Some(bar) = &self.bar {
            bar.set_position(pos);
            return;
        }
        if self.last.get().elapsed() >= PLAIN_EVERY && pos < self.len {
            self.last.set(Instant::now());
            eprintln!("{}", self.plain_line());
        }
    }

    /// `what: pos/len (p%), about T left`.
    fn plain_line(&self) -> String {
        let pos = self.pos.get();
        let secs = self.start.elapsed().as_secs_f64();
        let left = if pos > 0 {
            secs / pos as f64 * self.len.saturating_sub(pos) as f64
        } else {
            0.0
        };
        format!(
            "{}: {pos}/{} ({:.0}%), about {:.0} s left",
            self.what,
            self.len,
            100.0 * pos as f64 / self.len.max(1) as f64,
            left
        )
    }

    /// Removes the bar (the command then prints its result).
    pub fn finish_and_clear(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn plain_lines_count_and_estimate() {
        let p = super::bar(200, "evaluating");
        p.inc(50);
        let line = p.plain_line();
        assert!(
            line.starts_with("evaluating: 50/200 (25%), about "),
            "{line}"
        );
    }
}
