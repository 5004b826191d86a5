use std::fmt;

use base64::Engine as _;

/// A secret string: `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppEnv {
    Development,
    Production,
}

impl AppEnv {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "development" => Ok(Self::Development),
            "production" => Ok(Self::Production),
            _ => Err(String::new()),
        }
    }
    pub fn is_production(self) -> bool {
        self == Self::Production
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(String::new()),
        }
    }
}

/// A URL whose `Display` hides the password, so it can appear in logs and error messages.
fn redacted(url: &url::Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        // Setting a password only fails for URLs that cannot have one, which had none.
        let _ = shown.set_password(Some("***"));
    }
    shown.set_query(None);
    shown.to_string()
}

fn parse_url(s: &str, schemes: &[&str]) -> Result<url::Url, String> {
    let url = url::Url::parse(s).map_err(|_| "not a URL".to_owned())?;
    if !schemes.contains(&url.scheme()) {
        return Err(format!("scheme must be {}", schemes.join(" or ")));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("no host".to_owned());
    }
    Ok(url)
}

/// How a Postgres connection uses TLS: libpq's `sslmode`, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, certificate unchecked; plain otherwise (libpq's default).
    Prefer,
    /// TLS or no connection, certificate unchecked.
    Require,
    /// TLS with the certificate chain checked against the trusted roots, not the host name.
    VerifyCa,
    /// TLS with the chain checked and the certificate naming the host.
    VerifyFull,
}

impl SslMode {
    pub const FORM: &'static str = "disable, prefer, require, verify-ca or verify-full";

    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "disable" => Ok(Self::Disable),
            "prefer" => Ok(Self::Prefer),
            "require" => Ok(Self::Require),
            "verify-ca" => Ok(Self::VerifyCa),
            "verify-full" => Ok(Self::VerifyFull),
            _ => Err(format!("sslmode must be {}", Self::FORM)),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }

    /// TLS or no connection at all.
    pub fn requires_tls(self) -> bool {
        self >= Self::Require
    }
}

/// Which certificates a verifying `sslmode` trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SslRoots {
    /// The operating system's trust store (no `sslrootcert`, or `sslrootcert=system`).
    System,
    /// The CA certificates (PEM) in this file.
    File(std::path::PathBuf),
}

/// The URL parameters this crate reads itself; tokio-postgres knows neither `verify-*` nor
/// `sslrootcert`, so they are removed from the URL it gets.
const TLS_PARAMS: &[&str] = &["sslmode", "sslrootcert"];

/// A Postgres connection URL (`postgres://` or `postgresql://`), with its TLS parameters
/// (`sslmode`, `sslrootcert`) read as libpq reads them.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    url: url::Url,
    ssl_mode: SslMode,
    roots: SslRoots,
}

impl PgUrl {
    pub const FORM: &'static str =
        "postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE[?sslmode=MODE&sslrootcert=CA.pem]";

    pub fn parse(s: &str) -> Result<Self, String> {
        let url = parse_url(s, &["postgres", "postgresql"])?;
        if url.path().trim_start_matches('/').is_empty() {
            return Err("no database name".to_owned());
        }
        if url.username().is_empty() {
            return Err("no user".to_owned());
        }
        let (mut mode, mut root) = (None, None);
        for (k, v) in url.query_pairs() {
            match &*k {
                "sslmode" => mode = Some(SslMode::parse(&v)?),
                "sslrootcert" if v.trim().is_empty() => {
                    return Err("sslrootcert must name a file".to_owned());
                }
                "sslrootcert" => root = Some(v.into_owned()),
                _ => {}
            }
        }
        let (ssl_mode, roots) = match root.as_deref() {
            // libpq 16: the system store is only worth trusting with the host name checked.
            Some("system") => match mode {
                None | Some(SslMode::VerifyFull) => (SslMode::VerifyFull, SslRoots::System),
                Some(_) => return Err("sslrootcert=system needs sslmode=verify-full".to_owned()),
            },
            // libpq: a root certificate given to `require` makes it check the chain.
            Some(path) => (
                match mode {
                    Some(SslMode::Require) => SslMode::VerifyCa,
                    other => other.unwrap_or(SslMode::Prefer),
                },
                SslRoots::File(path.into()),
            ),
            None => (mode.unwrap_or(SslMode::Prefer), SslRoots::System),
        };
        Ok(Self {
            url,
            ssl_mode,
            roots,
        })
    }
    /// The whole URL, password included, as given.
    pub fn expose(&self) -> &str {
        self.url.as_str()
    }
    /// The URL without `sslmode`/`sslrootcert` (which [`PgUrl::ssl_mode`] and
    /// [`PgUrl::ssl_roots`] carry), for a client that does not know them. Holds the password.
    pub fn expose_without_tls_params(&self) -> String {
        let mut url = self.url.clone();
        let rest: Vec<(String, String)> = self
            .url
            .query_pairs()
            .filter(|(k, _)| !TLS_PARAMS.contains(&&**k))
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        url.into()
    }
    pub fn user(&self) -> &str {
        self.url.username()
    }
    /// The role and password, percent-decoded, for commands that manage that role (`worker
    /// migrate` keeps the app's login role in step with `DATABASE_URL`). `None` without a
    /// password.
    pub fn credentials(&self) -> Option<(String, Secret)> {
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let password = self.url.password().filter(|p| !p.is_empty())?;
        Some((decode(self.url.username()), Secret::new(decode(password))))
    }
    /// The effective `sslmode` (libpq's `prefer` when absent).
    pub fn ssl_mode(&self) -> SslMode {
        self.ssl_mode
    }
    pub fn ssl_roots(&self) -> &SslRoots {
        &self.roots
    }
    /// Every host the URL may connect to (the authority's and any `host`/`hostaddr`
    /// parameters) is a loopback address, `localhost` or a Unix socket directory: traffic that
    /// never leaves the machine.
    pub fn is_local(&self) -> bool {
        let from_query = self
            .url
            .query_pairs()
            .filter(|(k, _)| k == "host" || k == "hostaddr")
            .map(|(_, v)| v.into_owned());
        let hosts: Vec<String> = self
            .url
            .host_str()
            // A socket directory comes percent-encoded: `postgres://u@%2Frun%2Fpostgresql/db`.
            .map(|h| {
                percent_encoding::percent_decode_str(h)
                    .decode_utf8_lossy()
                    .into_owned()
            })
            .into_iter()
            .chain(from_query)
            .collect();
        hosts.iter().flat_map(|h| h.split(',')).all(is_local_host)
    }
    /// `host:port/database`, for messages that must say where without saying who.
    pub fn location(&self) -> String {
        format!(
            "{}:{}{}",
            self.url.host_str().unwrap_or_default(),
            self.url.port().unwrap_or(5432),
            self.url.path()
        )
    }
}

fn is_local_host(host: &str) -> bool {
    let host = host.trim();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    // A path is a Unix socket directory (`@` an abstract socket name on Linux).
    host.starts_with('/')
        || host.starts_with('@')
        || host.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", redacted(&self.url))
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.url))
    }
}

/// A Redis URL (`redis://` or `rediss://`).
#[derive(Clone, PartialEq, Eq)]
pub struct RedisUrl(url::Url);

impl RedisUrl {
    pub const FORM: &'static str = "redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://…";

    pub fn parse(s: &str) -> Result<Self, String> {
        parse_url(s, &["redis", "rediss"]).map(Self)
    }
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
    pub fn is_tls(&self) -> bool {
        self.0.scheme() == "rediss"
    }
    pub fn has_password(&self) -> bool {
        self.0.password().is_some_and(|p| !p.is_empty())
    }
    pub fn location(&self) -> String {
        format!(
            "{}:{}",
            self.0.host_str().unwrap_or_default(),
            self.0.port().unwrap_or(6379)
        )
    }
}

impl fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RedisUrl({})", redacted(&self.0))
    }
}

impl fmt::Display for RedisUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redacted(&self.0))
    }
}

/// An absolute `http`/`https` URL with a trailing `/` removed from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(url::Url);

impl HttpUrl {
    pub const FORM: &'static str = "an absolute http(s):// URL";

    pub fn parse(s: &str) -> Result<Self, String> {
        let url = parse_url(s, &["http", "https"])?;
        if url.password().is_some() || !url.username().is_empty() {
            return Err("must not carry credentials".to_owned());
        }
        Ok(Self(url))
    }
    pub fn is_https(&self) -> bool {
        self.0.scheme() == "https"
    }
    pub fn as_url(&self) -> &url::Url {
        &self.0
    }
    /// The URL as text without a trailing `/`, ready for `{base}/path`.
    pub fn base(&self) -> &str {
        self.0.as_str().trim_end_matches('/')
    }
}

/// A Graph API version such as `v26.0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphVersion(String);

impl GraphVersion {
    pub const FORM: &'static str = "vNN.N, such as v26.0";

    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = s
            .strip_prefix('v')
            .and_then(|rest| rest.split_once('.'))
            .is_some_and(|(major, minor)| {
                (1..=3).contains(&major.len())
                    && major.bytes().all(|b| b.is_ascii_digit())
                    && minor.len() == 1
                    && minor.bytes().all(|b| b.is_ascii_digit())
            });
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(String::new())
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// One encryption key of the ring: a version and 32 key bytes (never printed).
#[derive(Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub version: u32,
    pub key: [u8; 32],
}

impl fmt::Debug for KeyEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyEntry(v{}, ***)", self.version)
    }
}

/// `ENCRYPTION_KEY`: the first entry encrypts, every entry decrypts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRing(pub Vec<KeyEntry>);

impl KeyRing {
    pub const FORM: &'static str =
        "<kver>:<base64 of 32 bytes>[,<kver>:<base64 of 32 bytes>…], kver a positive integer";
}

/// Parses the key ring; errors say which entry is wrong and how, never the key material.
pub fn parse_key_ring(s: &str) -> Result<KeyRing, String> {
    let mut keys: Vec<KeyEntry> = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        let n = i + 1;
        let part = part.trim();
        let Some((ver, b64)) = part.split_once(':') else {
            return Err(format!("entry {n} has no ':' between version and key"));
        };
        let version: u32 = ver
            .trim()
            .parse()
            .ok()
            .filter(|v| *v > 0)
            .ok_or_else(|| format!("entry {n} has a version that is not a positive integer"))?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(b64.trim()))
            .map_err(|_| format!("entry {n} (v{version}) is not valid base64"))?;
        let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
            format!(
                "entry {n} (v{version}) decodes to {} bytes, not 32",
                bytes.len()
            )
        })?;
        if keys.iter().any(|k| k.version == version) {
            return Err(format!("version {version} appears twice"));
        }
        keys.push(KeyEntry { version, key });
    }
    Ok(KeyRing(keys))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(n: usize) -> String {
        base64::engine::general_purpose::STANDARD.encode(vec![7u8; n])
    }

    #[test]
    fn key_ring_keeps_order_and_rejects_wrong_lengths_without_echoing_the_key() {
        let ring = parse_key_ring(&format!("2:{},1:{}", b64(32), b64(32))).expect("valid ring");
        assert_eq!(
            ring.0.iter().map(|k| k.version).collect::<Vec<_>>(),
            vec![2, 1]
        );
        let short = b64(19);
        let err = parse_key_ring(&format!("1:{short}")).expect_err("19 bytes");
        assert!(err.contains("19 bytes"), "{err}");
        assert!(!err.contains(&short));
        assert!(parse_key_ring(&format!("0:{}", b64(32))).is_err());
        assert!(parse_key_ring(&format!("1:{},1:{}", b64(32), b64(32))).is_err());
        assert!(parse_key_ring("nonsense").is_err());
    }

    #[test]
    fn graph_version_needs_the_v_and_one_minor_digit() {
        assert!(GraphVersion::parse("v26.0").is_ok());
        for bad in ["26", "v26", "26.0", "v26.00", "vx.0", ""] {
            assert!(GraphVersion::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_hide_their_password() {
        let pg = PgUrl::parse("postgres://app:hunter2@db:5433/igsales").expect("valid");
        assert!(!format!("{pg} {pg:?} {}", pg.location()).contains("hunter2"));
        let r = RedisUrl::parse("rediss://:hunter2@cache:6380/0").expect("valid");
        assert!(r.has_password() && r.is_tls());
        assert!(!format!("{r} {r:?}").contains("hunter2"));
        assert!(PgUrl::parse("mysql://a@b/c").is_err());
        assert!(PgUrl::parse("postgres://a@b").is_err());
    }

    fn mode(s: &str) -> Result<(SslMode, SslRoots), String> {
        PgUrl::parse(s).map(|u| (u.ssl_mode(), u.ssl_roots().clone()))
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_as_libpq_reads_them() {
        let base = "postgres://app:hunter2@db.example.com/igsales";
        assert_eq!(mode(base), Ok((SslMode::Prefer, SslRoots::System)));
        for m in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            let (got, _) = mode(&format!("{base}?sslmode={m}")).expect(m);
            assert_eq!(got.as_str(), m);
        }
        let ca = SslRoots::File("/etc/ca.pem".into());
        // A root certificate makes `require` check the chain.
        assert_eq!(
            mode(&format!("{base}?sslmode=require&sslrootcert=/etc/ca.pem")),
            Ok((SslMode::VerifyCa, ca.clone()))
        );
        assert_eq!(
            mode(&format!(
                "{base}?sslrootcert=/etc/ca.pem&sslmode=verify-full"
            )),
            Ok((SslMode::VerifyFull, ca))
        );
        assert_eq!(
            mode(&format!("{base}?sslrootcert=system")),
            Ok((SslMode::VerifyFull, SslRoots::System))
        );
        assert!(mode(&format!("{base}?sslrootcert=system&sslmode=require")).is_err());
        assert!(mode(&format!("{base}?sslrootcert=")).is_err());
        let err = mode(&format!("{base}?sslmode=verify_full")).expect_err("unknown mode");
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn the_tls_parameters_are_kept_from_the_client_and_from_messages() {
        let url = PgUrl::parse(
            "postgres://app:hunter2@db/igsales?sslmode=verify-full&application_name=w&sslrootcert=/ca.pem",
        )
        .expect("valid");
        assert_eq!(
            url.expose_without_tls_params(),
            "postgres://app:hunter2@db/igsales?application_name=w"
        );
        let plain = PgUrl::parse("postgres://app@db/igsales?sslmode=disable").expect("valid");
        assert_eq!(
            plain.expose_without_tls_params(),
            "postgres://app@db/igsales"
        );
        assert!(!format!("{url} {url:?}").contains("hunter2"));
    }

    #[test]
    fn only_loopback_hosts_and_unix_sockets_are_local() {
        for local in [
            "postgres://a@localhost/d",
            "postgres://a@127.0.0.1:5433/d",
            "postgres://a@127.8.0.1/d",
            "postgres://a@[::1]/d",
            "postgres://a@%2Frun%2Fpostgresql/d",
            "postgres://a@localhost/d?host=/run/postgresql",
        ] {
            assert!(PgUrl::parse(local).expect(local).is_local(), "{local}");
        }
        for remote in [
            "postgres://a@db.example.com/d",
            "postgres://a@10.0.0.5/d",
            "postgres://a@localhost/d?host=db.example.com",
            "postgres://a@localhost/d?hostaddr=10.0.0.5",
            "postgres://a@localhost.example.com/d",
        ] {
            assert!(!PgUrl::parse(remote).expect(remote).is_local(), "{remote}");
        }
    }
}
