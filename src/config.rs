//! Settings: every one is a command-line flag, a `WEIR_<SETTING>` environment variable and a
//! key in the `--config` TOML file. Precedence: defaults < file < environment < flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;
use weir_connectors::mqtt::ExternalConfig;

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
    /// Most messages per rule batch [default: 1024].
    #[arg(long, env = "WEIR_BATCH_MAX_ROWS")]
    pub batch_max_rows: Option<usize>,
    /// Longest a message waits for its batch to fill [default: 1ms].
    #[arg(long, env = "WEIR_BATCH_LINGER")]
    pub batch_linger: Option<String>,
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
                batch_max_rows,
                batch_linger,
                action_queue,
                action_buffer_max_bytes,
                worker_threads,
                log,
                auth,
                admin_token_file,
                metrics_auth,
                mqtt_max_packet_size,
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
    pub batch_max_rows: usize,
    pub batch_linger: Duration,
    pub action_queue: usize,
    pub action_buffer_max_bytes: u64,
    pub worker_threads: usize,
    pub log: String,
    pub auth: AuthSettings,
    pub mqtt_max_packet_size: usize,
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
        let mqtt_max_packet_size = a
            .mqtt_max_packet_size
            .unwrap_or(weir_connectors::mqtt::embedded::DEFAULT_MAX_PACKET);
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
        Ok(Self {
            http_listen: a.http_listen.unwrap_or(([127, 0, 0, 1], 8080).into()),
            mqtt_listen: a.mqtt_listen.unwrap_or(([127, 0, 0, 1], 1883).into()),
            output_dir: a.output_dir.clone().unwrap_or_else(|| data_dir.join("out")),
            data_dir,
            queries_dir: a
                .queries_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from("queries")),
            broker,
            batch_max_rows,
            batch_linger: duration(
                "batch-linger",
                a.batch_linger.as_deref(),
                Duration::from_millis(1),
            )?,
            action_queue,
            action_buffer_max_bytes: a.action_buffer_max_bytes.unwrap_or(1 << 30),
            worker_threads,
            log: a.log.clone().unwrap_or_else(|| "info".to_owned()),
            auth,
            mqtt_max_packet_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let mut full = vec!["weir", "serve"];
        full.extend_from_slice(args);
        match Cli::parse_from(full).command {
            Command::Serve(a) => *a,
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
        let err = Settings::resolve(&parse(&["--auth", "maybe"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("--auth must be on or off"),
            "{err:#}"
        );
        let s = Settings::resolve(&parse(&["--admin-token-file", "/run/secrets/weir"])).unwrap();
        assert!(matches!(s.auth.admin_token, AdminToken::File(_)));
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
        args.http_listen = None;
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.http_listen.to_string(), "0.0.0.0:8080");
    }

    #[test]
    fn bad_values_are_refused_by_name() {
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
                .mqtt_max_packet_size,
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
        assert_eq!(s.mqtt_max_packet_size, 268_435_455);
    }
}
