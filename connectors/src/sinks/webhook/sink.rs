//! The running webhook sink: one POST per output, one at a time, each rendered URL held to
//! the operator's policy, each answer sorted into delivered, retry and refused.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use weir_engine::template::Template;

use crate::delivery::policy::not_allowed_in;
use crate::delivery::{ConfigError, Delivery, Outcome, Policy, Reason, Sink, SinkContext};

/// A webhook action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) url: Template,
    pub(super) headers: Vec<(HeaderName, Template)>,
    pub(super) timeout: Duration,
}

pub struct Webhook {
    url: Template,
    headers: Vec<(HeaderName, Template)>,
    timeout: Duration,
    http: reqwest::Client,
    policy: Arc<Policy>,
}

impl Sink for Webhook {
    type Settings = Settings;

    async fn build(settings: &Settings, ctx: &SinkContext) -> Result<Self, ConfigError> {
        Ok(Self {
            url: settings.url.clone(),
            headers: settings.headers.clone(),
            timeout: settings.timeout,
            http: ctx.http.clone(),
            policy: ctx.policy.clone(),
        })
    }

    /// One request at a time; after a retry-worthy failure the rest are not tried (the
    /// receiver is in trouble, and trying them would reorder the outputs).
    async fn deliver_batch(&mut self, batch: &[Delivery]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(batch.len());
        for d in batch {
            let o = self.deliver(d).await;
            let stop = matches!(o, Outcome::Retry(_));
            out.push(o);
            if stop {
                break;
            }
        }
        while out.len() < batch.len() {
            out.push(Outcome::retry(
                Reason::NotAttempted,
                "not attempted: an earlier output of the batch failed",
            ));
        }
        out
    }
}

impl Webhook {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        let url = d.render(&self.url);
        // A literal URL was checked when the rule was submitted.
        if !self.url.is_literal()
            && let Err(refused) = self.allowed(&url).await
        {
            return refused;
        }
        let mut req = self
            .http
            .post(&url)
            .timeout(self.timeout)
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .body(d.payload.clone());
        for (name, value) in &self.headers {
            let v = d.render(value);
            match HeaderValue::try_from(v.as_str()) {
                Ok(v) => req = req.header(name, v),
                Err(e) => {
                    return Outcome::dead_letter(
                        Reason::InvalidHeader,
                        format!(
                            "header {name}: the rendered value is not a valid header value: {e}"
                        ),
                    );
                }
            }
        }
        match req.send().await {
            Ok(resp) => answer(&url, resp.status()),
            Err(e) if e.is_builder() => {
                Outcome::dead_letter(Reason::InvalidUrl, format!("POST {url}: {e}"))
            }
            Err(e) if not_allowed_in(&e).is_some() => {
                let why = not_allowed_in(&e).map(|n| n.0.clone()).unwrap_or_default();
                Outcome::dead_letter(Reason::NotAllowed, format!("POST {url}: {why}"))
            }
            Err(e) if e.is_timeout() => Outcome::retry(
                Reason::Timeout,
                format!("POST {url}: timed out after {:?}", self.timeout),
            ),
            Err(e) => Outcome::retry(Reason::Connection, format!("POST {url}: {e}")),
        }
    }
}

impl Webhook {
    /// Whether the operator's policy lets this output go to `url`. A name is resolved
    /// here only when the port is one of weir's listeners' (a name may lead back to
    /// weir); the client's resolver keeps every name off link-local addresses.
    async fn allowed(&self, url: &str) -> Result<(), Outcome> {
        let refused =
            |why: String| Outcome::dead_letter(Reason::NotAllowed, format!("POST {url}: {why}"));
        let Ok(parsed) = reqwest::Url::parse(url) else {
            return Ok(()); // the client says what is wrong with it
        };
        self.policy.check_url(&parsed).map_err(|e| refused(e.0))?;
        let (Some(host), Some(port)) = (parsed.host_str(), parsed.port_or_known_default()) else {
            return Ok(());
        };
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if !self.policy.is_weir_port(port) || literal.parse::<std::net::IpAddr>().is_ok() {
            return Ok(());
        }
        let addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| {
            Outcome::retry(
                Reason::Connection,
                format!("POST {url}: cannot resolve {host}: {e}"),
            )
        })?;
        for addr in addrs {
            self.policy
                .check_addr(addr)
                .map_err(|e| refused(format!("{host}: {e}")))?;
        }
        Ok(())
    }
}

/// What an HTTP status says about a delivery: 2xx delivered; 429 and 5xx worth another
/// try; any other status refused for good.
pub(super) fn answer(url: &str, status: StatusCode) -> Outcome {
    if status.is_success() {
        return Outcome::Delivered;
    }
    let message = format!("POST {url}: HTTP {status}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Outcome::retry(Reason::HttpStatus, message)
    } else {
        Outcome::dead_letter(Reason::HttpStatus, message)
    }
}
