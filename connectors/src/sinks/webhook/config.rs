//! The webhook action's configuration: `{"webhook": {"url": "https://...", "headers":
//! {...}, "timeout": "10s", "retry": {...}}}`.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::HeaderName;
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};

use super::sink::{Settings, Webhook};
use crate::delivery::retry::humantime_serde_compat;
use crate::delivery::secrets::{SecretMap, sounds_secret};
use crate::delivery::{ConfigError, Connection, Policy, RetryPolicy, SinkConfig, Validated};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// A named connection (`/v1/connections`) that gives the base URL and headers; the
    /// action then gives `path` below it instead of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// With a connection: the path below its URL; may use `${...}` templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `http://` or `https://` URL; may use `${...}` templates.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Extra request headers; values may use `${...}` templates.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Time limit for one request.
    #[serde(default = "default_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RetryPolicy>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

/// A webhook connection an operator defines: the receiver's base URL and the headers
/// (credentials) every request carries, which actions naming it do not repeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConnection {
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl Connection for WebhookConnection {
    const KIND: &'static str = "webhook";
    type Action = WebhookConfig;

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "headers",
            map: &mut self.headers,
            is_secret: secret_header,
        }]
    }

    /// The action as if written inline: the connection's URL with the action's `path`
    /// below it (the host is the connection's, whatever the path renders to), and the
    /// connection's headers with the action's own.
    fn apply(&self, name: &str, action: &WebhookConfig) -> Result<WebhookConfig, ConfigError> {
        if !action.url.is_empty() {
            return Err(WebhookConfig::invalid(format!(
                "url comes from the connection '{name}'; the action gives a path below it"
            )));
        }
        let mut headers = self.headers.clone();
        for (k, v) in &action.headers {
            if headers.keys().any(|h| h.eq_ignore_ascii_case(k)) {
                return Err(WebhookConfig::invalid(format!(
                    "header '{k}' is set by the connection '{name}'"
                )));
            }
            headers.insert(k.clone(), v.clone());
        }
        let url = match action.path.as_deref() {
            None | Some("") => self.url.clone(),
            Some(p) => format!(
                "{}/{}",
                self.url.trim_end_matches('/'),
                p.trim_start_matches('/')
            ),
        };
        Ok(WebhookConfig {
            connection: None,
            path: None,
            url,
            headers,
            ..action.clone()
        })
    }

    /// Checks the connection as an action using it would be.
    fn validate(&self) -> Result<(), ConfigError> {
        if self.url.contains("${") {
            return Err(WebhookConfig::invalid(
                "a connection's url cannot use ${...} templates; actions add a path",
            ));
        }
        let sample = WebhookConfig {
            connection: None,
            path: None,
            url: self.url.clone(),
            headers: self.headers.clone(),
            timeout: default_timeout(),
            retry: None,
        };
        sample.validate(&mut TemplateExprs::default()).map(|_| ())
    }
}

impl SinkConfig for WebhookConfig {
    const KIND: &'static str = "webhook";
    type Sink = Webhook;

    fn connection(&self) -> Option<&str> {
        self.connection.as_deref()
    }

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "headers",
            map: &mut self.headers,
            is_secret: secret_header,
        }]
    }

    /// A literal URL is checked here; a templated one when each output's URL is rendered.
    fn check_policy(&self, policy: &Policy) -> Result<(), ConfigError> {
        match reqwest::Url::parse(&self.url) {
            Ok(url) if !self.url.contains("${") => {
                policy.check_url(&url).map_err(Self::not_allowed)
            }
            _ => Ok(()),
        }
    }

    fn validate(&self, exprs: &mut TemplateExprs) -> Result<Validated<Settings>, ConfigError> {
        if self.path.is_some() {
            return Err(Self::invalid(
                "path is for actions that name a connection; give the whole url instead",
            ));
        }
        let url = Template::parse(&self.url, exprs)?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(Self::invalid(format!(
                "url must start with http:// or https://, got '{}'",
                self.url
            )));
        }
        if url.is_literal() {
            reqwest::Url::parse(&self.url)
                .map_err(|e| Self::invalid(format!("invalid url '{}': {e}", self.url)))?;
        }
        if self.timeout.is_zero() {
            return Err(Self::invalid("timeout must be more than 0".to_owned()));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let name = HeaderName::try_from(k.as_str())
                .map_err(|e| Self::invalid(format!("invalid header name '{k}': {e}")))?;
            headers.push((name, Template::parse(v, exprs)?));
        }
        let mut templates = vec![("url".to_owned(), url.clone())];
        templates.extend(
            headers
                .iter()
                .map(|(k, t)| (format!("headers.{k}"), t.clone())),
        );
        Ok(Validated {
            templates,
            retry: self.retry.clone().unwrap_or_default(),
            settings: Settings {
                url,
                headers,
                timeout: self.timeout,
            },
        })
    }
}

/// Whether a request header carries a credential: `Authorization`, a cookie, an API key.
fn secret_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    sounds_secret(&n) || n.contains("auth") || n.contains("cookie") || n.contains("key")
}
