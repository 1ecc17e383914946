//! The API as `weir rules` talks to it: the token on every request, answers read as
//! JSON, failures told as the API gave them.

use std::collections::BTreeMap;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::args::RulesArgs;

/// The API, with the token on every request.
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An answer of the API: its status and JSON body (`Null` when it had none).
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

impl Answer {
    /// The API's error message, with each failed test's difference.
    pub fn error(&self) -> String {
        let e = &self.body["error"];
        let mut out = match e["message"].as_str() {
            Some(m) => format!("{} ({})", m, e["code"].as_str().unwrap_or("error")),
            None => format!("HTTP {}: {}", self.status, self.body),
        };
        for f in e["failures"].as_array().into_iter().flatten() {
            out.push_str(&failure_text(f));
        }
        out
    }
}

pub fn failure_text(f: &Value) -> String {
    let name = match f["name"].as_str() {
        Some(n) => format!(" ({n})"),
        None => String::new(),
    };
    let mut out = format!("\n  test {}{name}: - expected, + got", f["test"]);
    for line in f["diff"].as_str().unwrap_or("").lines() {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}

impl Client {
    pub fn new(args: &RulesArgs) -> anyhow::Result<Self> {
        let token = match (&args.token, &args.token_file) {
            (Some(_), Some(_)) => bail!("give --token or --token-file, not both"),
            (Some(t), None) => Some(t.trim().to_owned()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let base = args.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https://, got '{base}'");
        }
        Ok(Self {
            http: builder.build().context("cannot set up the HTTP client")?,
            base,
            token,
        })
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        self.call_if(method, path, body, None).await
    }

    /// [`Client::call`] with a precondition header (`If-Match`, `If-None-Match`).
    pub async fn call_if(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        condition: Option<(&str, String)>,
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some((name, value)) = condition {
            req = req.header(name, value);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach weir at {}", self.base))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.context("reading weir's answer")?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        let answer = Answer { status, body };
        if status == 401 || status == 403 {
            bail!("{}", answer.error());
        }
        Ok(answer)
    }

    /// weir's rules, by name, each as the body that would create it, and its version.
    pub async fn rules(&self) -> anyhow::Result<BTreeMap<String, (Value, u64)>> {
        let a = self.call(reqwest::Method::GET, "/v1/rules", None).await?;
        if a.status != 200 {
            bail!("listing the rules: {}", a.error());
        }
        let mut out = BTreeMap::new();
        for r in a.body["rules"].as_array().into_iter().flatten() {
            let Some(name) = r["name"].as_str() else {
                continue;
            };
            out.insert(
                name.to_owned(),
                (spec_of(r), r["version"].as_u64().unwrap_or(0)),
            );
        }
        Ok(out)
    }
}

/// A rule as weir shows it, less what weir adds (name, source, times, topic filter):
/// the body of a PUT.
pub fn spec_of(rule: &Value) -> Value {
    let mut spec = rule.clone();
    if let Some(o) = spec.as_object_mut() {
        for k in [
            "name",
            "source",
            "created_at_ms",
            "updated_at_ms",
            "topic_filter",
            "version",
        ] {
            o.remove(k);
        }
    }
    spec
}
