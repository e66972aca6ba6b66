//! The test PostgreSQL (`scripts/postgres up`): whether Debian's PostgreSQL is installed, the
//! shared server's URL, and servers of a test's own (their own data folder and port), which
//! a test may stop and start without disturbing the others.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::places::workspace_root;
use crate::process::{run_ok, text};

/// `scripts/postgres`.
pub fn scripts_postgres() -> PathBuf {
    workspace_root().join("scripts/postgres")
}

/// Whether PostgreSQL's binaries are installed (`/usr/lib/postgresql/*/bin`, or `PG_BIN`);
/// when not, says so on stderr: a test then skips with that message.
pub fn postgres_installed() -> bool {
    let found = std::env::var_os("PG_BIN").is_some()
        || std::fs::read_dir("/usr/lib/postgresql")
            .map(|dirs| {
                dirs.flatten()
                    .any(|d| d.path().join("bin/postgres").is_file())
            })
            .unwrap_or(false);
    if !found {
        eprintln!(
            "SKIPPED: PostgreSQL is not installed (no /usr/lib/postgresql/*/bin); \
             apt-get install postgresql (.ci/run does) to run this test"
        );
    }
    found
}

/// Runs `scripts/postgres ARGS` for the server whose data is in `cache` on `port` (`None`:
/// the shared one in `.cache/postgres`); returns its stdout.
pub fn postgres_script(cache: Option<(&Path, u16)>, args: &[&str]) -> String {
    let mut cmd = Command::new(scripts_postgres());
    cmd.args(args);
    if let Some((dir, port)) = cache {
        cmd.env("PG_CACHE_DIR", dir)
            .env("PG_PORT", port.to_string());
    }
    text(&run_ok(&mut cmd).stdout)
}

/// Starts the server (a no-op when it runs) and returns its connection URL.
pub fn postgres_up(cache: Option<(&Path, u16)>) -> String {
    let out = postgres_script(cache, &["up"]);
    let url = out.lines().last().unwrap_or_default().to_owned();
    assert!(
        url.starts_with("postgresql://"),
        "scripts/postgres up printed:\n{out}"
    );
    url
}

/// The CA file that signed the server's certificate.
pub fn postgres_ca(cache: Option<&Path>) -> PathBuf {
    cache
        .map(Path::to_owned)
        .unwrap_or_else(|| workspace_root().join(".cache/postgres"))
        .join("tls/ca.crt")
}
