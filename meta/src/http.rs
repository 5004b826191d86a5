//! The blocking HTTP agent every outbound client uses (Meta, the model API).
//!
//! Two things ureq's defaults get wrong for a busy worker:
//! - its resolver runs every lookup on a new thread whenever a timeout applies, and it resolves
//!   before it looks in the connection pool: one thread spawned per request, pooled or not.
//!   [`CachingResolver`] answers IP literals at once and keeps a name's addresses for a while,
//!   so a thread is spawned only when a name is first (or again) looked up;
//! - it keeps 3 idle connections per host, so a few hundred concurrent calls mostly open new
//!   connections. The pool here keeps as many as calls may run at once.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// How an agent is built.
#[derive(Debug, Clone)]
pub struct AgentSettings {
    /// The whole call, connect to last body byte.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Calls that may run at once (the caller's semaphore): idle connections kept per host.
    pub max_connections: usize,
    /// How long a looked-up name's addresses are reused.
    pub dns_cache_ttl: Duration,
    pub user_agent: Option<&'static str>,
}

pub fn agent(s: &AgentSettings) -> ureq::Agent {
    let mut builder = ureq::Agent::config_builder()
        .timeout_global(Some(s.timeout))
        .timeout_connect(Some(s.connect_timeout.min(s.timeout)))
        .http_status_as_error(false)
        .max_redirects(0)
        .max_idle_connections(s.max_connections.max(1) * 2)
        .max_idle_connections_per_host(s.max_connections.max(1));
    if let Some(ua) = s.user_agent {
        builder = builder.user_agent(ua);
    }
    ureq::Agent::with_parts(
        builder.build(),
        DefaultConnector::default(),
        CachingResolver::new(s.dns_cache_ttl),
    )
}

/// Names a process talks to are few (Graph, OAuth, the model API): the cache is small.
const MAX_CACHED_NAMES: usize = 64;

#[derive(Debug)]
pub struct CachingResolver {
    inner: DefaultResolver,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Instant, ResolvedSocketAddrs)>>,
}

impl CachingResolver {
    pub fn new(ttl: Duration) -> Self {
        CachingResolver {
            inner: DefaultResolver::default(),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }
}

impl Resolver for CachingResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        let Some(authority) = uri.authority() else {
            return self.inner.resolve(uri, config, timeout);
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if let Ok(ip) = host.parse::<IpAddr>() {
            let port = authority.port_u16().unwrap_or(match uri.scheme_str() {
                Some("https") => 443,
                _ => 80,
            });
            let mut addrs = self.empty();
            addrs.push(SocketAddr::new(ip, port));
            return Ok(addrs);
        }
        let key = authority.as_str().to_ascii_lowercase();
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock()
            && let Some((at, addrs)) = cache.get(&key)
            && now.duration_since(*at) < self.ttl
        {
            return Ok(addrs.clone());
        }
        let addrs = self.inner.resolve(uri, config, timeout)?;
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= MAX_CACHED_NAMES {
                cache.clear();
            }
            cache.insert(key, (now, addrs.clone()));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(r: &CachingResolver, url: &str) -> Vec<SocketAddr> {
        let uri: Uri = url.parse().expect("uri");
        let config = Config::default();
        let timeout = NextTimeout {
            after: ureq::unversioned::transport::time::Duration::from_secs(5),
            reason: ureq::Timeout::Resolve,
            per_read: None,
            per_write: None,
        };
        r.resolve(&uri, &config, timeout)
            .expect("resolves")
            .iter()
            .copied()
            .collect()
    }

    #[test]
    fn ip_literals_resolve_to_themselves_with_the_scheme_port() {
        let r = CachingResolver::new(Duration::from_secs(30));
        assert_eq!(
            resolve(&r, "http://127.0.0.1:8080/x"),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().expect("addr")]
        );
        assert_eq!(
            resolve(&r, "https://[::1]/x"),
            vec!["[::1]:443".parse::<SocketAddr>().expect("addr")]
        );
        assert!(
            r.cache.lock().expect("lock").is_empty(),
            "literals are not cached"
        );
    }

    #[test]
    fn names_are_cached_for_the_ttl() {
        let r = CachingResolver::new(Duration::from_secs(30));
        let first = resolve(&r, "http://localhost:9/");
        assert!(!first.is_empty());
        assert!(r.cache.lock().expect("lock").contains_key("localhost:9"));
        assert_eq!(resolve(&r, "http://LOCALHOST:9/"), first);

        let expired = CachingResolver::new(Duration::ZERO);
        resolve(&expired, "http://localhost:9/");
        let at = expired.cache.lock().expect("lock")["localhost:9"].0;
        resolve(&expired, "http://localhost:9/");
        assert!(
            expired.cache.lock().expect("lock")["localhost:9"].0 > at,
            "looked up again"
        );
    }
}
