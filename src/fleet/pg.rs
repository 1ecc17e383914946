//! Connections to the fleet's PostgreSQL, from a URL as libpq users write it, with TLS as
//! libpq does it (`sslmode`, `sslrootcert`), so that operators reuse their URLs:
//!
//! | `sslmode` | TLS | the server's certificate |
//! |---|---|---|
//! | `disable` | never | |
//! | `prefer` (the default) | when the server offers it | not checked (with `sslrootcert`: its CA) |
//! | `require` | always | not checked (with `sslrootcert`: its CA) |
//! | `verify-ca` | always | signed by `sslrootcert`'s CA, or the system's roots |
//! | `verify-full` | always | as `verify-ca`, and issued for the host of the URL |
//!
//! Only `verify-full` keeps a machine in the middle out; the others guard against
//! eavesdroppers only. `sslcert`/`sslkey` (client certificates) are refused with a clear
//! error, not ignored.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use rustls::DigitallySignedStruct;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The TLS stream of a connection (plain when `sslmode` said so or the server offered
/// none).
pub type TlsStream = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;
/// A connection's driver, to spawn or to poll for notifications.
pub type Connection = tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>;

/// How to reach the database: the libpq URL's settings and the TLS they ask for.
#[derive(Clone)]
pub struct Target {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// How far the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Ca,
    Full,
}

impl Target {
    /// Reads a `postgres://` URL; reads `sslrootcert` now, so that a wrong path stops weir
    /// at startup.
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut kept = Vec::new();
        let (mut mode, mut root) = ("prefer".to_owned(), None::<PathBuf>);
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "sslmode" => mode = v.to_owned(),
                "sslrootcert" => root = Some(PathBuf::from(percent_decode(v))),
                "sslcert" | "sslkey" => {
                    bail!("{k}: client certificates are not supported; use a password")
                }
                _ => kept.push(pair),
            }
        }
        let (driver_mode, check) = match (mode.as_str(), &root) {
            ("disable", _) => ("disable", Check::Nothing),
            ("prefer" | "allow", None) => ("prefer", Check::Nothing),
            ("prefer" | "allow", Some(_)) => ("prefer", Check::Ca),
            ("require", None) => ("require", Check::Nothing),
            // libpq: require with a root certificate checks the CA, as verify-ca does.
            ("require" | "verify-ca", _) => ("require", Check::Ca),
            ("verify-full", _) => ("require", Check::Full),
            (other, _) => bail!(
                "sslmode={other}: expected disable, prefer, require, verify-ca or verify-full"
            ),
        };
        kept.push(match driver_mode {
            "disable" => "sslmode=disable",
            "prefer" => "sslmode=prefer",
            _ => "sslmode=require",
        });
        let url = format!("{base}?{}", kept.join("&"));
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| anyhow::anyhow!("{}: {e}", redact_url(&url)))?;
        let roots = match &root {
            Some(path) => {
                let mut roots = rustls::RootCertStore::empty();
                let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
                    .and_then(|certs| certs.collect::<Result<_, _>>())
                    .with_context(|| format!("sslrootcert {}", path.display()))?;
                if certs.is_empty() {
                    bail!("sslrootcert {} holds no certificate", path.display());
                }
                for c in certs {
                    roots
                        .add(c)
                        .with_context(|| format!("sslrootcert {}", path.display()))?;
                }
                roots
            }
            None => system_roots(),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match check {
            Check::Nothing => Arc::new(Unchecked(provider())),
            Check::Ca | Check::Full => {
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    Arc::new(provider()),
                )
                .build()
                .context("the root certificates")?;
                if check == Check::Full {
                    webpki
                } else {
                    Arc::new(CaOnly(webpki))
                }
            }
        };
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .context("TLS")?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Self {
            config,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// Connects; the connection's driver is returned to be spawned or polled.
    pub async fn connect(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), tokio_postgres::Error> {
        self.config.connect(self.tls.clone()).await
    }
}

/// Drives a connection on a task of its own and hands on the payloads of the
/// notifications it receives (LISTEN); the receiver ends when the connection does.
/// `what` names it in the log when it fails.
pub fn notifications(
    mut connection: Connection,
    what: &'static str,
) -> (
    tokio::sync::mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "{what} failed");
                    return;
                }
            }
        }
    });
    (rx, driver)
}

/// A database weir keeps things in (the rule store, the shadow store): its client,
/// connected again when the connection dropped.
pub struct Database {
    target: Target,
    /// The URL without its password, for errors and logs.
    shown: String,
    /// What it is, for errors and logs: "the rule store".
    what: &'static str,
    client: tokio::sync::Mutex<Option<tokio_postgres::Client>>,
}

impl Database {
    /// Connects to `url`; `setting` names the flag an unreadable URL came from.
    pub async fn open(
        url: &str,
        setting: &'static str,
        what: &'static str,
    ) -> anyhow::Result<Self> {
        let target = Target::parse(url).context(setting)?;
        let shown = redact_url(url);
        let client = connect(&target, &shown, what).await?;
        Ok(Self {
            target,
            shown,
            what,
            client: tokio::sync::Mutex::new(Some(client)),
        })
    }

    /// How to reach the database, for connections of others.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// The URL as logs may show it.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The client, connected again if the connection dropped.
    pub async fn client(
        &self,
    ) -> anyhow::Result<tokio::sync::MappedMutexGuard<'_, tokio_postgres::Client>> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(tokio_postgres::Client::is_closed) {
            *guard = Some(connect(&self.target, &self.shown, self.what).await?);
        }
        Ok(tokio::sync::MutexGuard::map(guard, |c| {
            c.as_mut().expect("connected above")
        }))
    }
}

/// A client of `target`, its connection driven on a task of its own.
async fn connect(
    target: &Target,
    shown: &str,
    what: &'static str,
) -> anyhow::Result<tokio_postgres::Client> {
    let (client, connection) = target
        .connect()
        .await
        .with_context(|| format!("cannot connect to {what} {shown}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "{what}'s connection dropped");
        }
    });
    Ok(client)
}

/// The URL as logs may show it: without a password.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:<redacted>{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The system's root certificates (those it cannot read are skipped).
fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for e in &found.errors {
        tracing::debug!(error = %e, "a system root certificate could not be read");
    }
    roots.add_parsable_certificates(found.certs);
    roots
}

/// `%2F` and the like in a URL's query value.
fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(b) = v
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `prefer` and `require` without a root certificate, as libpq: the connection is
/// encrypted, the certificate not checked. The handshake's signatures still are.
#[derive(Debug)]
struct Unchecked(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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
            &self.0.signature_verification_algorithms,
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the certificate must chain to a trusted root; the name in it is not
/// compared with the host.
#[derive(Debug)]
struct CaOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for CaOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        use rustls::{CertificateError, Error};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_password_in_logs() {
        assert_eq!(
            redact_url("postgres://weir:s3cret@db:5432/weir"),
            "postgres://weir:<redacted>@db:5432/weir"
        );
        assert_eq!(redact_url("postgres://db/weir"), "postgres://db/weir");
    }

    #[test]
    fn libpq_urls_are_read() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        for ok in [
            "postgres://u:p@db/weir",
            "postgres://u:p@db/weir?sslmode=disable",
            "postgres://u:p@db/weir?sslmode=require&application_name=weir",
            "postgres://u:p@db/weir?sslmode=verify-full",
            "postgres://u:p@db/weir?sslmode=verify-ca",
        ] {
            Target::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e:#}"));
        }
        let err = |url: &str| format!("{:#}", Target::parse(url).err().expect(url));
        assert!(err("postgres://db/w?sslmode=sometimes").contains("sslmode=sometimes"));
        assert!(err("postgres://db/w?sslcert=/c.pem").contains("client certificates"));
        assert!(
            err("postgres://db/w?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .starts_with("sslrootcert /nonexistent/ca.pem")
        );
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = format!("postgres://db/w?sslrootcert={}", empty.display());
        assert!(err(&url).contains("holds no certificate"), "{}", err(&url));
        assert_eq!(percent_decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
