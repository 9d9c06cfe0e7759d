//! Progress lines for pulls and conversions: one line on stderr, redrawn in
//! place at most ten times a second, only when stderr is a terminal and
//! `-q/--quiet` was not given. Nothing is written otherwise, so logs and
//! pipes see only husk's final message.

use std::io::{IsTerminal, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static QUIET: AtomicBool = AtomicBool::new(false);

/// Called once from `main` for `-q/--quiet`.
pub fn set_quiet(q: bool) {
    QUIET.store(q, Ordering::Relaxed);
}

pub fn enabled() -> bool {
    !QUIET.load(Ordering::Relaxed) && std::io::stderr().is_terminal()
}

/// One task's progress: a label, bytes done and (if known) the total.
pub struct Progress {
    on: bool,
    label: String,
    total: Option<u64>,
    done: u64,
    start: Instant,
    last: Option<Instant>,
}

fn human(n: u64) -> String {
    const MIB: f64 = 1024.0 * 1024.0;
    if n < 1024 * 1024 {
        format!("{:.0} KiB", n as f64 / 1024.0)
    } else {
        format!("{:.1} MiB", n as f64 / MIB)
    }
}

impl Progress {
    pub fn new(label: impl Into<String>, total: Option<u64>) -> Progress {
        let mut p = Progress {
            on: enabled(),
            label: label.into(),
            total,
            done: 0,
            start: Instant::now(),
            last: None,
        };
        p.draw(false);
        p
    }

    pub fn add(&mut self, n: u64) {
        self.done += n;
        self.draw(false);
    }

    /// The line as it is drawn (without the carriage return).
    fn line(&self) -> String {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.05 {
            format!("  {}/s", human((self.done as f64 / secs) as u64))
        } else {
            String::new()
        };
        match self.total {
            Some(t) if t > 0 => {
                let frac = (self.done as f64 / t as f64).min(1.0);
                let width = 24;
                let filled = (frac * width as f64) as usize;
                format!(
                    "{}  [{}{}] {:>3.0}%  {} / {}{}",
                    self.label,
                    "#".repeat(filled),
                    " ".repeat(width - filled),
                    frac * 100.0,
                    human(self.done),
                    human(t),
                    rate
                )
            }
            _ => format!("{}  {}{}", self.label, human(self.done), rate),
        }
    }

    fn draw(&mut self, last: bool) {
        if !self.on {
            return;
        }
        let now = Instant::now();
        if !last && self.last.is_some_and(|t| now - t < Duration::from_millis(100)) {
            return;
        }
        self.last = Some(now);
        let mut err = std::io::stderr().lock();
        // \x1b[K clears what a longer earlier line left behind.
        let _ = write!(err, "\r{}\x1b[K{}", self.line(), if last { "\n" } else { "" });
        let _ = err.flush();
    }

    /// Draw the final state and end the line.
    pub fn finish(mut self) {
        self.draw(true);
        self.on = false;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        // Abandoned (an error): end the line so the error starts on its own.
        if self.on && self.last.is_some() {
            let _ = writeln!(std::io::stderr());
        }
    }
}

/// A reader that reports the bytes it passes on.
pub struct Counting<'a, R> {
    pub inner: R,
    pub progress: &'a mut Progress,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.progress.add(n as u64);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_fraction_and_sizes() {
        let mut p = Progress::new("layer 1/2", Some(4 << 20));
        p.on = false;
        p.add(1 << 20);
        let l = p.line();
        assert!(
            l.starts_with("layer 1/2  [######                  ]  25%  1.0 MiB / 4.0 MiB"),
            "{l}"
        );
        let mut q = Progress::new("x", None);
        q.add(2048);
        assert!(q.line().starts_with("x  2 KiB"), "{}", q.line());
    }

    #[test]
    fn counting_reader_counts() {
        let mut p = Progress::new("x", None);
        let mut r = Counting { inner: &b"hello"[..], progress: &mut p };
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(p.done, 5);
    }
}
