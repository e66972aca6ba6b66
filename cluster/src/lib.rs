//! `cluster`: starts a timely `dataflow` job as N processes (locally, or printed / started over
//! ssh for other hosts), prefixes each process's output with `[p<i>]`, forwards interrupts, and
//! when one process dies stops the others and restarts the whole job with exponential backoff.
//!
//! The dataflow binary owns timely's flags; this crate only decides `-n/-p/-w/-h`, writes the
//! hostfile and supervises processes (see the workspace STYLE.md, "Let timely own -w/-n/-p/-h").
//!
//! Layout:
//! - [`cli`]: the flags and their validation into a [`cli::Config`].
//! - [`hostfile`]: `host:port` lines, loopback detection, free-port picking.
//! - [`command`]: each process's command line, ssh wrapping, shell quoting.
//! - [`backoff`]: restart delays and the duration syntax.
//! - [`probe`]: heartbeat probes that tell a frozen or cut-off process from a quiet one.
//! - [`supervise`]: spawning, interrupts, stop-all and restart-all.
//! - `output`: each process's output with its `[p<i>]` prefix, and the last lines it wrote.

pub mod backoff;
pub mod cli;
pub mod command;
pub mod hostfile;
mod output;
pub mod probe;
pub mod supervise;

pub use cli::{Args, Config};
pub use supervise::{Outcome, Shutdown, run};
