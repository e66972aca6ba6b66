//! The integration tests' kit, shared by the tests of `ingest`, `dataflow` and `cluster` (its
//! only users, as a dev-dependency): they run the real release binaries against the real broker
//! of `scripts/kafka`, and this crate holds what they need for it, once.
//!
//! - [`broker`]: the broker's address, names no other run uses, topics made, published to with
//!   `ingest`, read back (every partition, `read_committed` or not) and deleted, `scripts/kafka`
//!   and what it keeps on disk (secured listeners' client settings, the broker's data, the Kafka
//!   jars);
//! - [`places`]: the shared test data (and its rows typed as `ingest` types them) and the
//!   workspace's built binaries (found next to the running test executable, whichever package
//!   it belongs to);
//! - [`process`]: running a command for an expected exit status, or with a time limit that
//!   kills its whole process group, waiting for a child;
//! - [`dirty`]: topics of generated sales with bad messages of every dead-letter reason and
//!   lines out of order mixed in;
//! - [`files`]: a run's output folder (listing, byte-for-byte comparison, `summary.json`, JSON
//!   lines) and waiting for a file to contain a text;
//! - [`oracle`]: what a run's outputs must be, computed from the topic by README's
//!   definitions alone (validation, money, watermarks, retention, alerts, partitioner);
//! - [`net`]: free loopback ports and the hostfiles of multi-process jobs;
//! - [`postgres`]: `scripts/postgres`, the shared test database and servers of a test's own;
//! - [`http`]: GETs to `--http` servers and their `/metrics` checked and parsed by real
//!   Prometheus parsers.
//!
//! Everything is re-exported at the root: a suite's `tests/common/mod.rs` says
//! `pub use retail_testkit::*;` and adds only what is its own.

pub mod broker;
pub mod dirty;
pub mod files;
pub mod http;
pub mod net;
pub mod oracle;
pub mod places;
pub mod postgres;
pub mod process;

pub use broker::*;
pub use dirty::*;
pub use files::*;
pub use http::*;
pub use net::*;
pub use oracle::*;
pub use places::*;
pub use postgres::*;
pub use process::*;
