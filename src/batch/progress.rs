//! Progress of a batch run on standard error: a bar redrawn in place with `\r` on a terminal,
//! or a plain line now and then when the output is a file or a pipe.

use std::io::Write;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// A bar redrawn in place at most ten times a second.
    Bar,
    /// One line per `every`.
    Lines {
        every: Duration,
    },
    Off,
}

/// Tracks rows and bytes and draws them.
pub struct Progress<W: Write> {
    out: W,
    style: Style,
    /// Bytes of input in all, when known (files); the ETA comes from the share of them read.
    total_bytes: Option<u64>,
    start: Instant,
    last_draw: Option<Instant>,
    /// Rows and skipped rows at the last draw, so that a line is not printed twice.
    last_counts: Option<(u64, u64)>,
    drawn_width: usize,
}

const BAR_WIDTH: usize = 24;

impl<W: Write> Progress<W> {
    pub fn new(out: W, style: Style, total_bytes: Option<u64>) -> Self {
        Self {
            out,
            style,
            total_bytes: total_bytes.filter(|&b| b > 0),
            start: Instant::now(),
            last_draw: None,
            last_counts: None,
            drawn_width: 0,
        }
    }

    /// Records progress; draws when it is time to.
    pub fn update(&mut self, rows: u64, skipped: u64, bytes: u64) {
        let now = Instant::now();
        let due = match (self.style, self.last_draw) {
            (Style::Off, _) => false,
            (_, None) => true,
            (Style::Bar, Some(last)) => now - last >= Duration::from_millis(100),
            (Style::Lines { every }, Some(last)) => now - last >= every,
        };
        if due {
            self.draw(rows, skipped, bytes, now);
            self.last_draw = Some(now);
        }
    }

    /// Draws the final state and ends the bar's line.
    pub fn finish(&mut self, rows: u64, skipped: u64, bytes: u64) {
        let repeat = self.last_counts == Some((rows, skipped));
        match self.style {
            Style::Off => return,
            Style::Lines { .. } if repeat => return,
            _ => {}
        }
        self.draw(rows, skipped, bytes, Instant::now());
        if self.style == Style::Bar {
            let _ = writeln!(self.out);
        }
        let _ = self.out.flush();
    }

    fn draw(&mut self, rows: u64, skipped: u64, bytes: u64, now: Instant) {
        self.last_counts = Some((rows, skipped));
        let line = self.line(rows, skipped, bytes, now.duration_since(self.start));
        let _ = match self.style {
            Style::Bar => {
                // Pad over what the previous, longer, draw left behind.
                let pad = self.drawn_width.saturating_sub(line.chars().count());
                self.drawn_width = line.chars().count();
                write!(self.out, "\r{line}{}", " ".repeat(pad))
            }
            Style::Lines { .. } => writeln!(self.out, "triage batch: {line}"),
            Style::Off => Ok(()),
        };
        let _ = self.out.flush();
    }

    /// The text of one draw: bar (when the size is known), rows, rate and ETA.
    pub fn line(&self, rows: u64, skipped: u64, bytes: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64();
        let rate = if secs > 0.0 { rows as f64 / secs } else { 0.0 };
        let mut s = String::new();
        let fraction = self
            .total_bytes
            .map(|t| (bytes as f64 / t as f64).clamp(0.0, 1.0));
        if let Some(f) = fraction {
            if self.style == Style::Bar {
                let filled = (f * BAR_WIDTH as f64).round() as usize;
                s.push('[');
                s.push_str(&"#".repeat(filled));
                s.push_str(&"-".repeat(BAR_WIDTH - filled));
                s.push_str("] ");
            }
            s.push_str(&format!("{:>3.0}%  ", f * 100.0));
        }
        s.push_str(&format!("{} rows", super::summary::thousands(rows)));
        if skipped > 0 {
            s.push_str(&format!(
                " ({} skipped)",
                super::summary::thousands(skipped)
            ));
        }
        s.push_str(&format!("  {rate:.0} rows/s"));
        match fraction {
            Some(f) if f > 0.0 && f < 1.0 && secs > 0.5 => {
                let eta = secs * (1.0 - f) / f;
                s.push_str(&format!("  ETA {}", clock(eta)));
            }
            Some(f) if f >= 1.0 => s.push_str(&format!("  done in {}", clock(secs))),
            _ => s.push_str(&format!("  {} elapsed", clock(secs))),
        }
        s
    }
}

/// Seconds as `m:ss` or `h:mm:ss`.
fn clock(secs: f64) -> String {
    let t = secs.max(0.0).round() as u64;
    let (h, m, s) = (t / 3600, (t / 60) % 60, t % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_shows_rows_rate_and_eta() {
        let p = Progress::new(Vec::new(), Style::Bar, Some(1000));
        let line = p.line(500, 2, 250, Duration::from_secs(10));
        assert!(
            line.starts_with("[######------------------]  25%"),
            "{line}"
        );
        assert!(line.contains("500 rows (2 skipped)"), "{line}");
        assert!(line.contains("50 rows/s"), "{line}");
        assert!(line.contains("ETA 0:30"), "{line}");
    }

    #[test]
    fn without_a_size_there_is_no_eta() {
        let p = Progress::new(
            Vec::new(),
            Style::Lines {
                every: Duration::ZERO,
            },
            None,
        );
        let line = p.line(1_500, 0, 99, Duration::from_secs(3));
        assert_eq!(line, "1,500 rows  500 rows/s  0:03 elapsed");
    }

    #[test]
    fn bar_redraws_in_place_and_lines_do_not() {
        let mut p = Progress::new(Vec::new(), Style::Bar, Some(10));
        p.update(1, 0, 5);
        p.finish(2, 0, 10);
        let text = String::from_utf8(p.out).unwrap();
        assert_eq!(text.matches('\r').count(), 2);
        assert!(text.ends_with('\n'));

        let mut p = Progress::new(
            Vec::new(),
            Style::Lines {
                every: Duration::ZERO,
            },
            Some(10),
        );
        p.update(1, 0, 5);
        p.finish(2, 0, 10);
        let text = String::from_utf8(p.out).unwrap();
        assert!(!text.contains('\r'));
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn clock_formats() {
        assert_eq!(clock(5.0), "0:05");
        assert_eq!(clock(3725.0), "1:02:05");
    }
}
