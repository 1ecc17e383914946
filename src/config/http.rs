//! The HTTP API: where it listens, HTTPS, and which browser pages and host names may call
//! it.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address of the HTTP API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub http_listen: SocketAddr,
    /// PEM certificate chain for the HTTP API: with --http-tls-key, the API speaks HTTPS
    /// only [default: none, plain HTTP].
    #[arg(long)]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert.
    #[arg(long)]
    pub http_tls_key: Option<PathBuf>,
    /// Origins of browser pages that may call the API (comma-separated), e.g.
    /// https://console.example.com [default: none].
    #[arg(long, value_delimiter = ',')]
    pub http_allowed_origins: Vec<String>,
    /// Host names the API answers to (comma-separated), against DNS rebinding [default:
    /// any].
    #[arg(long, value_delimiter = ',')]
    pub http_allowed_hosts: Vec<String>,
}

/// How the HTTP API is served.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub listen: SocketAddr,
    /// The certificate chain and key files, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub browsers: Browsers,
}

/// Which browser pages (`Origin`) and host names (`Host`) may call the API.
#[derive(Debug, Clone, Default)]
pub struct Browsers {
    /// Origins whose pages may call the API (`https://console.example.com`); a request
    /// from any other page is refused. Empty: none.
    pub origins: Vec<String>,
    /// Host names the API answers to (`weir.example.com`, with or without the port),
    /// against DNS rebinding. Empty: any.
    pub hosts: Vec<String>,
}

impl HttpArgs {
    pub fn resolve(&self) -> anyhow::Result<HttpSettings> {
        let tls = match (&self.http_tls_cert, &self.http_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => bail!("--http-tls-cert and --http-tls-key go together"),
        };
        Ok(HttpSettings {
            listen: self.http_listen,
            tls,
            browsers: Browsers {
                origins: self.http_allowed_origins.clone(),
                hosts: self.http_allowed_hosts.clone(),
            },
        })
    }
}
