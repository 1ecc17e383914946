//! TLS server configurations from PEM files: the HTTP API's (`--http-tls-*`) and the
//! embedded broker's TLS listener's (`--mqtt-tls-*`, with client certificates). Every
//! error names the setting and the file.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The TLS configuration from a PEM certificate chain and its private key.
pub fn http_tls_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key_der) = chain_and_key(cert, key, "http-tls")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .context("--http-tls-cert and --http-tls-key do not make a TLS configuration")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The embedded broker's TLS configuration (`--mqtt-tls-*`): with a client CA, clients may
/// present a certificate it signed (and are then identified by it); those that present
/// none are let through the handshake and authenticate as on the plain listener.
pub fn mqtt_tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let (chain, key_der) = chain_and_key(cert, key, "mqtt-tls")?;
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca, "mqtt-tls-client-ca")? {
                roots
                    .add(c)
                    .with_context(|| format!("--mqtt-tls-client-ca {}", ca.display()))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .with_context(|| format!("--mqtt-tls-client-ca {}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder
        .with_single_cert(chain, key_der)
        .context("--mqtt-tls-cert and --mqtt-tls-key do not make a TLS configuration")?;
    Ok(Arc::new(config))
}

/// The certificates of a PEM file; `flag` names the setting in errors.
fn certificates(path: &Path, flag: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let pem = std::fs::read(path).with_context(|| format!("--{flag} {}", path.display()))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("--{flag} {}: not a PEM certificate", path.display()))?;
    if chain.is_empty() {
        anyhow::bail!("--{flag} {}: no certificate in the file", path.display());
    }
    Ok(chain)
}

/// A certificate chain and its key, from `--<prefix>-cert` and `--<prefix>-key`.
fn chain_and_key(
    cert: &Path,
    key: &Path,
    prefix: &str,
) -> anyhow::Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)> {
    let chain = certificates(cert, &format!("{prefix}-cert"))?;
    let pem = std::fs::read(key).with_context(|| format!("--{prefix}-key {}", key.display()))?;
    let key_der = PrivateKeyDer::from_pem_slice(&pem)
        .with_context(|| format!("--{prefix}-key {}: not a PEM private key", key.display()))?;
    Ok((chain, key_der))
}
