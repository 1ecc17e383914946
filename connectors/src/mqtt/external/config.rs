//! How weir connects to an external broker: its URL, credentials, client id, session,
//! QoS, share group, TLS files and keep-alive, checked without connecting.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::ExternalError;

/// How weir connects to an external broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub client_id: String,
    /// Start a clean session (true) or resume the broker's stored session (false).
    pub clean_session: bool,
    /// QoS of weir's subscriptions.
    pub qos: u8,
    /// Subscribe as `$share/<group>/<filter>` so that replicas split the stream.
    pub share_group: Option<String>,
    /// PEM file of the CA that signed the broker's certificate (else the system's roots).
    pub ca_file: Option<PathBuf>,
    /// PEM files of weir's client certificate and key, for mutual TLS.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
    pub keep_alive: Duration,
}

pub(super) struct Endpoint {
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) tls: bool,
}

fn parse_url(url: &str) -> Result<Endpoint, ExternalError> {
    let err = |m: &str| ExternalError::Url {
        url: url.to_owned(),
        message: m.to_owned(),
    };
    let (tls, rest) = if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (false, r)
    } else if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (true, r)
    } else {
        return Err(err("must start with mqtt:// or mqtts://"));
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') || rest.contains('@') {
        return Err(err(
            "give only host and port; credentials go in --broker-username/--broker-password",
        ));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
            h,
            p.parse::<u16>()
                .map_err(|_| err("port is not a number from 1 to 65535"))?,
        ),
        _ => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(err("host is empty"));
    }
    Ok(Endpoint {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        tls,
    })
}

impl ExternalConfig {
    /// Checks the configuration without connecting.
    pub fn validate(&self) -> Result<(), ExternalError> {
        parse_url(&self.url)?;
        if self.qos > 2 {
            return Err(ExternalError::Invalid(format!(
                "broker QoS must be 0, 1 or 2, got {}",
                self.qos
            )));
        }
        if self.client_id.is_empty() && !self.clean_session {
            return Err(ExternalError::Invalid(
                "a persistent session (clean session off) needs a client id".to_owned(),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            return Err(ExternalError::Invalid(
                "a client certificate needs its key, and a key its certificate".to_owned(),
            ));
        }
        if let Some(g) = &self.share_group
            && (g.is_empty() || g.contains(['/', '+', '#']))
        {
            return Err(ExternalError::Invalid(format!(
                "share group '{g}' must be non-empty and contain no '/', '+' or '#'"
            )));
        }
        Ok(())
    }

    /// The filter weir subscribes to for a rule's filter.
    pub fn subscription(&self, filter: &str) -> String {
        match &self.share_group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter.to_owned(),
        }
    }

    /// Where the broker is, and whether to speak TLS.
    pub(super) fn endpoint(&self) -> Result<Endpoint, ExternalError> {
        parse_url(&self.url)
    }
}

#[cfg(test)]
impl ExternalConfig {
    /// A plain connection to `url` with the defaults, for unit tests.
    pub(crate) fn for_test(url: &str) -> Self {
        Self {
            url: url.to_owned(),
            username: None,
            password: None,
            client_id: "weir".to_owned(),
            clean_session: false,
            qos: 1,
            share_group: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            keep_alive: Duration::from_secs(30),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ExternalConfig {
        ExternalConfig::for_test(url)
    }

    #[test]
    fn parses_broker_urls() {
        let e = parse_url("mqtt://broker:1884").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("broker", 1884, false));
        let e = parse_url("mqtts://broker").unwrap();
        assert_eq!((e.port, e.tls), (8883, true));
        let e = parse_url("mqtt://127.0.0.1").unwrap();
        assert_eq!(e.port, 1883);
        assert!(parse_url("http://broker").is_err());
        assert!(parse_url("mqtt://broker:x").is_err());
        assert!(parse_url("mqtt://user:pw@broker:1883").is_err());
    }

    #[test]
    fn validates_and_shares() {
        let mut c = config("mqtt://localhost:1883");
        assert!(c.validate().is_ok());
        assert_eq!(c.subscription("a/+"), "a/+");
        c.share_group = Some("weir".to_owned());
        assert_eq!(c.subscription("a/+"), "$share/weir/a/+");
        c.share_group = Some("a/b".to_owned());
        assert!(c.validate().is_err());
        let mut c = config("mqtt://localhost");
        c.client_id.clear();
        assert!(c.validate().is_err());
        c.clean_session = true;
        assert!(c.validate().is_ok());
        c.client_key = Some("k.pem".into());
        assert!(c.validate().is_err());
    }
}
