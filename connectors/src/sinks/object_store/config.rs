//! The object-storage action's configuration: `{"object_store": {"url":
//! "s3://lake/raw/facility=${topic(3)}/", "format": "parquet", "max_rows": 100000,
//! "max_bytes": 67108864, "max_age": "60s", "options": {...}}}`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use serde::{Deserialize, Serialize};
use weir_engine::template::{Template, TemplateExprs};

use super::ObjectStoreSink;
use crate::sink::retry::humantime_serde_compat;
use crate::sink::secrets::{SecretMap, sounds_secret};
use crate::sink::{ConfigError, SinkConfig, Validated};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Jsonl,
    Parquet,
}

impl Format {
    pub(super) fn extension(self) -> &'static str {
        match self {
            Self::Jsonl => "jsonl",
            Self::Parquet => "parquet",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ObjectStoreConfig {
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
    /// ...; for GCS and Azure their own keys. The standard `AWS_*`, `GOOGLE_*` and
    /// `AZURE_*` environment variables apply too. None apply to `file://`.
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

/// Where the files go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// The rule's folder in the output directory (`--output-dir`): no URL was given.
    OutputDir,
    /// A local directory (`file://`).
    Local(PathBuf),
    /// A cloud store: `<scheme>://<bucket or container>`.
    Cloud { kind: Cloud, base: String },
}

/// The cloud stores this build reaches, by URL scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cloud {
    /// `s3://`, `s3a://`: Amazon S3 and S3-compatible stores.
    S3,
    /// `gs://`: Google Cloud Storage.
    Gcs,
    /// `az://`, `azure://`, `abfs://`, `abfss://`: Azure Blob Storage / ADLS Gen2.
    Azure,
}

impl Cloud {
    fn from_scheme(scheme: &str) -> Option<Self> {
        match scheme {
            "s3" | "s3a" => Some(Self::S3),
            "gs" => Some(Self::Gcs),
            "az" | "azure" | "abfs" | "abfss" => Some(Self::Azure),
            _ => None,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Self::S3 => "S3",
            Self::Gcs => "Google Cloud Storage",
            Self::Azure => "Azure",
        }
    }

    /// Whether `key` is one of this store's `object_store` settings.
    fn knows(self, key: &str) -> bool {
        let key = key.to_ascii_lowercase();
        match self {
            Self::S3 => key.parse::<AmazonS3ConfigKey>().is_ok(),
            Self::Gcs => key.parse::<GoogleConfigKey>().is_ok(),
            Self::Azure => key.parse::<AzureConfigKey>().is_ok(),
        }
    }

    fn examples(self) -> &'static str {
        match self {
            Self::S3 => {
                "endpoint, region, access_key_id, secret_access_key, allow_http, \
                 virtual_hosted_style_request"
            }
            Self::Gcs => "service_account_path, service_account_key, application_credentials",
            Self::Azure => "account_name, access_key, sas_key, use_emulator, endpoint",
        }
    }

    /// The store for `base` (`<scheme>://<bucket>`), from the environment and `options`.
    pub(super) fn build(
        self,
        base: &str,
        options: &BTreeMap<String, String>,
    ) -> Result<Arc<dyn ObjectStore>, String> {
        // weir retries failed uploads itself, with the files waiting on disk; the client
        // only smooths over a blip.
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let unknown = |k: &str| format!("unknown {} option '{k}'", self.name());
        // The three builders take their settings the same way, but share no trait.
        macro_rules! build {
            ($builder:ty) => {{
                let mut b = <$builder>::from_env().with_url(base).with_retry(retry);
                for (k, v) in options {
                    let key = k.to_ascii_lowercase().parse().map_err(|_| unknown(k))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(|e| e.to_string())?)
            }};
        }
        Ok(match self {
            Self::S3 => build!(AmazonS3Builder),
            Self::Gcs => build!(GoogleCloudStorageBuilder),
            Self::Azure => build!(MicrosoftAzureBuilder),
        })
    }
}

struct Parsed {
    target: Target,
    /// The path under the store's root; `${...}` templates allowed.
    path: String,
}

impl ObjectStoreConfig {
    fn parse(&self) -> Result<Parsed, ConfigError> {
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

/// An object-store action, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub(super) target: Target,
    pub(super) options: BTreeMap<String, String>,
    /// The path under the store's root when it has templates.
    pub(super) path: Option<Template>,
    /// The literal path under the store's root when it has none.
    pub(super) prefix: String,
    pub(super) format: Format,
    pub(super) max_rows: u64,
    pub(super) max_bytes: u64,
    pub(super) max_age: Duration,
}

impl SinkConfig for ObjectStoreConfig {
    const KIND: &'static str = "object_store";
    type Sink = ObjectStoreSink;

    fn secret_maps(&mut self) -> Vec<SecretMap<'_>> {
        vec![SecretMap {
            field: "options",
            map: &mut self.options,
            is_secret: secret_option,
        }]
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
