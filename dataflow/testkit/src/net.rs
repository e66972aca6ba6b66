//! Loopback ports for the processes of a multi-process job.

use std::net::{IpAddr, TcpListener};
use std::path::Path;

/// A free port on `ip` (released again; the job binds it a moment later).
pub fn free_port(ip: &str) -> u16 {
    let ip: IpAddr = ip.parse().unwrap();
    TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a timely hostfile at `path`: one line `<ip>:<free port>` for each process's `ip`.
pub fn write_hostfile(path: &Path, ips: &[&str]) {
    let hosts: String = ips
        .iter()
        .map(|ip| format!("{ip}:{}\n", free_port(ip)))
        .collect();
    std::fs::write(path, hosts).unwrap();
}
