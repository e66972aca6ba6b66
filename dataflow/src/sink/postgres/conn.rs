//! Where the PostgreSQL sink connects: `--pg-url` (a libpq connection string or URL, or the
//! environment's `PGURL`), completed from the standard `PG*` variables as libpq completes it,
//! and the TLS that its `sslmode` and `sslrootcert` ask for.
//!
//! The `postgres` crate parses both forms but knows only `sslmode` disable, prefer and require
//! and no `sslrootcert`; those two are taken out of the text here and applied through OpenSSL,
//! with libpq's meaning: `prefer` and `require` encrypt without checking the server's
//! certificate (unless a root certificate is given, when `require` checks it as `verify-ca`
//! does), `verify-ca` checks it against the CA file, `verify-full` also checks the host name.
//! The password never leaves this module in text: [`PgTarget`] prints as `user@host:port/db`.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres::config::{Host, SslMode};
use postgres_openssl::MakeTlsConnector;
use retail_common::kafka::REDACTED;

/// The command line of the PostgreSQL sink (flattened into the job's flags).
#[derive(Debug, Clone, clap::Args)]
pub struct PgFlags {
    /// --sinks postgres: the database, as a libpq connection string ("host=db user=retail
    /// dbname=shop sslmode=verify-full sslrootcert=ca.crt") or URL
    /// (postgresql://retail@db:5432/shop?sslmode=require). What it leaves out comes from
    /// PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE and PGSSLROOTCERT, then
    /// libpq's defaults (localhost, 5432, sslmode prefer). Prefer PGPASSWORD to a password in
    /// the URL: the password is never printed, but a command line shows in `ps`.
    #[arg(long, env = "PGURL", hide_env_values = true, value_name = "CONNINFO")]
    pub pg_url: Option<String>,

    /// --sinks postgres: the schema of the job's tables (created when missing).
    #[arg(long, env = "DATAFLOW_PG_SCHEMA", default_value = "retail")]
    pub pg_schema: String,

    /// Create the schema and tables of --sinks postgres (--pg-url, --pg-schema), check their
    /// columns, and exit without running the job.
    #[arg(long)]
    pub pg_init: bool,
}

/// A connection setting that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PgConfigError {
    #[error("--pg-url: {0}")]
    Syntax(String),
    #[error(
        "--pg-url: sslmode {0:?} is not one of disable, allow, prefer, require, verify-ca, \
         verify-full"
    )]
    SslMode(String),
    #[error("--pg-url: sslmode {0} needs a CA file (sslrootcert or PGSSLROOTCERT)")]
    NoRootCert(&'static str),
    #[error(
        "--pg-schema {0:?}: use letters, digits and '_' (starting with a letter or '_'), at \
         most 63"
    )]
    Schema(String),
}

/// How the connection is encrypted and what of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tls {
    Disable,
    /// Encrypted when the server offers it; certificate not checked.
    Prefer,
    /// Encrypted; certificate not checked.
    Require,
    /// Encrypted; the certificate chain checked against the CA file.
    VerifyCa,
    /// Encrypted; the chain and the host name checked.
    VerifyFull,
}

impl Tls {
    fn parse(mode: &str) -> Result<Tls, PgConfigError> {
        Ok(match mode {
            "disable" => Tls::Disable,
            // libpq's `allow` tries without TLS first; a server that insists gets TLS.
            "allow" | "prefer" => Tls::Prefer,
            "require" => Tls::Require,
            "verify-ca" => Tls::VerifyCa,
            "verify-full" => Tls::VerifyFull,
            other => return Err(PgConfigError::SslMode(other.to_owned())),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Tls::Disable => "disable",
            Tls::Prefer => "prefer",
            Tls::Require => "require",
            Tls::VerifyCa => "verify-ca",
            Tls::VerifyFull => "verify-full",
        }
    }
}

/// The database the sink writes to, validated; its `Debug` and `Display` carry no password.
#[derive(Clone)]
pub struct PgTarget {
    config: postgres::Config,
    pub tls: Tls,
    pub root_cert: Option<PathBuf>,
    /// `--pg-schema`.
    pub schema: String,
}

impl fmt::Display for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".into(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        let user = self.config.get_user().unwrap_or("");
        let db = self.config.get_dbname().unwrap_or(user);
        write!(f, "{user}@{host}:{port}/{db} (sslmode {})", self.tls.name())
    }
}

impl fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let password = self.config.get_password().map(|_| REDACTED);
        f.debug_struct("PgTarget")
            .field("target", &self.to_string())
            .field("password", &password)
            .field("root_cert", &self.root_cert)
            .field("schema", &self.schema)
            .finish()
    }
}

impl PgFlags {
    /// The target, when the job writes to PostgreSQL or only creates its tables.
    pub fn into_target(self, sink: bool) -> Result<Option<PgTarget>, PgConfigError> {
        if !sink && !self.pg_init {
            return Ok(None);
        }
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        PgTarget::new(self.pg_url.as_deref(), &self.pg_schema, env).map(Some)
    }
}

impl PgTarget {
    /// Builds the target from `conninfo` (libpq string or URL) completed from `env` (the
    /// `PG*` variables), as libpq does: what the text says wins.
    pub fn new(
        conninfo: Option<&str>,
        schema: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<PgTarget, PgConfigError> {
        if schema.is_empty()
            || schema.len() > 63
            || schema.starts_with(|c: char| c.is_ascii_digit())
            || !schema
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(PgConfigError::Schema(schema.to_owned()));
        }
        let (rest, ssl) = match conninfo {
            Some(text) => split_ssl(text)?,
            None => (String::new(), SslParts::default()),
        };
        let mut config = if rest.trim().is_empty() {
            postgres::Config::new()
        } else {
            // The crate's own error names the setting, never its value.
            postgres::Config::from_str(&rest).map_err(|e| PgConfigError::Syntax(e.to_string()))?
        };
        if config.get_hosts().is_empty() {
            config.host(env("PGHOST").as_deref().unwrap_or("localhost"));
        }
        if config.get_ports().is_empty()
            && let Some(port) = env("PGPORT")
        {
            let port = port
                .parse()
                .map_err(|_| PgConfigError::Syntax(format!("PGPORT {port:?} is not a port")))?;
            config.port(port);
        }
        if config.get_user().is_none() {
            let user = env("PGUSER")
                .or_else(|| env("USER"))
                .unwrap_or("postgres".into());
            config.user(&user);
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_dbname().is_none()
            && let Some(db) = env("PGDATABASE")
        {
            config.dbname(&db);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        if config.get_application_name().is_none() {
            config.application_name("retail-stream dataflow");
        }
        let mode = ssl.mode.or_else(|| env("PGSSLMODE"));
        let root_cert = ssl.root_cert.or_else(|| env("PGSSLROOTCERT"));
        let mut tls = Tls::parse(mode.as_deref().unwrap_or("prefer"))?;
        // libpq: `require` with a root certificate checks the chain, as verify-ca.
        if tls == Tls::Require && root_cert.is_some() {
            tls = Tls::VerifyCa;
        }
        if matches!(tls, Tls::VerifyCa | Tls::VerifyFull) && root_cert.is_none() {
            return Err(PgConfigError::NoRootCert(tls.name()));
        }
        config.ssl_mode(match tls {
            Tls::Disable => SslMode::Disable,
            Tls::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        Ok(PgTarget {
            config,
            tls,
            root_cert: root_cert.map(PathBuf::from),
            schema: schema.to_owned(),
        })
    }

    /// Opens a connection (within the connect timeout, 5 s unless the text sets one).
    pub fn connect(&self) -> Result<postgres::Client, ConnectError> {
        let mut builder =
            SslConnector::builder(SslMethod::tls_client()).map_err(ConnectError::Tls)?;
        if let Some(ca) = &self.root_cert {
            builder
                .set_ca_file(ca)
                .map_err(|e| ConnectError::RootCert {
                    path: ca.clone(),
                    source: e,
                })?;
        }
        if matches!(self.tls, Tls::Prefer | Tls::Require) {
            builder.set_verify(SslVerifyMode::NONE);
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        if self.tls != Tls::VerifyFull {
            connector.set_callback(|ssl, _| {
                ssl.set_verify_hostname(false);
                Ok(())
            });
        }
        self.config
            .connect(connector)
            .map_err(ConnectError::Postgres)
    }
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("cannot set up TLS: {0}")]
    Tls(openssl::error::ErrorStack),
    #[error("cannot read the CA file {path}: {source}")]
    RootCert {
        path: PathBuf,
        source: openssl::error::ErrorStack,
    },
    #[error(transparent)]
    Postgres(postgres::Error),
}

/// `sslmode` and `sslrootcert` as the connection text gave them.
#[derive(Debug, Default, PartialEq)]
struct SslParts {
    mode: Option<String>,
    root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of a connection string or URL: the rest, and them.
fn split_ssl(text: &str) -> Result<(String, SslParts), PgConfigError> {
    let mut ssl = SslParts::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => {
            ssl.mode = Some(value);
            true
        }
        "sslrootcert" => {
            ssl.root_cert = Some(value);
            true
        }
        _ => false,
    };
    if text.starts_with("postgres://") || text.starts_with("postgresql://") {
        let Some((base, query)) = text.split_once('?') else {
            return Ok((text.to_owned(), ssl));
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(key, percent_decode(value)?) {
                kept.push(pair);
            }
        }
        let rest = match kept.is_empty() {
            true => base.to_owned(),
            false => format!("{base}?{}", kept.join("&")),
        };
        return Ok((rest, ssl));
    }
    let mut kept = Vec::new();
    for (key, value) in key_values(text)? {
        if !take(&key, value.clone()) {
            let quoted = value.replace('\\', "\\\\").replace('\'', "\\'");
            kept.push(format!("{key}='{quoted}'"));
        }
    }
    Ok((kept.join(" "), ssl))
}

/// The `key=value` pairs of a libpq connection string: values bare or in single quotes, with
/// `\` escaping the next character. Errors never quote a value (it may be the password).
fn key_values(text: &str) -> Result<Vec<(String, String)>, PgConfigError> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(PgConfigError::Syntax(format!(
                "expected key=value or a postgresql:// URL, found {key:?} without '='"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let quoted = chars.next_if_eq(&'\'').is_some();
        let mut value = String::new();
        loop {
            match chars.next() {
                Some('\\') => value.extend(chars.next()),
                Some('\'') if quoted => break,
                Some(c) if !quoted && c.is_whitespace() => break,
                Some(c) => value.push(c),
                None if quoted => {
                    return Err(PgConfigError::Syntax(format!(
                        "the value of {key} has no closing quote"
                    )));
                }
                None => break,
            }
        }
        pairs.push((key, value));
    }
}

/// `%XX` escapes of a URL query value.
fn percent_decode(text: &str) -> Result<String, PgConfigError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let byte = hex.ok_or_else(|| PgConfigError::Syntax("a bad %-escape".into()))?;
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgConfigError::Syntax("a %-escape that is not UTF-8".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(text: Option<&str>, env: &[(&str, &str)]) -> Result<PgTarget, PgConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        PgTarget::new(text, "retail", move |name| {
            env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
        })
    }

    #[test]
    fn urls_and_key_values_give_the_same_target() {
        let url = target(
            Some("postgresql://shop:s3cret@db.example:6543/sales?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.crt"),
            &[],
        )
        .unwrap();
        let kv = target(
            Some("host=db.example port=6543 user=shop password='s3cret' dbname=sales sslmode=verify-full sslrootcert=/tmp/ca.crt"),
            &[],
        )
        .unwrap();
        for t in [&url, &kv] {
            assert_eq!(
                t.to_string(),
                "shop@db.example:6543/sales (sslmode verify-full)"
            );
            assert_eq!(
                t.root_cert.as_deref(),
                Some(std::path::Path::new("/tmp/ca.crt"))
            );
            assert_eq!(t.config.get_password(), Some(&b"s3cret"[..]));
            let shown = format!("{t:?} {t}");
            assert!(
                !shown.contains("s3cret") && shown.contains(REDACTED),
                "{shown}"
            );
        }
    }

    #[test]
    fn the_environment_fills_what_the_text_leaves_out() {
        let env = [
            ("PGHOST", "envhost"),
            ("PGPORT", "7000"),
            ("PGUSER", "envuser"),
            ("PGPASSWORD", "pw"),
            ("PGDATABASE", "envdb"),
            ("PGSSLMODE", "require"),
        ];
        let t = target(None, &env).unwrap();
        assert_eq!(
            t.to_string(),
            "envuser@envhost:7000/envdb (sslmode require)"
        );
        assert_eq!(t.config.get_password(), Some(&b"pw"[..]));
        // The text wins; require with a CA file checks the chain, as libpq does.
        let t = target(Some("host=h dbname=d sslrootcert=ca.pem"), &env).unwrap();
        assert_eq!(t.to_string(), "envuser@h:7000/d (sslmode verify-ca)");
        let t = target(Some("postgresql://u@h/d?sslmode=disable"), &env).unwrap();
        assert_eq!(
            (t.tls, t.config.get_ssl_mode()),
            (Tls::Disable, SslMode::Disable)
        );
        // Nothing at all: libpq's defaults.
        let t = target(None, &[("USER", "me")]).unwrap();
        assert_eq!(t.to_string(), "me@localhost:5432/me (sslmode prefer)");
    }

    #[test]
    fn bad_settings_are_refused_without_echoing_values() {
        let err = |text: &str| target(Some(text), &[]).unwrap_err().to_string();
        assert!(err("host=h sslmode=verify-full").contains("CA file"));
        assert!(err("sslmode=sometimes").contains("not one of"));
        let e = err("host=h password='s3cret");
        assert!(e.contains("closing quote") && !e.contains("s3cret"), "{e}");
        assert!(err("hostonly").contains("without '='"));
        assert!(target(None, &[]).is_ok());
        let schema = PgTarget::new(None, "bad-name", |_| None).unwrap_err();
        assert!(matches!(schema, PgConfigError::Schema(_)));
    }

    #[test]
    fn key_values_unquote_and_unescape() {
        let pairs = key_values(r"a=1  b = 'x y'  c='it\'s' d=back\\slash").unwrap();
        let pairs: Vec<(&str, &str)> = pairs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            pairs,
            [
                ("a", "1"),
                ("b", "x y"),
                ("c", "it's"),
                ("d", r"back\slash")
            ]
        );
        let (rest, ssl) = split_ssl("host=h password='a b\\'c' sslmode=require").unwrap();
        assert_eq!(rest, r"host='h' password='a b\'c'");
        assert_eq!(ssl.mode.as_deref(), Some("require"));
        let (rest, _) = split_ssl("postgres://h/d?application_name=x&sslmode=disable").unwrap();
        assert_eq!(rest, "postgres://h/d?application_name=x");
    }
}
