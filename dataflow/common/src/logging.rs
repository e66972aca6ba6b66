//! Logging, set up once by each binary the same way: on stderr (stdout is for data), filtered
//! by `RUST_LOG` (default `info`), coloured only on a terminal.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber; `targets` shows each line's module (useful where several
/// modules log, as in dataflow).
pub fn init(targets: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(targets)
        .init();
}

/// `eprintln!` for a stderr that may be closed (`dataflow ... 2>&1 | head`): a failed write is
/// ignored, as a closed stdout is, where `eprintln!` would panic (exit status 101).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
