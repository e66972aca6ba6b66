//! The console sink: a compact table per micro-batch on stdout, like Spark's console sink.
//!
//! It is a view for people, not an exact record: use the JSON-lines files or the Kafka topic
//! to consume results. A closed stdout (`dataflow ... | head`) silently turns it off.
//!
//! `--progress` adds a line on stderr every interval, from a thread of its own.

use std::io::{self, IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Batch;
use crate::aggregate::Output;
use crate::metrics::Metrics;
use crate::source::every;

/// Formats thousandths as a decimal with thousands separators: `1234567` -> `1,234.567`.
pub fn money(milli: i64) -> String {
    let sign = if milli < 0 { "-" } else { "" };
    let abs = milli.unsigned_abs();
    format!("{sign}{}.{:03}", group(abs / 1000), abs % 1000)
}

/// An integer with thousands separators.
pub fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn signed(n: i64) -> String {
    let s = group(n.unsigned_abs());
    if n < 0 { format!("-{s}") } else { s }
}

pub struct ConsoleSink {
    out: io::Stdout,
    batches: u64,
    /// Most countries to list per batch.
    max_rows: usize,
}

impl ConsoleSink {
    pub fn new() -> ConsoleSink {
        ConsoleSink {
            out: io::stdout(),
            batches: 0,
            max_rows: 8,
        }
    }

    fn render(&mut self, batch: &Batch) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let rule = "-".repeat(72);
        let _ = writeln!(
            s,
            "{rule}\nBatch {}: epoch {}\n{rule}",
            self.batches, batch.label
        );
        for (o, diff) in &batch.updates {
            if let (Output::Epoch(_, sums, top), 1) = (o, diff) {
                let _ = writeln!(
                    s,
                    "this epoch: {} lines, {} units, revenue {}, {} invoices, {} late",
                    signed(sums.lines),
                    signed(sums.units),
                    money(sums.revenue_milli),
                    signed(sums.invoices),
                    signed(sums.late_lines)
                );
                let names: Vec<String> = top
                    .iter()
                    .map(|(p, r)| match batch.names.get(p) {
                        Some(name) => format!("{p} {name} {}", money(*r)),
                        None => format!("{p} {}", money(*r)),
                    })
                    .collect();
                let _ = writeln!(s, "selling now: {}", names.join(" | "));
            }
        }
        let mut countries: Vec<_> = batch
            .updates
            .iter()
            .filter_map(|(o, d)| match (o, d) {
                (Output::Country(c, sums), 1) => Some((c, sums)),
                _ => None,
            })
            .collect();
        countries.sort_by(|a, b| b.1.revenue_milli.cmp(&a.1.revenue_milli).then(a.0.cmp(b.0)));
        if !countries.is_empty() {
            let _ = writeln!(s, "+{:-<24}+{:->12}+{:->14}+{:->18}+", "", "", "", "");
            let _ = writeln!(
                s,
                "|{:<24}|{:>12}|{:>14}|{:>18}|",
                "country", "lines", "units", "revenue"
            );
            let _ = writeln!(s, "+{:-<24}+{:->12}+{:->14}+{:->18}+", "", "", "", "");
            for (c, sums) in countries.iter().take(self.max_rows) {
                let name: String = c.chars().take(24).collect();
                let _ = writeln!(
                    s,
                    "|{name:<24}|{:>12}|{:>14}|{:>18}|",
                    signed(sums.lines),
                    signed(sums.units),
                    money(sums.revenue_milli)
                );
            }
            let _ = writeln!(s, "+{:-<24}+{:->12}+{:->14}+{:->18}+", "", "", "", "");
            if countries.len() > self.max_rows {
                let _ = writeln!(
                    s,
                    "({} more countries changed)",
                    countries.len() - self.max_rows
                );
            }
        }
        let alerts_added = batch
            .updates
            .iter()
            .filter(|(o, d)| matches!(o, Output::Alert(_)) && *d > 0)
            .count();
        // As of this batch's own epoch, which is what the files hold after it: a commit
        // writes several epochs, and the writer's state is already past the earlier ones.
        let t = &batch.totals;
        let _ = writeln!(
            s,
            "totals: {} lines, revenue {}, {} invoices, {} customers, {} cancellation lines; alerts +{} (now {}); dead letters +{}",
            signed(t.lines),
            money(t.revenue_milli),
            signed(t.invoices),
            signed(t.customers),
            signed(t.cancellation_lines),
            alerts_added,
            batch.alerts_open,
            batch.dead.len()
        );
        s
    }
}

impl Default for ConsoleSink {
    fn default() -> Self {
        ConsoleSink::new()
    }
}

impl ConsoleSink {
    /// Prints a closed epoch's table.
    pub fn write(&mut self, batch: &Batch) -> io::Result<()> {
        let text = self.render(batch);
        self.batches += 1;
        let mut out = self.out.lock();
        out.write_all(text.as_bytes())?;
        out.flush()
    }

    /// Flushes after the last epoch.
    pub fn finish(&mut self) -> io::Result<()> {
        self.out.lock().flush()
    }
}

/// Starts a thread that prints a progress line to stderr every `period` until `done`.
pub fn spawn_progress(
    metrics: &Arc<Metrics>,
    done: &Arc<AtomicBool>,
    period: Duration,
    started: Instant,
) -> JoinHandle<()> {
    let (metrics, done) = (Arc::clone(metrics), Arc::clone(done));
    std::thread::spawn(move || progress(&metrics, &done, period, started))
}

/// The thread of [`spawn_progress`].
fn progress(metrics: &Metrics, done: &AtomicBool, period: Duration, started: Instant) {
    let terminal = std::io::stderr().is_terminal();
    let mut last = (Instant::now(), 0u64);
    every(period, done, || {
        let messages = metrics.messages.load(Ordering::Relaxed);
        let now = Instant::now();
        let rate = (messages - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, messages);
        let line = format!(
            "[{:>6.1}s] {} records in ({}/s), {} late, {} dead letters, lag {}",
            started.elapsed().as_secs_f64(),
            group(messages),
            group(rate as u64),
            group(metrics.late.load(Ordering::Relaxed)),
            group(metrics.dead.load(Ordering::Relaxed)),
            group(metrics.lag.load(Ordering::Relaxed).max(0) as u64),
        );
        let mut err = std::io::stderr().lock();
        let _ = if terminal {
            writeln!(err, "\x1b[2m{line}\x1b[0m")
        } else {
            writeln!(err, "{line}")
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_and_grouping() {
        assert_eq!(money(1_234_567), "1,234.567");
        assert_eq!(money(-11_062_060), "-11,062.060");
        assert_eq!(money(5), "0.005");
        assert_eq!(group(0), "0");
        assert_eq!(group(1_000), "1,000");
        assert_eq!(group(999), "999");
        assert_eq!(signed(-1_000_000), "-1,000,000");
    }
}
