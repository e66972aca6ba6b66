//! Test hosts made of Linux network namespaces: each host has its own address from
//! 198.18.0.0/15 (the range reserved for network tests) on a bridge of this machine, and
//! reaches the local broker at the same `localhost:PORT` as the tests do, through two relays
//! (inside the namespace to the bridge, on the bridge to the broker), so that a host cut off
//! the network loses its Kafka connections too. Faults: SIGSTOP/SIGCONT, and dropping every
//! packet of the host's interface with iptables inside its namespace.
//!
//! Making namespaces needs root and `ip`, `iptables` and `socat`; [`unavailable`] says which
//! is missing, so that the tests skip with a reason elsewhere.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use retail_testkit::{bootstrap, script};

/// The bridge's own address, where the hosts reach the broker's relay.
const GATEWAY: &str = "198.18.0.1";
/// The relay's port on the bridge.
const RELAY_PORT: u16 = 19092;
const BRIDGE: &str = "rsbr0";

/// Why the namespace tests cannot run here, if they cannot.
pub fn unavailable() -> Option<String> {
    if !nix_is_root() {
        return Some("making network namespaces needs root".into());
    }
    let missing: Vec<&str> = ["ip", "iptables", "socat"]
        .into_iter()
        .filter(|tool| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {} (Debian: iproute2, iptables, socat)",
            missing.join(", ")
        )
    })
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

/// One test host: a namespace with one interface on the bridge.
pub struct Host {
    pub ns: String,
    pub ip: String,
    /// The interface inside the namespace.
    dev: String,
}

/// The hosts of one test, removed again when dropped. One set at a time (they share names and
/// the machine's two cores): [`Net::new`] holds a lock until then.
pub struct Net {
    pub hosts: Vec<Host>,
    relays: Vec<Child>,
    _one_at_a_time: MutexGuard<'static, ()>,
}

/// The port of the broker the tests use (`KAFKA_BOOTSTRAP_SERVERS`, default 9092).
fn broker_port() -> u16 {
    bootstrap()
        .split(',')
        .next()
        .and_then(|b| b.rsplit_once(':'))
        .map_or(9092, |(_, p)| {
            p.parse().expect("a port in KAFKA_BOOTSTRAP_SERVERS")
        })
}

fn sh(line: &str) {
    let status = Command::new("sh").args(["-c", line]).status().unwrap();
    assert!(status.success(), "`{line}` failed: {status}");
}

/// Removes the hosts, with whatever still runs in them (a failed test's processes, the relays'
/// forks), and what an earlier, interrupted test may have left.
fn clean(hosts: usize) {
    for i in 0..hosts.max(4) {
        let ns = format!("rsh{i}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !pids(&ns).is_empty() && Instant::now() < deadline {
            for pid in pids(&ns) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        quiet(&["netns", "del", &ns]);
        // Deleting one end of a veth pair deletes both.
        quiet(&["link", "del", &format!("rsv{i}")]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
    }
    quiet(&["link", "del", BRIDGE]);
}

/// `ip ARGS`, for what may not exist.
fn quiet(args: &[&str]) {
    let _ = Command::new("ip").args(args).stderr(Stdio::null()).status();
}

/// The processes in namespace `ns`.
fn pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

impl Net {
    /// `n` hosts `rsh0..` at 198.18.0.10, .11, ...
    pub fn new(n: usize) -> Net {
        static ONE: Mutex<()> = Mutex::new(());
        let guard = ONE.lock().unwrap_or_else(|e| e.into_inner());
        clean(n);
        sh(&format!(
            "ip link add {BRIDGE} type bridge && ip addr add {GATEWAY}/24 dev {BRIDGE} && \
             ip link set {BRIDGE} up"
        ));
        let broker_port = broker_port();
        let mut relays = vec![relay(
            None,
            &format!("TCP-LISTEN:{RELAY_PORT},bind={GATEWAY},fork,reuseaddr"),
            &format!("TCP:127.0.0.1:{broker_port}"),
        )];
        let mut hosts = Vec::new();
        for i in 0..n {
            let host = Host {
                ns: format!("rsh{i}"),
                ip: format!("198.18.0.{}", 10 + i),
                dev: format!("rsv{i}p"),
            };
            sh(&format!(
                "ip netns add {ns} && ip link add rsv{i} type veth peer name {dev} && \
                 ip link set {dev} netns {ns} && ip link set rsv{i} master {BRIDGE} && \
                 ip link set rsv{i} up && ip -n {ns} addr add {ip}/24 dev {dev} && \
                 ip -n {ns} link set {dev} up && ip -n {ns} link set lo up",
                ns = host.ns,
                dev = host.dev,
                ip = host.ip,
            ));
            relays.push(relay(
                Some(&host.ns),
                &format!("TCP-LISTEN:{broker_port},bind=127.0.0.1,fork,reuseaddr"),
                &format!("TCP:{GATEWAY}:{RELAY_PORT}"),
            ));
            hosts.push(host);
        }
        let net = Net {
            hosts,
            relays,
            _one_at_a_time: guard,
        };
        for i in 0..n {
            net.wait_for_broker(i);
        }
        net
    }

    /// Waits until host `i` reaches the broker through its relays.
    fn wait_for_broker(&self, i: usize) {
        let port = broker_port();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let ok = self
                .exec(i, "socat")
                .args(["-u", "OPEN:/dev/null", &format!("TCP:127.0.0.1:{port}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "host {i} does not reach the broker"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `program` run inside host `i`.
    pub fn exec(&self, i: usize, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.hosts[i].ns])
            .arg(program);
        command
    }

    /// Drops every packet in and out of host `i`'s interface.
    pub fn cut(&self, i: usize) {
        let h = &self.hosts[i];
        sh(&format!(
            "ip netns exec {ns} iptables -I INPUT -i {dev} -j DROP && \
             ip netns exec {ns} iptables -I OUTPUT -o {dev} -j DROP",
            ns = h.ns,
            dev = h.dev
        ));
    }

    /// Undoes [`cut`](Self::cut).
    pub fn heal(&self, i: usize) {
        sh(&format!("ip netns exec {} iptables -F", self.hosts[i].ns));
    }

    /// Gives every host an `/etc/hosts` (as `ip netns exec` mounts `/etc/netns/NS/hosts`) in
    /// which `names[j]` is host j's address.
    pub fn name_hosts(&self, names: &[String]) {
        let mut lines = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for (host, name) in self.hosts.iter().zip(names) {
            lines.push_str(&format!("{} {name}\n", host.ip));
        }
        for host in &self.hosts {
            let dir = format!("/etc/netns/{}", host.ns);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(format!("{dir}/hosts"), &lines).unwrap();
        }
    }

    /// A stand-in for `ssh` that runs the remote command line in the host whose address is
    /// the ssh destination (`cluster --ssh` passes the hostfile's host), and logs each call.
    pub fn ssh_stand_in(&self, dir: &Path) -> PathBuf {
        let cases: String = self
            .hosts
            .iter()
            .map(|h| format!("  {}) ns={} ;;\n", h.ip, h.ns))
            .collect();
        script(
            dir,
            "netns-ssh",
            &format!(
                r#"echo "$*" >> "$(dirname "$0")/ssh.log"
while [ "$1" != "--" ]; do host=$1; shift; done
shift
case $host in
{cases}  *) echo "netns-ssh: no test host $host" >&2; exit 255 ;;
esac
exec ip netns exec "$ns" sh -c "exec $1""#
            ),
        )
    }

    /// Pids of processes still in host `i`, but for the harness's relays.
    pub fn leftovers(&self, i: usize) -> Vec<u32> {
        let relay = self.relays[i + 1].id();
        pids(&self.hosts[i].ns)
            .into_iter()
            .filter(|&p| p != relay && !is_relay_fork(p))
            .collect()
    }
}

/// A relay's per-connection child (socat forks one for every connection).
fn is_relay_fork(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim_ascii() == b"socat")
}

/// Starts a `socat` relay, in namespace `ns` or on this host.
fn relay(ns: Option<&str>, listen: &str, to: &str) -> Child {
    let mut command = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "socat"]);
            c
        }
        None => Command::new("socat"),
    };
    command
        .args([listen, to])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("socat starts")
}

impl Drop for Net {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            let _ = relay.kill();
            let _ = relay.wait();
        }
        clean(self.hosts.len());
    }
}
