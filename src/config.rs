//! Settings: every one is a command-line flag, a `WEIR_<SETTING>` environment variable and a
//! key in the `--config` TOML file. Precedence: defaults < file < environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use weir_connectors::mqtt::ExternalConfig;
use weir_connectors::mqtt::embedded::access::{Access, Acl, PasswordFile};
use weir_connectors::mqtt::embedded::tls::ListenerOptions;

#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about = "A stream-processing rules engine: MQTT in, SQL rules on DataFusion, actions out."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service.
    Serve(Box<ServeArgs>),
    /// Manage the rules of a running weir over its API: list, apply a directory, test,
    /// delete, export.
    Rules(crate::cli::RulesArgs),
}

/// The settings of `weir serve`, as given on the command line, in the environment or in
/// the config file. Every field is optional here; [`Settings::resolve`] applies defaults.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeArgs {
    /// TOML file with settings (keys as the flags, with '_' for '-').
    #[arg(long, env = "WEIR_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address of the HTTP API [default: 127.0.0.1:8080].
    #[arg(long, env = "WEIR_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,
    /// Address of the embedded MQTT broker [default: 127.0.0.1:1883]. Unused with --broker.
    #[arg(long, env = "WEIR_MQTT_LISTEN")]
    pub mqtt_listen: Option<SocketAddr>,
    /// Directory for the rule store and default outputs [default: ./weir-data].
    #[arg(long, env = "WEIR_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Directory for file outputs of actions that name no URL [default: <data-dir>/out].
    #[arg(long, env = "WEIR_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,
    /// Directory of `*.sql` rule files loaded at start [default: ./queries].
    #[arg(long, env = "WEIR_QUERIES_DIR")]
    pub queries_dir: Option<PathBuf>,
    /// External broker to read from instead of the embedded one: mqtt://host:port or mqtts://host:port.
    #[arg(long, env = "WEIR_BROKER")]
    pub broker: Option<String>,
    /// Username for the external broker.
    #[arg(long, env = "WEIR_BROKER_USERNAME")]
    pub broker_username: Option<String>,
    /// Password for the external broker.
    #[arg(long, env = "WEIR_BROKER_PASSWORD", hide_env_values = true)]
    pub broker_password: Option<String>,
    /// MQTT client id weir uses at the external broker [default: weir].
    #[arg(long, env = "WEIR_BROKER_CLIENT_ID")]
    pub broker_client_id: Option<String>,
    /// Start a clean session at the external broker instead of resuming a persistent one [default: false].
    #[arg(long, env = "WEIR_BROKER_CLEAN_SESSION", value_name = "BOOL")]
    pub broker_clean_session: Option<bool>,
    /// QoS of weir's subscriptions at the external broker: 0, 1 or 2 [default: 1].
    #[arg(long, env = "WEIR_BROKER_QOS")]
    pub broker_qos: Option<u8>,
    /// Subscribe as $share/<group>/<filter> so that several weir replicas split one stream.
    #[arg(long, env = "WEIR_BROKER_SHARE_GROUP")]
    pub broker_share_group: Option<String>,
    /// PEM file of the CA of the external broker's certificate (mqtts://).
    #[arg(long, env = "WEIR_BROKER_CA_FILE")]
    pub broker_ca_file: Option<PathBuf>,
    /// PEM file of weir's client certificate, for mutual TLS.
    #[arg(long, env = "WEIR_BROKER_CLIENT_CERT")]
    pub broker_client_cert: Option<PathBuf>,
    /// PEM file of weir's client key, for mutual TLS.
    #[arg(long, env = "WEIR_BROKER_CLIENT_KEY")]
    pub broker_client_key: Option<PathBuf>,
    /// MQTT keep-alive with the external broker [default: 30s].
    #[arg(long, env = "WEIR_BROKER_KEEP_ALIVE")]
    pub broker_keep_alive: Option<String>,
    /// With --broker-share-group, a persistent session and a postgres:// --rule-store:
    /// how long a replica of the share group must be away before another takes over its
    /// broker session and processes its share, or `off` [default: 15s].
    #[arg(long, env = "WEIR_BROKER_ADOPT_AFTER")]
    pub broker_adopt_after: Option<String>,
    /// How long a replica may be away before the one that took over its session drains
    /// it and ends it at the broker (its share goes to the others), or `off` [default: 10m].
    #[arg(long, env = "WEIR_BROKER_RETIRE_AFTER")]
    pub broker_retire_after: Option<String>,
    /// Most messages per rule batch [default: 1024].
    #[arg(long, env = "WEIR_BATCH_MAX_ROWS")]
    pub batch_max_rows: Option<usize>,
    /// Longest a message waits for its batch to fill [default: 1ms].
    #[arg(long, env = "WEIR_BATCH_LINGER")]
    pub batch_linger: Option<String>,
    /// Longest a rule may take to evaluate one batch; past it the batch's messages fail
    /// to the rule's error action (reason `timeout`) [default: 10s].
    #[arg(long, env = "WEIR_RULE_TIME_BUDGET")]
    pub rule_time_budget: Option<String>,
    /// Most memory a rule may allocate to evaluate one batch, in bytes (at least 1 MiB); a
    /// batch over it is run again in halves, and a message over it on its own fails to the
    /// rule's error action (reason `memory_budget`) [default: 268435456 (256 MiB)].
    #[arg(long, env = "WEIR_RULE_MEMORY_BUDGET")]
    pub rule_memory_budget: Option<usize>,
    /// Most rules this instance keeps; creating one more is a 409 [default: 1000].
    #[arg(long, env = "WEIR_MAX_RULES")]
    pub max_rules: Option<usize>,
    /// Where the rules are kept: `local` (files under the data directory) or a
    /// PostgreSQL URL (`postgres://user:password@host/db`) that replicas of a fleet share;
    /// a change made through any replica runs on all [default: local].
    #[arg(long, env = "WEIR_RULE_STORE", hide_env_values = true)]
    pub rule_store: Option<String>,
    /// Also consume Kafka topics as messages, with a consumer group:
    /// `kafka://host:9092[,host:9092]/topic[,topic][?group=NAME&instance=ID]` (group
    /// `weir`; instance: a static member id, one per replica; a topic starting with `^`
    /// is a regular expression). Offsets are committed once the rules
    /// hold a record's outputs.
    #[arg(long, env = "WEIR_SOURCE")]
    pub source: Option<String>,
    /// Outputs queued per action before the rule waits [default: 1024].
    #[arg(long, env = "WEIR_ACTION_QUEUE")]
    pub action_queue: Option<usize>,
    /// Size limit of each action's disk buffer, in bytes [default: 1073741824 (1 GiB)].
    #[arg(long, env = "WEIR_ACTION_BUFFER_MAX_BYTES")]
    pub action_buffer_max_bytes: Option<u64>,
    /// Threads that run weir's tasks [default: half the CPUs, at least 1]. weir often
    /// shares its host with a broker; fewer threads mean fewer wake-ups across threads
    /// (on 2 cores, one thread used a fifth less CPU per message than two, see README).
    #[arg(long, env = "WEIR_WORKER_THREADS")]
    pub worker_threads: Option<usize>,
    /// Log filter, e.g. info or weir=debug [default: info].
    #[arg(long, env = "WEIR_LOG")]
    pub log: Option<String>,
    /// Log format: `human` (a line of text per event) or `json` (a JSON object per line,
    /// for log collectors) [default: human].
    #[arg(long, env = "WEIR_LOG_FORMAT", value_name = "human|json")]
    pub log_format: Option<String>,
    /// API authentication: `on` (every /v1 request needs `Authorization: Bearer <token>`)
    /// or `off` [default: on].
    #[arg(long, env = "WEIR_AUTH", value_name = "on|off")]
    pub auth: Option<String>,
    /// File holding the admin token, e.g. a container secret [default:
    /// <data-dir>/admin.token, made at the first start]. WEIR_ADMIN_TOKEN gives the token
    /// itself instead.
    #[arg(long, env = "WEIR_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Whether GET /metrics needs a token too (any role) [default: false].
    #[arg(long, env = "WEIR_METRICS_AUTH", value_name = "BOOL")]
    pub metrics_auth: Option<bool>,
    /// Largest MQTT packet a client of the embedded broker may send, in bytes; a larger
    /// one closes its connection [default: 131072 (128 KiB)].
    #[arg(long, env = "WEIR_MQTT_MAX_PACKET_SIZE")]
    pub mqtt_max_packet_size: Option<usize>,
    /// Most clients connected to the embedded broker at once; one more is closed at once
    /// [default: 10000].
    #[arg(long, env = "WEIR_MQTT_MAX_CONNECTIONS")]
    pub mqtt_max_connections: Option<usize>,
    /// Most subscriptions one client of the embedded broker may hold [default: 100].
    #[arg(long, env = "WEIR_MQTT_MAX_SUBSCRIPTIONS")]
    pub mqtt_max_subscriptions: Option<usize>,
    /// Most sessions the embedded broker holds, of connected clients and of away
    /// clients whose session has not expired; a client that would start one more is
    /// refused [default: 100000].
    #[arg(long, env = "WEIR_MQTT_MAX_SESSIONS")]
    pub mqtt_max_sessions: Option<usize>,
    /// Most bytes queued for one subscriber of the embedded broker; one that falls
    /// further behind is disconnected [default: 16777216 (16 MiB)].
    #[arg(long, env = "WEIR_MQTT_MAX_QUEUED_BYTES")]
    pub mqtt_max_queued_bytes: Option<usize>,
    /// The longest keep-alive an MQTT 5 client of the embedded broker may use: one that
    /// asks for more, or for none, is told this one in the CONNACK (from 1s to 65535s)
    /// [default: 60s].
    #[arg(long, env = "WEIR_MQTT_MAX_KEEP_ALIVE")]
    pub mqtt_max_keep_alive: Option<String>,
    /// Address of the embedded broker's TLS listener (MQTT over TLS, usually port 8883);
    /// needs --mqtt-tls-cert and --mqtt-tls-key [default: none].
    #[arg(long, env = "WEIR_MQTTS_LISTEN")]
    pub mqtts_listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    #[arg(long, env = "WEIR_MQTT_TLS_CERT")]
    pub mqtt_tls_cert: Option<PathBuf>,
    /// PEM private key of --mqtt-tls-cert.
    #[arg(long, env = "WEIR_MQTT_TLS_KEY")]
    pub mqtt_tls_key: Option<PathBuf>,
    /// PEM certificates of the CA that signs client certificates: a client that presents
    /// one is identified by its subject's common name, which principal() returns and the
    /// ACL's `user` lines match; clients without one authenticate as on --mqtt-listen
    /// [default: none, no client certificates].
    #[arg(long, env = "WEIR_MQTT_TLS_CLIENT_CA")]
    pub mqtt_tls_client_ca: Option<PathBuf>,
    /// Refuse a client whose client id is not its certificate's common name
    /// [default: false].
    #[arg(long, env = "WEIR_MQTT_TLS_REQUIRE_CLIENT_ID", value_name = "BOOL")]
    pub mqtt_tls_require_client_id: Option<bool>,
    /// Address of the embedded broker's WebSocket listener (MQTT over WebSocket, for
    /// browser dashboards; the `mqtt` subprotocol, any path) [default: none].
    #[arg(long, env = "WEIR_MQTT_WS_LISTEN")]
    pub mqtt_ws_listen: Option<SocketAddr>,
    /// Users of the embedded broker and their password hashes, in Mosquitto's
    /// `mosquitto_passwd` format; a client that sends a username must match it
    /// [default: none].
    #[arg(long, env = "WEIR_MQTT_PASSWORD_FILE")]
    pub mqtt_password_file: Option<PathBuf>,
    /// What each client of the embedded broker may publish and read, in Mosquitto's
    /// `acl_file` syntax [default: none, every client may publish and read every topic].
    #[arg(long, env = "WEIR_MQTT_ACL_FILE")]
    pub mqtt_acl_file: Option<PathBuf>,
    /// Let clients without a username connect to the embedded broker [default: true
    /// when --mqtt-listen is a loopback address, false otherwise].
    #[arg(long, env = "WEIR_MQTT_ALLOW_ANONYMOUS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub mqtt_allow_anonymous: Option<bool>,
    /// PEM certificate chain for the HTTP API: with --http-tls-key, the API speaks HTTPS
    /// only [default: none, plain HTTP].
    #[arg(long, env = "WEIR_HTTP_TLS_CERT")]
    pub http_tls_cert: Option<PathBuf>,
    /// PEM private key of --http-tls-cert.
    #[arg(long, env = "WEIR_HTTP_TLS_KEY")]
    pub http_tls_key: Option<PathBuf>,
    /// Origins of browser pages that may call the API (comma-separated), e.g.
    /// https://console.example.com [default: none].
    #[arg(long, env = "WEIR_HTTP_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub http_allowed_origins: Option<Vec<String>>,
    /// Host names the API answers to (comma-separated), against DNS rebinding [default:
    /// any].
    #[arg(long, env = "WEIR_HTTP_ALLOWED_HOSTS", value_delimiter = ',')]
    pub http_allowed_hosts: Option<Vec<String>>,
    /// Named connections, in the config file only: `[connections.<name>.<kind>]` tables
    /// (see docs/security.md). They replace stored connections of the same name at start.
    #[arg(skip)]
    #[serde(default)]
    pub connections: Option<std::collections::BTreeMap<String, FileConnection>>,
    /// Directories, besides the output directory, below which rules' `file://`
    /// destinations may write (comma-separated) [default: none].
    #[arg(long, env = "WEIR_ALLOW_FILE_DIRS", value_delimiter = ',')]
    pub allow_file_dirs: Option<Vec<PathBuf>>,
    /// Let rules' destinations be link-local addresses, where cloud metadata services
    /// answer [default: false].
    #[arg(long, env = "WEIR_ALLOW_LINK_LOCAL", value_name = "BOOL")]
    pub allow_link_local: Option<bool>,
    /// Let rules' webhooks reach weir's own listeners [default: false].
    #[arg(long, env = "WEIR_ALLOW_WEIR_LISTENERS", value_name = "BOOL")]
    pub allow_weir_listeners: Option<bool>,
    /// librdkafka properties rules may set beyond the built-in list (comma-separated),
    /// e.g. ssl.ca.location [default: none].
    #[arg(long, env = "WEIR_ALLOW_KAFKA_PROPERTIES", value_delimiter = ',')]
    pub allow_kafka_properties: Option<Vec<String>>,
    /// Object-store options rules may set beyond the built-in list (comma-separated),
    /// e.g. aws_web_identity_token_file [default: none].
    #[arg(long, env = "WEIR_ALLOW_STORE_OPTIONS", value_delimiter = ',')]
    pub allow_store_options: Option<Vec<String>>,
    /// Let rules' cloud destinations without credentials of their own use weir's
    /// (AWS_*/GOOGLE_*/AZURE_* variables, instance metadata) [default: false].
    #[arg(long, env = "WEIR_ALLOW_AMBIENT_CREDENTIALS", value_name = "BOOL")]
    pub allow_ambient_credentials: Option<bool>,
}

macro_rules! merge {
    ($hi:expr, $lo:expr, [$($f:ident),* $(,)?]) => {
        ServeArgs { config: $hi.config.clone(), $($f: $hi.$f.clone().or($lo.$f.clone()),)* }
    };
}

impl ServeArgs {
    /// `self` (flags and environment) over `file`.
    fn over(&self, file: &ServeArgs) -> ServeArgs {
        merge!(
            self,
            file,
            [
                http_listen,
                mqtt_listen,
                data_dir,
                output_dir,
                queries_dir,
                broker,
                broker_username,
                broker_password,
                broker_client_id,
                broker_clean_session,
                broker_qos,
                broker_share_group,
                broker_ca_file,
                broker_client_cert,
                broker_client_key,
                broker_keep_alive,
                broker_adopt_after,
                broker_retire_after,
                batch_max_rows,
                batch_linger,
                rule_time_budget,
                rule_memory_budget,
                max_rules,
                rule_store,
                source,
                action_queue,
                action_buffer_max_bytes,
                worker_threads,
                log,
                log_format,
                auth,
                admin_token_file,
                metrics_auth,
                mqtt_max_packet_size,
                mqtt_max_connections,
                mqtt_max_subscriptions,
                mqtt_max_sessions,
                mqtt_max_queued_bytes,
                mqtt_max_keep_alive,
                mqtts_listen,
                mqtt_tls_cert,
                mqtt_tls_key,
                mqtt_tls_client_ca,
                mqtt_tls_require_client_id,
                mqtt_ws_listen,
                mqtt_password_file,
                mqtt_acl_file,
                mqtt_allow_anonymous,
                http_tls_cert,
                http_tls_key,
                http_allowed_origins,
                http_allowed_hosts,
                connections,
                allow_file_dirs,
                allow_link_local,
                allow_weir_listeners,
                allow_kafka_properties,
                allow_store_options,
                allow_ambient_credentials,
            ]
        )
    }
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub http_listen: SocketAddr,
    pub mqtt_listen: SocketAddr,
    pub data_dir: PathBuf,
    pub output_dir: PathBuf,
    pub queries_dir: PathBuf,
    pub broker: Option<ExternalConfig>,
    /// When replicas take over and end each other's broker sessions (see `src/fleet.rs`).
    pub fleet: crate::fleet::FleetSettings,
    pub batch_max_rows: usize,
    pub batch_linger: Duration,
    pub rule_time_budget: Duration,
    pub rule_memory_budget: usize,
    pub max_rules: usize,
    /// The fleet's shared store (a PostgreSQL URL); `None`: files under the data dir.
    pub rule_store: Option<String>,
    /// `--source`: Kafka topics consumed besides the MQTT ingress.
    pub source: Option<weir_connectors::kafka_ingress::KafkaSource>,
    pub action_queue: usize,
    pub action_buffer_max_bytes: u64,
    pub worker_threads: usize,
    pub log: String,
    /// Log lines as JSON objects rather than text.
    pub log_json: bool,
    pub auth: AuthSettings,
    /// What each client of the embedded broker may hold.
    pub mqtt_limits: weir_connectors::mqtt::embedded::Limits,
    /// Who may connect to the embedded broker, and what each client may do.
    pub mqtt_access: Access,
    /// The embedded broker's TLS listener, if any.
    pub mqtts: Option<MqttTlsSettings>,
    /// The embedded broker's WebSocket listener, if any, and its rules for clients.
    pub mqtt_ws: Option<(SocketAddr, ListenerOptions)>,
    pub policy: PolicySettings,
    pub http: HttpSettings,
    /// The config file's connections.
    pub connections: std::collections::BTreeMap<String, FileConnection>,
}

/// A connection of the config file; its `Debug` shows no secret.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct FileConnection(pub weir_connectors::sinks::ConnectionConfig);

impl std::fmt::Debug for FileConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0.redacted())
    }
}

/// The embedded broker's TLS listener (`--mqtts-listen`).
#[derive(Debug, Clone)]
pub struct MqttTlsSettings {
    pub listen: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
    pub options: ListenerOptions,
}

/// How the HTTP API is served.
#[derive(Debug, Clone, Default)]
pub struct HttpSettings {
    /// The certificate chain and key files, for HTTPS.
    pub tls: Option<(PathBuf, PathBuf)>,
    pub browsers: crate::api::Browsers,
}

/// The operator's policy on what rules' inline destinations may reach (see
/// [`weir_connectors::delivery::Policy`], which adds the listeners once they are bound).
#[derive(Debug, Clone, Default)]
pub struct PolicySettings {
    pub file_dirs: Vec<PathBuf>,
    pub allow_link_local: bool,
    pub allow_weir_listeners: bool,
    pub kafka_properties: Vec<String>,
    pub store_options: Vec<String>,
    pub allow_ambient_credentials: bool,
}

/// Who may use the HTTP API.
#[derive(Clone)]
pub struct AuthSettings {
    /// Whether `/v1/*` requests need a token.
    pub enabled: bool,
    /// Where the admin token comes from.
    pub admin_token: AdminToken,
    /// Whether `/metrics` needs a token too.
    pub metrics: bool,
}

/// Where the admin token comes from.
#[derive(Clone)]
pub enum AdminToken {
    /// `<data-dir>/admin.token`, made at the first start.
    DataDir,
    /// `--admin-token-file`.
    File(PathBuf),
    /// `WEIR_ADMIN_TOKEN`.
    Value(String),
}

/// The token itself is never shown.
impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::DataDir => f.write_str("DataDir"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
            Self::Value(_) => f.write_str("Value(<redacted>)"),
        }
    }
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("enabled", &self.enabled)
            .field("admin_token", &self.admin_token)
            .field("metrics", &self.metrics)
            .finish()
    }
}

fn duration(setting: &str, value: Option<&str>, default: Duration) -> anyhow::Result<Duration> {
    match value {
        None => Ok(default),
        Some(v) => humantime::parse_duration(v)
            .with_context(|| format!("--{setting} '{v}' is not a duration (examples: 5ms, 30s)")),
    }
}

/// A duration of at least a second, or `off` (`None`).
fn duration_or_off(
    setting: &str,
    value: Option<&str>,
    default: Duration,
) -> anyhow::Result<Option<Duration>> {
    if value.is_some_and(|v| v.eq_ignore_ascii_case("off")) {
        return Ok(None);
    }
    let d = duration(setting, value, default)?;
    if d < Duration::from_secs(1) {
        bail!("--{setting} must be at least 1s, or off");
    }
    Ok(Some(d))
}

impl Settings {
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            None => ServeArgs::default(),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?
            }
        };
        let a = args.over(&file);
        let broker = match &a.broker {
            None => None,
            Some(url) => {
                let c = ExternalConfig {
                    url: url.clone(),
                    username: a.broker_username.clone(),
                    password: a.broker_password.clone(),
                    client_id: a
                        .broker_client_id
                        .clone()
                        .unwrap_or_else(|| "weir".to_owned()),
                    clean_session: a.broker_clean_session.unwrap_or(false),
                    qos: a.broker_qos.unwrap_or(1),
                    share_group: a.broker_share_group.clone(),
                    ca_file: a.broker_ca_file.clone(),
                    client_cert: a.broker_client_cert.clone(),
                    client_key: a.broker_client_key.clone(),
                    keep_alive: duration(
                        "broker-keep-alive",
                        a.broker_keep_alive.as_deref(),
                        Duration::from_secs(30),
                    )?,
                };
                c.validate().context("--broker")?;
                Some(c)
            }
        };
        let batch_max_rows = a.batch_max_rows.unwrap_or(1024);
        if batch_max_rows == 0 {
            bail!("--batch-max-rows must be at least 1");
        }
        let action_queue = a.action_queue.unwrap_or(1024);
        if action_queue == 0 {
            bail!("--action-queue must be at least 1");
        }
        let worker_threads = a.worker_threads.unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
        });
        if worker_threads == 0 {
            bail!("--worker-threads must be at least 1");
        }
        let data_dir = a
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("weir-data"));
        let defaults = weir_connectors::mqtt::embedded::Limits::default();
        let mqtt_max_packet_size = a.mqtt_max_packet_size.unwrap_or(defaults.max_packet);
        // MQTT's own bound: the remaining length has at most 4 bytes.
        if !(1024..=268_435_455).contains(&mqtt_max_packet_size) {
            bail!(
                "--mqtt-max-packet-size must be from 1024 to 268435455 bytes, got {mqtt_max_packet_size}"
            );
        }
        let auth = AuthSettings {
            enabled: match a.auth.as_deref() {
                None | Some("on") => true,
                Some("off") => false,
                Some(other) => bail!("--auth must be on or off, got '{other}'"),
            },
            admin_token: match (&a.admin_token_file, std::env::var("WEIR_ADMIN_TOKEN")) {
                (Some(path), _) => AdminToken::File(path.clone()),
                (None, Ok(token)) => AdminToken::Value(token),
                (None, Err(_)) => AdminToken::DataDir,
            },
            metrics: a.metrics_auth.unwrap_or(false),
        };
        let output_dir = a.output_dir.clone().unwrap_or_else(|| data_dir.join("out"));
        let mut file_dirs = vec![output_dir.clone()];
        file_dirs.extend(a.allow_file_dirs.clone().unwrap_or_default());
        let file_dirs = file_dirs
            .into_iter()
            .map(|d| absolute_dir(&d))
            .collect::<anyhow::Result<_>>()?;
        let policy = PolicySettings {
            file_dirs,
            allow_link_local: a.allow_link_local.unwrap_or(false),
            allow_weir_listeners: a.allow_weir_listeners.unwrap_or(false),
            kafka_properties: a.allow_kafka_properties.clone().unwrap_or_default(),
            store_options: a.allow_store_options.clone().unwrap_or_default(),
            allow_ambient_credentials: a.allow_ambient_credentials.unwrap_or(false),
        };
        let tls = match (&a.http_tls_cert, &a.http_tls_key) {
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
            (None, None) => None,
            _ => bail!("--http-tls-cert and --http-tls-key go together"),
        };
        let http = HttpSettings {
            tls,
            browsers: crate::api::Browsers {
                origins: a.http_allowed_origins.clone().unwrap_or_default(),
                hosts: a.http_allowed_hosts.clone().unwrap_or_default(),
            },
        };
        let mqtt_listen = a.mqtt_listen.unwrap_or(([127, 0, 0, 1], 1883).into());
        let mqtt_access = Access {
            passwords: a
                .mqtt_password_file
                .as_deref()
                .map(PasswordFile::load)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--mqtt-password-file: {e}"))?,
            acl: a
                .mqtt_acl_file
                .as_deref()
                .map(Acl::load)
                .transpose()
                .map_err(|e| anyhow::anyhow!("--mqtt-acl-file: {e}"))?,
            // As Mosquitto 2: anonymous clients only where only this host can connect.
            allow_anonymous: a
                .mqtt_allow_anonymous
                .unwrap_or_else(|| mqtt_listen.ip().is_loopback()),
        };
        let mqtts = match (&a.mqtts_listen, &a.mqtt_tls_cert, &a.mqtt_tls_key) {
            (None, None, None) => {
                if a.mqtt_tls_client_ca.is_some() || a.mqtt_tls_require_client_id.is_some() {
                    bail!(
                        "--mqtt-tls-client-ca and --mqtt-tls-require-client-id need --mqtts-listen"
                    );
                }
                None
            }
            (Some(listen), Some(cert), Some(key)) => Some(MqttTlsSettings {
                listen: *listen,
                cert: cert.clone(),
                key: key.clone(),
                client_ca: a.mqtt_tls_client_ca.clone(),
                options: ListenerOptions {
                    allow_anonymous: a
                        .mqtt_allow_anonymous
                        .unwrap_or_else(|| listen.ip().is_loopback()),
                    require_client_id: match (a.mqtt_tls_require_client_id, &a.mqtt_tls_client_ca) {
                        (Some(true), None) => {
                            bail!("--mqtt-tls-require-client-id needs --mqtt-tls-client-ca")
                        }
                        (r, _) => r.unwrap_or(false),
                    },
                },
            }),
            _ => bail!("--mqtts-listen, --mqtt-tls-cert and --mqtt-tls-key go together"),
        };
        Ok(Self {
            http_listen: a.http_listen.unwrap_or(([127, 0, 0, 1], 8080).into()),
            mqtt_listen,
            output_dir,
            data_dir,
            queries_dir: a
                .queries_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("queries")),
            broker,
            fleet: crate::fleet::FleetSettings {
                adopt_after: duration_or_off(
                    "broker-adopt-after",
                    a.broker_adopt_after.as_deref(),
                    Duration::from_secs(15),
                )?,
                retire_after: duration_or_off(
                    "broker-retire-after",
                    a.broker_retire_after.as_deref(),
                    Duration::from_secs(600),
                )?,
            },
            batch_max_rows,
            batch_linger: duration(
                "batch-linger",
                a.batch_linger.as_deref(),
                Duration::from_millis(1),
            )?,
            rule_time_budget: positive(duration(
                "rule-time-budget",
                a.rule_time_budget.as_deref(),
                crate::pipeline::evaluate::DEFAULT_BUDGET,
            )?)
            .context("--rule-time-budget")?,
            rule_memory_budget: match a
                .rule_memory_budget
                .unwrap_or(crate::pipeline::evaluate::DEFAULT_MEMORY_BUDGET)
            {
                // Less would fail every batch after halving it down to single messages.
                n if n < MIN_MEMORY_BUDGET => bail!(
                    "--rule-memory-budget must be at least {MIN_MEMORY_BUDGET} (1 MiB), got {n}"
                ),
                n => n,
            },
            max_rules: at_least_one("max-rules", a.max_rules, 1000)?,
            source: a
                .source
                .as_deref()
                .map(weir_connectors::kafka_ingress::KafkaSource::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            rule_store: match a.rule_store.as_deref() {
                None | Some("local") => None,
                Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    Some(url.to_owned())
                }
                Some(other) => bail!(
                    "--rule-store must be local or a postgres:// URL, got '{}'",
                    crate::shared_store::redact_url(other)
                ),
            },
            action_queue,
            action_buffer_max_bytes: a.action_buffer_max_bytes.unwrap_or(1 << 30),
            worker_threads,
            log: a.log.clone().unwrap_or_else(|| "info".to_owned()),
            log_json: match a.log_format.as_deref() {
                None | Some("human") => false,
                Some("json") => true,
                Some(other) => bail!("--log-format must be human or json, got '{other}'"),
            },
            auth,
            mqtt_limits: weir_connectors::mqtt::embedded::Limits {
                max_packet: mqtt_max_packet_size,
                max_connections: at_least_one(
                    "mqtt-max-connections",
                    a.mqtt_max_connections,
                    defaults.max_connections,
                )?,
                max_subscriptions: at_least_one(
                    "mqtt-max-subscriptions",
                    a.mqtt_max_subscriptions,
                    defaults.max_subscriptions,
                )?,
                max_sessions: at_least_one(
                    "mqtt-max-sessions",
                    a.mqtt_max_sessions,
                    defaults.max_sessions,
                )?,
                max_queued_bytes: at_least_one(
                    "mqtt-max-queued-bytes",
                    a.mqtt_max_queued_bytes,
                    defaults.max_queued_bytes,
                )?,
                max_keep_alive: {
                    let d = duration(
                        "mqtt-max-keep-alive",
                        a.mqtt_max_keep_alive.as_deref(),
                        Duration::from_secs(defaults.max_keep_alive.into()),
                    )?;
                    match u16::try_from(d.as_secs()) {
                        Ok(s) if s > 0 && d.subsec_nanos() == 0 => s,
                        _ => bail!(
                            "--mqtt-max-keep-alive must be whole seconds from 1s to 65535s, got {}",
                            humantime::format_duration(d)
                        ),
                    }
                },
                ..defaults
            },
            mqtt_access,
            mqtts,
            mqtt_ws: a.mqtt_ws_listen.map(|listen| {
                (
                    listen,
                    ListenerOptions {
                        allow_anonymous: a
                            .mqtt_allow_anonymous
                            .unwrap_or_else(|| listen.ip().is_loopback()),
                        require_client_id: false,
                    },
                )
            }),
            policy,
            http,
            connections: a.connections.clone().unwrap_or_default(),
        })
    }
}

/// Refuses a zero duration.
fn positive(d: Duration) -> anyhow::Result<Duration> {
    if d.is_zero() {
        bail!("must be more than 0");
    }
    Ok(d)
}

/// `value`, or `default`; refused when 0.
/// The smallest memory budget a rule may have, in bytes.
const MIN_MEMORY_BUDGET: usize = 1 << 20;

fn at_least_one(setting: &str, value: Option<usize>, default: usize) -> anyhow::Result<usize> {
    match value.unwrap_or(default) {
        0 => bail!("--{setting} must be at least 1"),
        n => Ok(n),
    }
}

/// A directory as an absolute path without `.` or `..`, as the policy compares them
/// with `file://` paths; it need not exist yet.
fn absolute_dir(dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let abs = std::path::absolute(dir)
        .with_context(|| format!("cannot make {} absolute", dir.display()))?;
    let mut clean = PathBuf::new();
    for c in abs.components() {
        match c {
            std::path::Component::ParentDir => {
                clean.pop();
            }
            std::path::Component::CurDir => {}
            other => clean.push(other),
        }
    }
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut full = vec!["weir", "serve"];
        full.extend_from_slice(args);
        match Cli::parse_from(full).command {
            Command::Serve(a) => *a,
            Command::Rules(_) => unreachable!("parsed as serve"),
        }
    }

    #[test]
    fn defaults() {
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        assert_eq!(s.http_listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.mqtt_listen.to_string(), "127.0.0.1:1883");
        assert_eq!(s.data_dir, PathBuf::from("weir-data"));
        assert_eq!(s.output_dir, PathBuf::from("weir-data/out"));
        assert!(s.broker.is_none());
        assert_eq!(s.batch_linger, Duration::from_millis(1));
        assert_eq!(s.fleet, crate::fleet::FleetSettings::default());
        assert_eq!(s.fleet.adopt_after, Some(Duration::from_secs(15)));
        let s = Settings::resolve(&parse(&[
            "--broker-adopt-after",
            "2s",
            "--broker-retire-after",
            "OFF",
        ]))
        .unwrap();
        assert_eq!(s.fleet.adopt_after, Some(Duration::from_secs(2)));
        assert_eq!(s.fleet.retire_after, None);
        let err = Settings::resolve(&parse(&["--broker-adopt-after", "10ms"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "--broker-adopt-after must be at least 1s, or off"
        );
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(s.worker_threads, (cpus / 2).max(1));
        let s = Settings::resolve(&parse(&["--worker-threads", "3"])).unwrap();
        assert_eq!(s.worker_threads, 3);
        let err = Settings::resolve(&parse(&["--worker-threads", "0"])).unwrap_err();
        assert!(format!("{err:#}").contains("--worker-threads"), "{err:#}");
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        assert!(s.auth.enabled && !s.auth.metrics);
        assert!(matches!(s.auth.admin_token, AdminToken::DataDir));
        let s = Settings::resolve(&parse(&["--auth", "off", "--metrics-auth", "true"])).unwrap();
        assert!(!s.auth.enabled && s.auth.metrics);
        assert!(!s.log_json);
        let s = Settings::resolve(&parse(&["--log-format", "json"])).unwrap();
        assert!(s.log_json);
        let err = Settings::resolve(&parse(&["--log-format", "xml"])).unwrap_err();
        assert!(format!("{err:#}").contains("--log-format must be human or json"));
        let err = Settings::resolve(&parse(&["--auth", "maybe"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--auth must be on or off"),
            "{err:#}"
        );
        // The policy is closed by default; file:// may write below the output directory.
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        let out = std::path::absolute("weir-data/out").unwrap();
        assert_eq!(s.policy.file_dirs, [out]);
        assert!(!s.policy.allow_link_local && !s.policy.allow_ambient_credentials);
        assert!(s.policy.kafka_properties.is_empty() && s.http.tls.is_none());
        let s = Settings::resolve(&parse(&[
            "--allow-kafka-properties",
            "ssl.ca.location,debug",
            "--allow-file-dirs",
            "/srv/a/../b",
        ]))
        .unwrap();
        assert_eq!(s.policy.kafka_properties, ["ssl.ca.location", "debug"]);
        assert_eq!(s.policy.file_dirs[1], PathBuf::from("/srv/b"));
        let s = Settings::resolve(&parse(&["--admin-token-file", "/run/secrets/weir"])).unwrap();
        assert!(matches!(s.auth.admin_token, AdminToken::File(_)));
    }

    #[test]
    fn anonymous_mqtt_clients_only_on_loopback_unless_told() {
        let s = Settings::resolve(&ServeArgs::default()).unwrap();
        assert!(s.mqtt_access.allow_anonymous);
        assert!(s.mqtt_access.passwords.is_none() && s.mqtt_access.acl.is_none());
        let s = Settings::resolve(&parse(&["--mqtt-listen", "0.0.0.0:1883"])).unwrap();
        assert!(!s.mqtt_access.allow_anonymous);
        let s = Settings::resolve(&parse(&[
            "--mqtt-listen",
            "0.0.0.0:1883",
            "--mqtt-allow-anonymous",
        ]))
        .unwrap();
        assert!(s.mqtt_access.allow_anonymous);
        let s = Settings::resolve(&parse(&["--mqtt-allow-anonymous", "false"])).unwrap();
        assert!(!s.mqtt_access.allow_anonymous);
        assert_eq!(s.mqtt_limits.max_keep_alive, 60);
        // The TLS listener's anonymous clients follow its own address.
        let s = Settings::resolve(&parse(&[
            "--mqtts-listen",
            "0.0.0.0:8883",
            "--mqtt-tls-cert",
            "c.pem",
            "--mqtt-tls-key",
            "k.pem",
        ]))
        .unwrap();
        assert!(s.mqtt_access.allow_anonymous);
        let tls = s.mqtts.expect("a TLS listener");
        assert!(!tls.options.allow_anonymous && !tls.options.require_client_id);
        for (args, want) in [
            (&["--mqtts-listen", "0.0.0.0:8883"][..], "go together"),
            (
                &["--mqtt-tls-client-ca", "ca.pem"][..],
                "need --mqtts-listen",
            ),
        ] {
            let err = Settings::resolve(&parse(args)).unwrap_err();
            assert!(format!("{err:#}").contains(want), "{err:#}");
        }
        let s = Settings::resolve(&parse(&["--mqtt-max-keep-alive", "20m"])).unwrap();
        assert_eq!(s.mqtt_limits.max_keep_alive, 1200);
        for bad in ["0s", "1500ms", "19h"] {
            let err = Settings::resolve(&parse(&["--mqtt-max-keep-alive", bad])).unwrap_err();
            assert!(
                format!("{err:#}").starts_with("--mqtt-max-keep-alive must be whole seconds"),
                "{err:#}"
            );
        }
        // Files that cannot be read or parsed stop the start, naming flag and line.
        let err =
            Settings::resolve(&parse(&["--mqtt-password-file", "/nonexistent/pw"])).unwrap_err();
        assert!(
            format!("{err:#}").starts_with("--mqtt-password-file: cannot read /nonexistent/pw"),
            "{err:#}"
        );
        let dir = tempfile::tempdir().unwrap();
        let acl = dir.path().join("acl");
        std::fs::write(&acl, "user a\ntopic raed x\nbogus\n").unwrap();
        let err =
            Settings::resolve(&parse(&["--mqtt-acl-file", acl.to_str().unwrap()])).unwrap_err();
        assert!(
            format!("{err:#}")
                .ends_with("line 3: unknown keyword 'bogus' (expected user, topic or pattern)"),
            "{err:#}"
        );
    }

    #[test]
    fn the_shipped_example_config_parses_and_flags_win() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/weir.example.toml");
        let mut args = parse(&["--config", path, "--http-listen", "127.0.0.1:9999"]);
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.http_listen.to_string(), "127.0.0.1:9999");
        let b = s.broker.expect("the example names a broker");
        assert_eq!(b.share_group.as_deref(), Some("weir"));
        assert_eq!(s.batch_linger, Duration::from_millis(2));
        assert_eq!(
            s.policy.file_dirs,
            [
                PathBuf::from("/var/lib/weir/out"),
                PathBuf::from("/var/lib/weir/exports")
            ]
        );
        assert_eq!(s.policy.kafka_properties, ["ssl.ca.location"]);
        assert_eq!(s.mqtt_limits.max_subscriptions, 100);
        let names: Vec<&String> = s.connections.keys().collect();
        assert_eq!(names, ["events", "lake"]);
        for c in s.connections.values() {
            c.0.validate().unwrap();
        }
        args.http_listen = None;
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.http_listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
        let err = Settings::resolve(&parse(&["--rule-time-budget", "0s"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--rule-time-budget: must be more than 0"),
            "{err:#}"
        );
        let s = Settings::resolve(&parse(&["--rule-time-budget", "250ms"])).unwrap();
        assert_eq!(s.rule_time_budget, Duration::from_millis(250));
        assert_eq!(s.rule_memory_budget, 256 << 20);
        for small in ["0", "1048575"] {
            let err = Settings::resolve(&parse(&["--rule-memory-budget", small])).unwrap_err();
            assert!(
                format!("{err:#}").contains("--rule-memory-budget must be at least 1048576"),
                "{err:#}"
            );
        }
        let s = Settings::resolve(&parse(&["--rule-memory-budget", "1048576"])).unwrap();
        assert_eq!(s.rule_memory_budget, 1 << 20);
        let err = Settings::resolve(&parse(&["--batch-linger", "soon"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--batch-linger 'soon'"),
            "{err:#}"
        );
        let err = Settings::resolve(&parse(&["--broker", "http://x"])).unwrap_err();
        assert!(format!("{err:#}").contains("mqtt://"), "{err:#}");
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("bad.toml");
        std::fs::write(&f, "http_listen = \"127.0.0.1:1\"\nno_such_setting = 1\n").unwrap();
        let err = Settings::resolve(&parse(&["--config", f.to_str().unwrap()])).unwrap_err();
        assert!(format!("{err:#}").contains("no_such_setting"), "{err:#}");
        assert_eq!(
            Settings::resolve(&ServeArgs::default())
                .unwrap()
                .mqtt_limits
                .max_packet,
            128 * 1024
        );
        for bad in ["1023", "268435456"] {
            let err = Settings::resolve(&parse(&["--mqtt-max-packet-size", bad])).unwrap_err();
            assert!(
                format!("{err:#}").contains(&format!(
                    "--mqtt-max-packet-size must be from 1024 to 268435455 bytes, got {bad}"
                )),
                "{err:#}"
            );
        }
        let s = Settings::resolve(&parse(&["--mqtt-max-packet-size", "268435455"])).unwrap();
        assert_eq!(s.mqtt_limits.max_packet, 268_435_455);
    }
}
