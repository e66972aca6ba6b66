//! Timely hostfiles: line `i` is process `i`'s `host:port`. Parsing them (as strictly as timely
//! reads them), telling loopback hosts from remote ones, and, for a local run, picking free
//! loopback ports and writing the file.
//!
//! Timely (`timely_communication::initialize`) takes the first `-n` lines verbatim: it neither
//! trims nor skips blank or comment lines, and a line it cannot connect to is retried for ever.
//! So we reject anything timely would choke on here, before a process starts.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

/// One hostfile line: where process `index` listens and where its peers connect to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPort {
    /// Host name or IP literal, without the brackets of an IPv6 literal.
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// True when the host is this machine: `localhost` or a loopback IP literal (127.0.0.0/8,
    /// ::1). Names are not resolved, so a run never waits on DNS to decide where to start.
    pub fn is_loopback(&self) -> bool {
        self.host.eq_ignore_ascii_case("localhost")
            || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Why a hostfile cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HostfileError {
    #[error("cannot read hostfile {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "hostfile {path} has {found} line(s) but --processes is {wanted}; line i must be process i's host:port"
    )]
    TooShort {
        path: PathBuf,
        found: usize,
        wanted: usize,
    },
    #[error(
        "hostfile {path}, line {line}: {reason} (got {text:?}; expected host:port, e.g. 127.0.0.1:2101)"
    )]
    Line {
        path: PathBuf,
        line: usize,
        text: String,
        reason: &'static str,
    },
    #[error(
        "hostfile {path}: lines {first} and {second} are both {address}; every process needs its own address"
    )]
    Duplicate {
        path: PathBuf,
        first: usize,
        second: usize,
        address: String,
    },
}

/// Parses one line as timely would use it: `host:port` or `[v6]:port`, no spaces.
pub fn parse_line(text: &str) -> Result<HostPort, &'static str> {
    if text.is_empty() {
        return Err("empty line");
    }
    if text.trim() != text || text.contains(char::is_whitespace) {
        return Err("whitespace in the line (timely uses lines verbatim)");
    }
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (host, port) = rest
            .split_once("]:")
            .ok_or("an IPv6 literal needs [addr]:port")?;
        host.parse::<std::net::Ipv6Addr>()
            .map_err(|_| "not an IPv6 address between the brackets")?;
        (host, port)
    } else {
        let (host, port) = text.rsplit_once(':').ok_or("no :port")?;
        if host.contains(':') {
            return Err("an IPv6 literal needs brackets: [addr]:port");
        }
        (host, port)
    };
    if host.is_empty() {
        return Err("no host before the port");
    }
    let port: u16 = port
        .parse()
        .map_err(|_| "the port is not a number 1-65535")?;
    if port == 0 {
        return Err("port 0 cannot be connected to");
    }
    Ok(HostPort {
        host: host.to_owned(),
        port,
    })
}

/// Parses the first `processes` lines of hostfile text (further lines are ignored, as timely
/// ignores them). `processes = None` takes every line up to the end or the first blank line.
pub fn parse(
    path: &Path,
    text: &str,
    processes: Option<usize>,
) -> Result<Vec<HostPort>, HostfileError> {
    let lines: Vec<&str> = text.lines().collect();
    let wanted = processes.unwrap_or_else(|| lines.iter().take_while(|l| !l.is_empty()).count());
    if lines.len() < wanted || wanted == 0 {
        return Err(HostfileError::TooShort {
            path: path.to_owned(),
            found: lines.len(),
            wanted: wanted.max(1),
        });
    }
    let mut hosts: Vec<HostPort> = Vec::with_capacity(wanted);
    for (i, line) in lines[..wanted].iter().enumerate() {
        let host = parse_line(line).map_err(|reason| HostfileError::Line {
            path: path.to_owned(),
            line: i + 1,
            text: (*line).to_owned(),
            reason,
        })?;
        if let Some(first) = hosts.iter().position(|h| *h == host) {
            return Err(HostfileError::Duplicate {
                path: path.to_owned(),
                first: first + 1,
                second: i + 1,
                address: host.to_string(),
            });
        }
        hosts.push(host);
    }
    Ok(hosts)
}

/// Reads and parses a hostfile (see [`parse`]).
pub fn read(path: &Path, processes: Option<usize>) -> Result<Vec<HostPort>, HostfileError> {
    let text = std::fs::read_to_string(path).map_err(|source| HostfileError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text, processes)
}

/// `n` distinct free TCP ports on `ip`, found by binding `ip:0` `n` times at once (so the kernel
/// cannot hand out the same port twice) and releasing them. Another program could take one
/// before the job binds it; the job then fails to start and is restarted with fresh ports.
pub fn pick_ports(ip: IpAddr, n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| TcpListener::bind((ip, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect()
}

/// Hosts for a local run: `n` processes on 127.0.0.1 with freshly picked ports.
pub fn local_hosts(n: usize) -> io::Result<Vec<HostPort>> {
    Ok(pick_ports(IpAddr::V4(Ipv4Addr::LOCALHOST), n)?
        .into_iter()
        .map(|port| HostPort {
            host: "127.0.0.1".into(),
            port,
        })
        .collect())
}

/// The hostfile text for `hosts`: one `host:port` per line.
pub fn render(hosts: &[HostPort]) -> String {
    hosts.iter().map(|h| format!("{h}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> &'static Path {
        Path::new("hosts")
    }

    #[test]
    fn lines_parse_as_host_and_port() {
        assert_eq!(
            parse_line("127.0.0.2:2101").unwrap(),
            HostPort {
                host: "127.0.0.2".into(),
                port: 2101
            }
        );
        assert_eq!(
            parse_line("node-a.example:9").unwrap().host,
            "node-a.example"
        );
        let v6 = parse_line("[::1]:4000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 4000));
        assert_eq!(v6.to_string(), "[::1]:4000");
    }

    #[test]
    fn bad_lines_are_rejected_with_a_reason() {
        for bad in [
            "",
            "host",
            ":80",
            "host:",
            "host:http",
            "host:70000",
            "host:0",
            " host:80",
            "host:80 ",
            "a:80 b:81",
            "::1:80",
            "[::1]80",
            "[nope]:80",
        ] {
            assert!(parse_line(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn takes_the_first_n_lines_and_ignores_the_rest() {
        let text = "127.0.0.1:1\n127.0.0.1:2\n# not read by timely either\n";
        let hosts = parse(p(), text, Some(2)).unwrap();
        assert_eq!(hosts.len(), 2);
        assert_eq!(hosts[1].port, 2);
    }

    #[test]
    fn without_n_counts_the_lines_up_to_a_blank_one() {
        let hosts = parse(p(), "a:1\nb:2\nc:3\n\n", None).unwrap();
        assert_eq!(hosts.len(), 3);
        assert!(matches!(
            parse(p(), "\n", None),
            Err(HostfileError::TooShort { .. })
        ));
    }

    #[test]
    fn too_few_lines_bad_lines_and_duplicates_are_errors() {
        let e = parse(p(), "a:1\nb:2\n", Some(3)).unwrap_err();
        assert!(
            matches!(
                e,
                HostfileError::TooShort {
                    found: 2,
                    wanted: 3,
                    ..
                }
            ),
            "{e}"
        );
        let e = parse(p(), "a:1\n\nc:3\n", Some(3)).unwrap_err();
        assert!(matches!(e, HostfileError::Line { line: 2, .. }), "{e}");
        let e = parse(p(), "a:1\nb:2\na:1\n", Some(3)).unwrap_err();
        assert!(
            matches!(
                e,
                HostfileError::Duplicate {
                    first: 1,
                    second: 3,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("a:1"));
    }

    #[test]
    fn loopback_means_localhost_or_a_loopback_literal() {
        for h in [
            "localhost:1",
            "LOCALHOST:1",
            "127.0.0.1:1",
            "127.0.0.3:1",
            "[::1]:1",
        ] {
            assert!(parse_line(h).unwrap().is_loopback(), "{h}");
        }
        for h in ["10.0.0.1:1", "node-a:1", "[::2]:1", "0.0.0.0:1"] {
            assert!(!parse_line(h).unwrap().is_loopback(), "{h}");
        }
    }

    #[test]
    fn picked_ports_are_distinct_free_and_bindable() {
        let ports = pick_ports(IpAddr::V4(Ipv4Addr::LOCALHOST), 8).unwrap();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), 8);
        assert!(ports.iter().all(|&p| p != 0));
        // Released again: the job can bind them. Any other program's outgoing connection may take
        // a released port in between (the launcher then retries with fresh ports), so a pick
        // counts if all its ports bind, and one of a few picks must.
        let all_bind = |ports: &[u16]| {
            ports
                .iter()
                .all(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok())
        };
        let bound = all_bind(&ports)
            || (0..4).any(|_| all_bind(&pick_ports(IpAddr::V4(Ipv4Addr::LOCALHOST), 8).unwrap()));
        assert!(
            bound,
            "no pick of 8 ports could be bound again after release"
        );
    }

    #[test]
    fn local_hosts_render_as_a_hostfile_that_parses_back() {
        let hosts = local_hosts(3).unwrap();
        let text = render(&hosts);
        assert_eq!(text.lines().count(), 3);
        assert_eq!(parse(p(), &text, Some(3)).unwrap(), hosts);
        assert!(hosts.iter().all(HostPort::is_loopback));
    }
}
