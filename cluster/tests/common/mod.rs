//! What only `cluster`'s integration tests need, on top of the workspace's test kit: the
//! `cluster` command with a clean environment and a stand-in for `ssh`.

#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::process::Command;

pub use retail_testkit::*;

/// The `cluster` command with a clean environment for its own flags.
pub fn cluster() -> Command {
    let mut command = Command::new(binary("cluster"));
    command.env("KAFKA_BOOTSTRAP_SERVERS", bootstrap());
    for var in [
        "CLUSTER_PROCESSES",
        "CLUSTER_WORKERS",
        "CLUSTER_HOSTFILE",
        "CLUSTER_MAX_RESTARTS",
        "CLUSTER_BACKOFF",
        "CLUSTER_BACKOFF_MAX",
        "CLUSTER_GRACE",
        "CLUSTER_SSH_BIN",
        "CLUSTER_PID_DIR",
        "DATAFLOW_BIN",
        "DATAFLOW_TOPIC",
        "DATAFLOW_OUTPUT_DIR",
    ] {
        command.env_remove(var);
    }
    command
}

/// A stand-in for `ssh`: skips its options and the host up to `--` and runs the remote
/// command line with a local shell, as the remote one would.
pub fn fake_ssh(dir: &Path) -> PathBuf {
    script(
        dir,
        "fake-ssh",
        r#"echo "$*" >> "$(dirname "$0")/ssh.log"
while [ "$1" != "--" ]; do shift; done
shift
exec sh -c "$1""#,
    )
}
pub mod netns;
