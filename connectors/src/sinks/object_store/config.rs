//! The object-storage action's configuration: `{"object_store": {"url":
//! "s3://lake/raw/facility=${topic(3)}/", "format": "parquet", "max_rows": 100000,
//! "max_bytes": 67108864, "max_age": "60s", "options": {...}}}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};

use super::format::Format;
use super::sink::{ObjectStoreSink, Settings};
use super::store::{Cloud, Target};
use crate::delivery::policy::NotAllowed;
use crate::delivery::retry::humantime_serde_compat;
use crate::delivery::secrets::{SecretMap, sounds_secret};
use crate::delivery::{ConfigError, Connection, Policy, SinkConfig, Validated};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
    /// A named connection (`/v1/connections`) that gives the store, its prefix and its
    /// options; the action then gives `path` below the prefix instead of `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// With a connection: the path below its prefix; may use `${...}` templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// `s3://bucket/prefix` (also `gs://`, `az://`, `abfss://`) or `file:///absolute/path`;
    /// the path may use `${...}` templates to partition the files
    /// (`s3://lake/facility=${topic(3)}/`). Without a URL,
    /// files go to `<output dir>/<rule name>/` (`--output-dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default)]
    pub format: Format,
    /// Roll the file after this many rows.
    #[serde(default = "default_max_rows")]
    pub max_rows: u64,
    /// Roll the file once it holds this many bytes (of JSON lines, before conversion).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Roll the file when it is this old.
    #[serde(default = "default_max_age", with = "humantime_serde_compat")]
    pub max_age: Duration,
    /// `object_store` settings of the store: for S3 `endpoint`, `region`,
    /// `access_key_id`, `secret_access_key`, `allow_http`, `virtual_hosted_style_request`,
    /// ...; for GCS and Azure their own keys, from an allowlist (see `docs/security.md`).
    /// The standard `AWS_*`, `GOOGLE_*` and `AZURE_*` environment variables apply only
    /// where the operator allows ambient credentials. None apply to `file://`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

fn default_max_rows() -> u64 {
    100_000
}
fn default_max_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_age() -> Duration {
    Duration::from_secs(60)
}

/// An object-store connection an operator defines: the store and prefix (`url`) and its
/// options (credentials, endpoint), which actions naming it do not repeat. Unlike a rule's
/// inline destination, it may use weir's own credentials and any option.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConnection {
    pub url: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
}

impl Connection for ObjectStoreConnection {
    const KIND: &'static str = "object_store";
    type Action = ObjectStoreConfig;

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "options",
            map: &mut self.options,
            is_secret: secret_option,
        }]
    }

    /// The action as if written inline: the connection's URL with the action's `path`
    /// below it, and the connection's options.
    fn apply(
        &self,
        name: &str,
        action: &ObjectStoreConfig,
    ) -> Result<ObjectStoreConfig, ConfigError> {
        if action.url.is_some() || !action.options.is_empty() {
            return Err(ObjectStoreConfig::invalid(format!(
                "url and options come from the connection '{name}'; the action gives a path \
                 below it"
            )));
        }
        let path = action.path.as_deref().unwrap_or_default();
        if path.starts_with('/') || path.split('/').any(|s| s == ".." || s == ".") {
            return Err(ObjectStoreConfig::invalid(format!(
                "path '{path}' must be relative to the connection's prefix, without '.' or '..'"
            )));
        }
        let url = match path {
            "" => self.url.clone(),
            p => format!("{}/{p}", self.url.trim_end_matches('/')),
        };
        Ok(ObjectStoreConfig {
            connection: None,
            path: None,
            url: Some(url),
            options: self.options.clone(),
            ..action.clone()
        })
    }

    /// Checks the connection as an action using it would be.
    fn validate(&self) -> Result<(), ConfigError> {
        let sample = ObjectStoreConfig {
            connection: None,
            path: None,
            url: Some(self.url.clone()),
            format: Format::default(),
            max_rows: default_max_rows(),
            max_bytes: default_max_bytes(),
            max_age: default_max_age(),
            options: self.options.clone(),
        };
        sample.validate(&mut TemplateExprs::default()).map(|_| ())
    }
}

struct Parsed {
    target: Target,
    /// The path under the store's root; `${...}` templates allowed.
    path: String,
}

impl ObjectStoreConfig {
    fn parse(&self) -> Result<Parsed, ConfigError> {
        if self.path.is_some() {
            return Err(Self::invalid(
                "path is for actions that name a connection; give the whole url instead",
            ));
        }
        let Some(url) = &self.url else {
            if let Some(k) = self.options.keys().next() {
                return Err(Self::invalid(format!(
                    "option '{k}' does not apply to the local output directory"
                )));
            }
            return Ok(Parsed {
                target: Target::OutputDir,
                path: String::new(),
            });
        };
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Self::invalid(format!(
                    "url '{url}' must be an absolute path: file:///dir"
                )));
            }
            if let Some(k) = self.options.keys().next() {
                return Err(Self::invalid(format!(
                    "option '{k}' does not apply to file:// URLs"
                )));
            }
            // The fixed part is the directory; templates may only follow it.
            let fixed_end = path
                .find("${")
                .map_or(path.len(), |i| path[..i].rfind('/').map_or(0, |j| j + 1));
            return Ok(Parsed {
                target: Target::Local(PathBuf::from(&path[..fixed_end])),
                path: path[fixed_end..].to_owned(),
            });
        }
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let Some(kind) = Cloud::from_scheme(scheme) else {
            return Err(Self::invalid(format!(
                "url '{url}': scheme '{scheme}' is not supported; use s3://, gs://, az://, \
                 abfss:// or file:///"
            )));
        };
        let (bucket, path) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() || bucket.contains("${") {
            return Err(Self::invalid(format!(
                "url '{url}': the bucket must be named literally: {scheme}://bucket/prefix"
            )));
        }
        if let Some(k) = self.options.keys().find(|k| !kind.knows(k)) {
            return Err(Self::invalid(format!(
                "unknown {} option '{k}' (examples: {})",
                kind.name(),
                kind.examples()
            )));
        }
        Ok(Parsed {
            target: Target::Cloud {
                kind,
                base: format!("{scheme}://{bucket}"),
            },
            path: path.to_owned(),
        })
    }
}

impl ObjectStoreConfig {
    /// The options of a cloud destination against the policy: each on the allowlist (or
    /// allowed by the operator), endpoints not at refused addresses, and credentials of
    /// the destination's own.
    fn check_options(&self, kind: Cloud, policy: &Policy) -> Result<(), ConfigError> {
        let setting = "the operator setting allow_store_options (--allow-store-options) \
                       would allow it";
        let mut canonical = BTreeMap::new();
        for (k, v) in &self.options {
            let c = kind.canonical(k).unwrap_or_else(|| k.to_ascii_lowercase());
            let by_operator = policy
                .store_options
                .iter()
                .any(|o| kind.canonical(o).as_deref() == Some(c.as_str()));
            let listed = kind.allowed().contains(&c.as_str()) || CLIENT.contains(&c.as_str());
            if !listed && !by_operator {
                return Err(Self::not_allowed(NotAllowed(format!(
                    "option '{k}' is not allowed in a rule: {}; {setting}",
                    refusal(&c)
                ))));
            }
            if ENDPOINTS.contains(&c.as_str()) {
                let url = reqwest::Url::parse(v)
                    .map_err(|e| Self::invalid(format!("option '{k}': '{v}' is not a URL: {e}")))?;
                policy
                    .check_url(&url)
                    .map_err(|e| Self::not_allowed(NotAllowed(format!("option '{k}': {}", e.0))))?;
            }
            canonical.insert(c, v.as_str());
        }
        if !policy.allow_ambient_credentials
            && let Err(needed) = kind.own_credentials(&canonical)
        {
            return Err(Self::not_allowed(NotAllowed(format!(
                "a {} destination in a rule must carry its own credentials ({needed}); \
                 without them weir would use its own (environment, instance metadata); the \
                 operator setting allow_ambient_credentials (--allow-ambient-credentials) \
                 would allow it",
                kind.name()
            ))));
        }
        Ok(())
    }
}

/// The HTTP client options every store takes that an inline destination may set: not
/// `allow_invalid_certificates`.
const CLIENT: &[&str] = &[
    "allow_http",
    "connect_timeout",
    "default_content_type",
    "http1_only",
    "http2_only",
    "http2_keep_alive_interval",
    "http2_keep_alive_timeout",
    "http2_keep_alive_while_idle",
    "http2_max_frame_size",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "randomize_addresses",
    "timeout",
    "user_agent",
];

/// The options that hold an address weir sends requests to.
const ENDPOINTS: &[&str] = &[
    "aws_endpoint",
    "aws_endpoint_url_s3",
    "azure_storage_endpoint",
    "google_base_url",
    "proxy_url",
];

/// Why an option is not on the allowlist, by its canonical name.
fn refusal(canonical: &str) -> &'static str {
    match canonical {
        c if c.ends_with("_file")
            || c == "google_service_account"
            || c == "google_application_credentials" =>
        {
            "it reads a local file"
        }
        "azure_use_azure_cli" => "it runs a program",
        "allow_invalid_certificates" => "it turns off certificate checks",
        "aws_bucket" | "google_bucket" | "azure_container_name" => {
            "the bucket or container is named in the url"
        }
        c if c.contains("metadata")
            || c.contains("imds")
            || c.contains("container_credentials")
            || c.contains("msi")
            || c.contains("fabric")
            || c.contains("role")
            || c.contains("sts")
            || c.contains("authority_host")
            || c == "azure_object_id" =>
        {
            "it uses weir's own credentials or a credential service"
        }
        _ => "it is not on the list of options rules may set",
    }
}

impl SinkConfig for ObjectStoreConfig {
    const KIND: &'static str = "object_store";
    type Sink = ObjectStoreSink;

    fn connection(&self) -> Option<&str> {
        self.connection.as_deref()
    }

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "options",
            map: &mut self.options,
            is_secret: secret_option,
        }]
    }

    fn check_policy(&self, policy: &Policy) -> Result<(), ConfigError> {
        match self.parse()?.target {
            Target::OutputDir => Ok(()),
            Target::Local(dir) => policy.check_file_dir(&dir).map_err(Self::not_allowed),
            Target::Cloud { kind, .. } => self.check_options(kind, policy),
        }
    }

    fn validate(&self, exprs: &mut TemplateExprs) -> Result<Validated<Settings>, ConfigError> {
        if self.max_rows == 0 || self.max_bytes == 0 || self.max_age.is_zero() {
            return Err(Self::invalid(
                "max_rows, max_bytes and max_age must be more than 0",
            ));
        }
        let parsed = self.parse()?;
        let t = Template::parse(&parsed.path, exprs)?;
        let path = (!t.is_literal()).then_some(t);
        let templates = path
            .iter()
            .map(|t| ("path".to_owned(), t.clone()))
            .collect();
        Ok(Validated::new(
            Settings {
                target: parsed.target,
                options: self.options.clone(),
                path,
                prefix: parsed.path,
                format: self.format,
                max_rows: self.max_rows,
                max_bytes: self.max_bytes,
                max_age: self.max_age,
            },
            templates,
        ))
    }
}

/// Whether an `object_store` option holds a secret: a secret key, a session or SAS token,
/// an account or service-account key (not a key's id).
fn secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    sounds_secret(&k) || (k.contains("key") && !k.contains("key_id"))
}
