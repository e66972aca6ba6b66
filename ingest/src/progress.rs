//! Progress on stderr: an indicatif bar when stderr is a terminal (bytes of the file, or
//! records for `--generate`), otherwise a plain line every two seconds, which reads well in
//! CI logs and `docker logs`.
//!
//! The run loop calls [`Progress::update`] for every record; it looks at the clock only every
//! `Progress::check_every` calls, so the hot path pays an integer increment.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use indicatif::{HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How often the plain form prints.
const PLAIN_INTERVAL: Duration = Duration::from_secs(2);
/// How often the bar is redrawn.
const BAR_INTERVAL: Duration = Duration::from_millis(100);

/// What the bar measures.
#[derive(Clone, Copy, Debug)]
pub enum Unit {
    /// Bytes of input, out of a total when the size is known.
    Bytes(Option<u64>),
    /// Records, out of a total.
    Records(u64),
}

/// The counters shown.
#[derive(Clone, Copy, Debug, Default)]
pub struct Snapshot {
    /// Bytes of input or records, as [`Unit`] says.
    pub position: u64,
    pub read: u64,
    pub published: u64,
    pub rejected: u64,
}

enum Display {
    Bar(ProgressBar),
    Plain,
}

/// Progress reporting for one run.
pub struct Progress {
    display: Display,
    started: Instant,
    next_report: Instant,
    calls: u64,
    /// Look at the clock once per this many updates (1 when records are paced).
    check_every: u64,
}

impl Progress {
    /// A bar if stderr is a terminal, plain lines otherwise.
    pub fn new(unit: Unit, paced: bool) -> Progress {
        let display = if std::io::stderr().is_terminal() {
            Display::Bar(bar(unit))
        } else {
            Display::Plain
        };
        let started = Instant::now();
        Progress {
            next_report: started + interval(&display),
            display,
            started,
            calls: 0,
            check_every: if paced { 1 } else { 256 },
        }
    }

    /// Reports if it is time; `snapshot` is only called then.
    pub fn update(&mut self, snapshot: impl FnOnce() -> Snapshot) {
        self.calls += 1;
        if !self.calls.is_multiple_of(self.check_every) {
            return;
        }
        let now = Instant::now();
        if now < self.next_report {
            return;
        }
        self.next_report = now + interval(&self.display);
        let s = snapshot();
        match &self.display {
            Display::Bar(bar) => {
                bar.set_message(format!(
                    "published {}  rejected {}",
                    HumanCount(s.published),
                    HumanCount(s.rejected)
                ));
                bar.set_position(s.position);
            }
            Display::Plain => {
                let seconds = now.duration_since(self.started).as_secs_f64();
                let rate = s.published as f64 / seconds.max(1e-9);
                // A failed write to stderr is not worth stopping for.
                let _ = writeln!(
                    std::io::stderr(),
                    "ingest: {:.0}s read {} published {} rejected {} ({:.0} records/s)",
                    seconds,
                    s.read,
                    s.published,
                    s.rejected,
                    rate
                );
            }
        }
    }

    /// Removes the bar (the summary follows).
    pub fn finish(&self) {
        if let Display::Bar(bar) = &self.display {
            bar.finish_and_clear();
        }
    }
}

fn interval(display: &Display) -> Duration {
    match display {
        Display::Bar(_) => BAR_INTERVAL,
        Display::Plain => PLAIN_INTERVAL,
    }
}

fn bar(unit: Unit) -> ProgressBar {
    let (length, template) = match unit {
        Unit::Bytes(Some(total)) => (
            Some(total),
            "{elapsed_precise} [{wide_bar}] {bytes}/{total_bytes} ({bytes_per_sec}, eta {eta}) {msg}",
        ),
        Unit::Bytes(None) => (
            None,
            "{spinner} {elapsed_precise} {bytes} ({bytes_per_sec}) {msg}",
        ),
        Unit::Records(total) => (
            Some(total),
            "{elapsed_precise} [{wide_bar}] {human_pos}/{human_len} ({rate}, eta {eta}) {msg}",
        ),
    };
    let bar = ProgressBar::with_draw_target(length, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(template)
            .expect("valid progress template")
            // indicatif's {per_sec} prints four decimals; records per second need none.
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{}/s", HumanCount(state.per_sec() as u64));
                },
            )
            .progress_chars("=> "),
    );
    bar
}
