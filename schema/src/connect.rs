//! Opening a Postgres connection, over TLS as the URL's `sslmode` says (libpq's meanings).
//!
//! tokio-postgres knows `sslmode` only up to `require` and not `sslrootcert`, so the URL's TLS
//! parameters are read by [`PgUrl`] and turned here into a rustls configuration per mode:
//!
//! - `disable`: plain TCP.
//! - `prefer`: TLS when the server offers it, certificate unchecked; plain when it does not.
//! - `require`: TLS or nothing, certificate unchecked (with `sslrootcert`, [`PgUrl`] has
//!   already made it `verify-ca`, as libpq does).
//! - `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
//! - `verify-full`: the chain, and the certificate must name the host.
//!
//! Trusted roots are the `sslrootcert` file or the system store (`rustls-native-certs`, the
//! store redis's rustls support already reads, and the one operators manage; it honours
//! `SSL_CERT_FILE`).

use std::sync::Arc;
use std::time::Duration;

use diesel_async::AsyncPgConnection;
use igsales_config::{PgUrl, SslMode, SslRoots};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::db::DbError;

/// How to reach one Postgres URL: the parsed client config and its TLS, built once and
/// reused for every connection (loading the system store is not free).
#[derive(Clone)]
pub struct PgConnector {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
}

impl PgConnector {
    /// Reads the URL and its trusted roots. Errors never carry the URL or its password.
    pub fn new(url: &PgUrl) -> Result<Self, DbError> {
        let mut config: tokio_postgres::Config = url
            .expose_without_tls_params()
            .parse()
            .map_err(|e| DbError::Connect(describe(&e)))?;
        let mode = url.ssl_mode();
        config.ssl_mode(match mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match mode {
            SslMode::Disable => None,
            _ => Some(MakeRustlsConnect::new(client_config(
                mode,
                url.ssl_roots(),
            )?)),
        };
        Ok(Self { config, tls })
    }

    /// One connection, within `timeout`.
    pub async fn connect(&self, timeout: Duration) -> Result<AsyncPgConnection, DbError> {
        tokio::time::timeout(timeout, self.connect_unbounded())
            .await
            .map_err(|_| DbError::Connect(format!("no answer within {timeout:?}")))?
    }

    async fn connect_unbounded(&self) -> Result<AsyncPgConnection, DbError> {
        let failed = |e: tokio_postgres::Error| DbError::Connect(describe(&e));
        let conn = match &self.tls {
            None => {
                let (client, connection) = self
                    .config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
            Some(tls) => {
                let (client, connection) =
                    self.config.connect(tls.clone()).await.map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, connection).await
            }
        };
        conn.map_err(|e| DbError::Connect(crate::db::connection_reason(&e)))
    }
}

/// A tokio-postgres error with its causes: its own `Display` is only the kind ("error
/// performing TLS handshake"), the cause says which ("invalid peer certificate:
/// UnknownIssuer"). Neither holds the URL.
fn describe(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let part = c.to_string();
        // An io::Error wrapping a rustls error shows it and then returns it as its source.
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        cause = c.source();
    }
    text
}

fn client_config(mode: SslMode, roots: &SslRoots) -> Result<ClientConfig, DbError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| DbError::Connect(format!("TLS setup failed: {e}")))?;
    let config = match mode {
        SslMode::VerifyFull => builder.with_root_certificates(load_roots(roots)?),
        SslMode::VerifyCa => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PgVerifier {
                roots: Some(Arc::new(load_roots(roots)?)),
                provider,
            })),
        // prefer and require: encrypted, but any certificate will do (libpq's meaning).
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PgVerifier {
                roots: None,
                provider,
            })),
    };
    Ok(config.with_no_client_auth())
}

fn load_roots(roots: &SslRoots) -> Result<RootCertStore, DbError> {
    let mut store = RootCertStore::empty();
    match roots {
        SslRoots::File(path) => {
            let shown = path.display();
            let bad = |why: String| DbError::Connect(format!("sslrootcert {shown}: {why}"));
            // Read first, so a missing file is told apart from one that holds no certificate.
            let pem = std::fs::read(path).map_err(|e| bad(format!("cannot be read ({e})")))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| bad(format!("is not valid PEM ({e})")))?;
                store
                    .add(cert)
                    .map_err(|e| bad(format!("holds an invalid certificate ({e})")))?;
            }
            if store.is_empty() {
                return Err(bad("holds no PEM certificate".to_owned()));
            }
        }
        SslRoots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default();
                return Err(DbError::Connect(format!(
                    "no system CA certificates could be loaded{why}; set sslrootcert to the CA's PEM file"
                )));
            }
        }
    }
    Ok(store)
}

/// `verify-ca` (with `roots`): the chain must lead to a trusted root, whatever host it names.
/// `prefer`/`require` (without): any certificate. Handshake signatures are always checked, so
/// the session is at least bound to the certificate's key.
#[derive(Debug)]
struct PgVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PgVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connector(query: &str) -> Result<PgConnector, String> {
        let url = PgUrl::parse(&format!("postgres://app:hunter2@db/igsales?{query}"))
            .map_err(|e| format!("parse: {e}"))?;
        PgConnector::new(&url).map_err(|e| e.to_string())
    }

    fn root_file(name: &str, contents: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("igsales-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).expect("write the root file");
        path
    }

    #[test]
    fn an_sslrootcert_that_cannot_be_used_is_named_with_what_is_wrong() {
        let err = connector("sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
            .err()
            .expect("missing file");
        assert!(
            err.contains("sslrootcert /nonexistent/ca.pem: cannot be read"),
            "{err}"
        );
        let empty = root_file("empty.pem", "not a certificate\n");
        let err = connector(&format!(
            "sslmode=verify-ca&sslrootcert={}",
            empty.display()
        ))
        .err()
        .expect("no certificate");
        assert!(err.contains("holds no PEM certificate"), "{err}");
        let broken = root_file(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        );
        let err = connector(&format!(
            "sslmode=verify-full&sslrootcert={}",
            broken.display()
        ))
        .err()
        .expect("not a certificate");
        assert!(err.contains("holds an invalid certificate"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        let _ = std::fs::remove_file(empty);
        let _ = std::fs::remove_file(broken);
    }

    #[test]
    fn modes_without_verification_need_no_roots_and_disable_needs_no_tls() {
        let plain = connector("sslmode=disable").expect("disable");
        assert!(plain.tls.is_none());
        for mode in ["sslmode=prefer", "sslmode=require", ""] {
            assert!(connector(mode).expect(mode).tls.is_some(), "{mode}");
        }
    }
}
