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
