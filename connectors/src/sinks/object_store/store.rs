//! Where an object-store action's files go: the output directory, a local directory
//! (`file://`) or one of the cloud stores this build reaches, with what each store calls its
//! options, which of them a rule may set, and how a store is built from them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use weir_engine::{Classify, ErrorClass};

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
    pub(super) fn from_scheme(scheme: &str) -> Option<Self> {
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

    /// The canonical name of one of this store's `object_store` settings
    /// (`aws_access_key_id` for `access_key_id`); `None` if it has no such setting.
    pub(super) fn canonical(self, key: &str) -> Option<String> {
        let key = key.to_ascii_lowercase();
        Some(match self {
            Self::S3 => key.parse::<AmazonS3ConfigKey>().ok()?.as_ref().to_owned(),
            Self::Gcs => key.parse::<GoogleConfigKey>().ok()?.as_ref().to_owned(),
            Self::Azure => key.parse::<AzureConfigKey>().ok()?.as_ref().to_owned(),
        })
    }

    pub(super) fn knows(self, key: &str) -> bool {
        self.canonical(key).is_some()
    }

    /// The options, by canonical name, that an inline destination may set: none reads a
    /// local file, runs a program, turns off certificate checks or reaches for weir's
    /// own credentials.
    pub(super) fn allowed(self) -> &'static [&'static str] {
        match self {
            Self::S3 => &[
                "aws_access_key_id",
                "aws_secret_access_key",
                "aws_session_token",
                "aws_region",
                "aws_default_region",
                "aws_endpoint",
                "aws_endpoint_url_s3",
                "aws_virtual_hosted_style_request",
                "aws_s3_express",
                "aws_unsigned_payload",
                "aws_checksum_algorithm",
                "aws_skip_signature",
                "aws_copy_if_not_exists",
                "aws_conditional_put",
                "aws_disable_tagging",
                "aws_request_payer",
                "aws_server_side_encryption",
                "aws_sse_kms_key_id",
                "aws_sse_bucket_key_enabled",
                "aws_sse_customer_key_base64",
            ],
            Self::Gcs => &[
                "google_service_account_key",
                "google_base_url",
                "google_skip_signature",
            ],
            Self::Azure => &[
                "azure_storage_account_name",
                "azure_storage_account_key",
                "azure_storage_client_id",
                "azure_storage_client_secret",
                "azure_storage_tenant_id",
                "azure_storage_sas_key",
                "azure_storage_token",
                "azure_storage_use_emulator",
                "azure_storage_endpoint",
                "azure_use_fabric_endpoint",
                "azure_skip_signature",
                "azure_disable_tagging",
            ],
        }
    }

    /// Whether the options carry credentials of the destination's own, so that the
    /// builder does not fall back to weir's (environment, instance metadata).
    pub(super) fn own_credentials(
        self,
        options: &BTreeMap<String, &str>,
    ) -> Result<(), &'static str> {
        let has = |k: &str| options.contains_key(k);
        let yes = |k: &str| {
            options
                .get(k)
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        let (ok, needed) = match self {
            Self::S3 => (
                (has("aws_access_key_id") && has("aws_secret_access_key"))
                    || yes("aws_skip_signature"),
                "access_key_id and secret_access_key, or skip_signature",
            ),
            Self::Gcs => (
                has("google_service_account_key") || yes("google_skip_signature"),
                "service_account_key, or skip_signature",
            ),
            Self::Azure => (
                has("azure_storage_account_key")
                    || has("azure_storage_sas_key")
                    || has("azure_storage_token")
                    || (has("azure_storage_client_id")
                        && has("azure_storage_client_secret")
                        && has("azure_storage_tenant_id"))
                    || yes("azure_skip_signature")
                    || yes("azure_storage_use_emulator"),
                "access_key, sas_key, token, client_id with client_secret and tenant_id, \
                 use_emulator or skip_signature",
            ),
        };
        if ok { Ok(()) } else { Err(needed) }
    }

    pub(super) fn examples(self) -> &'static str {
        match self {
            Self::S3 => {
                "endpoint, region, access_key_id, secret_access_key, allow_http, \
                 virtual_hosted_style_request"
            }
            Self::Gcs => "service_account_path, service_account_key, application_credentials",
            Self::Azure => "account_name, access_key, sas_key, use_emulator, endpoint",
        }
    }

    /// The store for `base` (`<scheme>://<bucket>`), from `options`, and from the
    /// environment and instance metadata too when `ambient`.
    pub(super) fn build(
        self,
        base: &str,
        options: &BTreeMap<String, String>,
        ambient: bool,
    ) -> Result<Arc<dyn ObjectStore>, StoreError> {
        // weir retries failed uploads itself, with the files waiting on disk; the client
        // only smooths over a blip.
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
            ..Default::default()
        };
        let unknown = |k: &str| StoreError::UnknownOption {
            store: self.name(),
            base: base.to_owned(),
            key: k.to_owned(),
        };
        let failed = |source| StoreError::Cloud {
            store: self.name(),
            base: base.to_owned(),
            source,
        };
        // The three builders take their settings the same way, but share no trait.
        macro_rules! build {
            ($builder:ty) => {{
                let b = if ambient {
                    <$builder>::from_env()
                } else {
                    <$builder>::new()
                };
                let mut b = b.with_url(base).with_retry(retry);
                for (k, v) in options {
                    let key = k.to_ascii_lowercase().parse().map_err(|_| unknown(k))?;
                    b = b.with_config(key, v);
                }
                Arc::new(b.build().map_err(failed)?)
            }};
        }
        Ok(match self {
            Self::S3 => build!(AmazonS3Builder),
            Self::Gcs => build!(GoogleCloudStorageBuilder),
            Self::Azure => build!(MicrosoftAzureBuilder),
        })
    }
}

/// Why the store of an action could not be opened (when its sink is built).
#[derive(Debug, thiserror::Error)]
pub(super) enum StoreError {
    /// The local directory cannot be created.
    #[error("cannot create {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// The local directory cannot be a store's root.
    #[error("{}: {source}", dir.display())]
    Local {
        dir: PathBuf,
        source: object_store::Error,
    },
    /// An option the cloud store does not know.
    #[error("{store} store {base}: unknown {store} option '{key}'")]
    UnknownOption {
        store: &'static str,
        base: String,
        key: String,
    },
    /// The cloud store's client refused its settings.
    #[error("{store} store {base}: {source}")]
    Cloud {
        store: &'static str,
        base: String,
        source: object_store::Error,
    },
}

impl Classify for StoreError {
    fn class(&self) -> ErrorClass {
        match self {
            // weir's own disk.
            Self::CreateDir { .. } | Self::Local { .. } => ErrorClass::Internal,
            Self::UnknownOption { .. } | Self::Cloud { .. } => ErrorClass::User,
        }
    }
}
