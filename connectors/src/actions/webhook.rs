//! The webhook action: HTTP POST of each output as JSON. Transport errors, timeouts, 429 and
//! 5xx answers are retried by the worker's policy; other 4xx answers are final and go to
//! the error action.

use std::collections::BTreeMap;
use std::time::Duration;

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};

use super::{ActionContext, ConfigError, Delivery, DeliveryError, NOT_ATTEMPTED, render};
use crate::retry::{RetryPolicy, humantime_serde_compat};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// `http://` or `https://` URL; may use `${...}` templates.
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

impl WebhookConfig {
    pub(crate) fn validate(
        &self,
        exprs: &mut TemplateExprs,
    ) -> Result<(Template, Vec<(HeaderName, Template)>), ConfigError> {
        let url = Template::parse(&self.url, exprs)?;
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "webhook",
                format!(
                    "url must start with http:// or https://, got '{}'",
                    self.url
                ),
            ));
        }
        if url.is_literal() {
            reqwest::Url::parse(&self.url).map_err(|e| {
                ConfigError::invalid("webhook", format!("invalid url '{}': {e}", self.url))
            })?;
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid(
                "webhook",
                "timeout must be more than 0",
            ));
        }
        let mut headers = Vec::with_capacity(self.headers.len());
        for (k, v) in &self.headers {
            let name = HeaderName::try_from(k.as_str()).map_err(|e| {
                ConfigError::invalid("webhook", format!("invalid header name '{k}': {e}"))
            })?;
            headers.push((name, Template::parse(v, exprs)?));
        }
        Ok((url, headers))
    }
}

pub struct Webhook {
    url: Template,
    headers: Vec<(HeaderName, Template)>,
    timeout: Duration,
    http: reqwest::Client,
}

impl Webhook {
    pub(crate) fn new(
        c: &WebhookConfig,
        exprs: &mut TemplateExprs,
        ctx: &ActionContext,
    ) -> Result<Self, ConfigError> {
        let (url, headers) = c.validate(exprs)?;
        Ok(Self {
            url,
            headers,
            timeout: c.timeout,
            http: ctx.http.clone(),
        })
    }

    /// One request at a time; after a retry-worthy failure the rest are not tried (the
    /// receiver is in trouble, and trying them would reorder the outputs).
    pub(crate) async fn deliver_batch(
        &mut self,
        batch: &[Delivery],
    ) -> Vec<Result<(), DeliveryError>> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let r = self.deliver(d).await;
            let stop = matches!(&r, Err(e) if e.retryable);
            out.push(r);
            if stop {
                break;
            }
        }
        while out.len() < batch.len() {
            out.push(Err(DeliveryError::retryable(
                NOT_ATTEMPTED,
                "not attempted: an earlier output of the batch failed",
            )));
        }
        out
    }

    async fn deliver(&mut self, d: &Delivery) -> Result<(), DeliveryError> {
        let url = render(&self.url, d);
        let mut req = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(d.payload.clone());
        for (name, value) in &self.headers {
            let v = render(value, d);
            let v = HeaderValue::try_from(v.as_str()).map_err(|e| {
                DeliveryError::fatal("invalid_header", format!("header {name}: value '{v}': {e}"))
            })?;
            req = req.header(name, v);
        }
        let resp = req.send().await.map_err(|e| {
            if e.is_builder() {
                DeliveryError::fatal("invalid_url", format!("POST {url}: {e}"))
            } else if e.is_timeout() {
                DeliveryError::retryable(
                    "timeout",
                    format!("POST {url}: timed out after {:?}", self.timeout),
                )
            } else {
                DeliveryError::retryable("connection", format!("POST {url}: {e}"))
            }
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let message = format!("POST {url}: HTTP {status}");
        if status.as_u16() == 429 || status.is_server_error() {
            Err(DeliveryError::retryable("http_status", message))
        } else {
            Err(DeliveryError::fatal("http_status", message))
        }
    }
}
