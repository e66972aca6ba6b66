//! Loopback ports for the processes of a multi-process job.

use std::net::{IpAddr, TcpListener};
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// Ports handed out so far by this test binary.
static HANDED_OUT: AtomicU32 = AtomicU32::new(0);

/// A free port on `ip` for a job to bind a moment later. It comes from below Linux's
/// ephemeral range (32768 and up), from a block of this test binary's own (by its process
/// id), so that no client connection the kernel numbers meanwhile (Kafka's, HTTP's) and no
/// other test of this binary can take it between this check and the job's bind.
pub fn free_port(ip: &str) -> u16 {
    let ip: IpAddr = ip.parse().unwrap();
    let block = 20_000 + (std::process::id() % 190) * 64;
    for _ in 0..64 {
        let n = HANDED_OUT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(block + n % 64).expect("a port below 32768");
        if TcpListener::bind((ip, port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {block}..{} on {ip}", block + 64);
}

/// Writes a timely hostfile at `path`: one line `<ip>:<free port>` for each process's `ip`.
pub fn write_hostfile(path: &Path, ips: &[&str]) {
    let hosts: String = ips
        .iter()
        .map(|ip| format!("{ip}:{}\n", free_port(ip)))
        .collect();
    std::fs::write(path, hosts).unwrap();
}
