//! The weir service: loads settings, wires ingress → pipeline → actions, serves the HTTP API.
//!
//! * [`config`]: flags, environment and config file.
//! * [`auth`]: who may use the HTTP API: tokens and roles.
//! * [`rules`]: the rule service, where every rule change is checked, stored and started.
//! * [`rule_store`]: the rules on disk.
//! * [`pipeline`]: router, rule workers, action workers.
//! * [`api`]: the HTTP API.
//!
//! [`run`] binds the listeners its settings name and serves; [`serve`] takes listeners the
//! caller bound (tests bind port 0 and run weir in their own process).

pub mod api;
pub mod auth;
pub mod cli;
pub mod config;
pub mod connections;
pub mod fleet;
pub mod pg;
pub mod pipeline;
pub mod private_file;
pub mod rule_store;
pub mod rules;
pub mod shared_store;

/// The unit tests evaluate rules within memory budgets (`pipeline::evaluate`), which the
/// engine's counting allocator meters; over the allocator the binary runs on (main.rs).
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: weir_engine::memory::Counting<mimalloc::MiMalloc> =
    weir_engine::memory::Counting::new(mimalloc::MiMalloc);

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::{Broker, ExternalBroker, Publisher};
use weir_connectors::sink::Policy;
use weir_engine::Engine;

use crate::config::Settings;
use crate::pipeline::{BatchSettings, Pipeline};
use crate::rule_store::RuleStore;
use crate::rules::RuleService;

/// Messages queued between the ingress and the router.
const INGRESS_QUEUE: usize = 8192;
/// How long shutdown waits for actions to finish what they hold.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// A listener could not be opened. Printed as one line that names the setting to change.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for {what}: {source} (change it with {flag} or {env})")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    pub flag: &'static str,
    pub env: &'static str,
    pub source: std::io::Error,
}

async fn bind(
    addr: SocketAddr,
    what: &'static str,
    flag: &'static str,
    env: &'static str,
) -> Result<TcpListener, BindError> {
    TcpListener::bind(addr).await.map_err(|source| BindError {
        addr,
        what,
        flag,
        env,
        source,
    })
}

/// The sockets weir serves on.
pub struct Listeners {
    /// The HTTP API.
    pub http: TcpListener,
    /// The embedded MQTT broker; `None` with an external broker.
    pub mqtt: Option<TcpListener>,
    /// The embedded broker's TLS listener, when `--mqtts-listen` names one.
    pub mqtts: Option<TcpListener>,
    /// The embedded broker's WebSocket listener, when `--mqtt-ws-listen` names one.
    pub mqtt_ws: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses `settings` name: the HTTP API, and the embedded broker unless
    /// weir reads from an external one.
    pub async fn bind(settings: &Settings) -> Result<Self, BindError> {
        let http = bind(
            settings.http_listen,
            "the HTTP API",
            "--http-listen",
            "WEIR_HTTP_LISTEN",
        )
        .await?;
        let mqtt = match settings.broker {
            Some(_) => None,
            None => Some(
                bind(
                    settings.mqtt_listen,
                    "the embedded MQTT broker",
                    "--mqtt-listen",
                    "WEIR_MQTT_LISTEN",
                )
                .await?,
            ),
        };
        let mqtts = match (&settings.broker, &settings.mqtts) {
            (None, Some(t)) => Some(
                bind(
                    t.listen,
                    "the embedded MQTT broker's TLS listener",
                    "--mqtts-listen",
                    "WEIR_MQTTS_LISTEN",
                )
                .await?,
            ),
            _ => None,
        };
        let mqtt_ws = match (&settings.broker, &settings.mqtt_ws) {
            (None, Some((listen, _))) => Some(
                bind(
                    *listen,
                    "the embedded MQTT broker's WebSocket listener",
                    "--mqtt-ws-listen",
                    "WEIR_MQTT_WS_LISTEN",
                )
                .await?,
            ),
            _ => None,
        };
        Ok(Self {
            http,
            mqtt,
            mqtts,
            mqtt_ws,
        })
    }
}

/// The operator's policy on inline destinations, with the addresses weir listens on.
fn policy(settings: &Settings, listeners: &Listeners) -> anyhow::Result<Policy> {
    let p = &settings.policy;
    let mut weir_listeners = vec![listeners.http.local_addr()?];
    for m in [&listeners.mqtt, &listeners.mqtts, &listeners.mqtt_ws]
        .into_iter()
        .flatten()
    {
        weir_listeners.push(m.local_addr()?);
    }
    Ok(Policy {
        file_dirs: p.file_dirs.clone(),
        allow_link_local: p.allow_link_local,
        weir_listeners,
        allow_weir_listeners: p.allow_weir_listeners,
        kafka_properties: p.kafka_properties.iter().cloned().collect(),
        store_options: p.store_options.iter().cloned().collect(),
        allow_ambient_credentials: p.allow_ambient_credentials,
    })
}

/// Runs weir until `shutdown` fires.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&settings).await?;
    serve(settings, listeners, shutdown).await
}

/// Runs weir on listeners the caller bound, until `shutdown` fires.
///
/// The HTTP API answers at once (`/readyz` says 503 until weir is ready); then the stored
/// rules and rule files are loaded and started, then the ingress, and weir is ready. The
/// ingress starts after the rules, so that nothing a broker has queued for weir arrives
/// before the rule that wants it.
pub async fn serve(
    settings: Settings,
    listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let policy = Arc::new(policy(&settings, &listeners)?);
    let tls = match &settings.http.tls {
        Some((cert, key)) => Some(api::server::tls_config(cert, key)?),
        None => None,
    };
    let engine = Engine::new();
    let metrics = Arc::new(Metrics::new());
    let (ingress_tx, ingress_rx) = mpsc::channel(INGRESS_QUEUE);

    enum Ingress {
        Embedded(Broker, TcpListener),
        External(Arc<ExternalBroker>),
    }
    // Stops the external publisher after the pipeline has drained.
    let publisher_stop = CancellationToken::new();
    let (publisher, ingress) = match (&settings.broker, listeners.mqtt) {
        (Some(config), _) => {
            let ext = ExternalBroker::new(config.clone())
                .with_context(|| format!("external broker {}", config.url))?;
            let ext = Arc::new(ext);
            let publisher = Publisher::External(ext.publisher(publisher_stop.clone()));
            (publisher, Ingress::External(ext))
        }
        (None, Some(listener)) => {
            let broker = Broker::with_access(
                ingress_tx.clone(),
                metrics.clone(),
                settings.mqtt_limits,
                settings.mqtt_access.clone(),
            );
            let publisher = Publisher::Embedded(broker.clone());
            (publisher, Ingress::Embedded(broker, listener))
        }
        (None, None) => anyhow::bail!("the embedded broker needs an MQTT listener"),
    };
    let mqtts = match (&settings.broker, &settings.mqtts, listeners.mqtts) {
        (None, Some(t), Some(listener)) => {
            let config = api::server::mqtt_tls_config(&t.cert, &t.key, t.client_ca.as_deref())?;
            Some((listener, tokio_rustls::TlsAcceptor::from(config), t.options))
        }
        (None, Some(_), None) => anyhow::bail!("--mqtts-listen needs a listener"),
        _ => None,
    };
    let mqtt_ws = match (&settings.broker, &settings.mqtt_ws, listeners.mqtt_ws) {
        (None, Some((_, options)), Some(listener)) => Some((listener, *options)),
        (None, Some(_), None) => anyhow::bail!("--mqtt-ws-listen needs a listener"),
        _ => None,
    };
    let external = match &ingress {
        Ingress::External(e) => Some(e.clone()),
        Ingress::Embedded(..) => None,
    };
    // The embedded broker's sessions and retained messages, saved under the data dir.
    let embedded = match &ingress {
        Ingress::Embedded(b, _) => {
            b.open_store(settings.data_dir.join("broker"), shutdown.clone());
            Some(b.clone())
        }
        Ingress::External(_) => None,
    };
    let pipeline = Pipeline::new(
        metrics.clone(),
        publisher,
        external,
        BatchSettings {
            max_rows: settings.batch_max_rows,
            linger: settings.batch_linger,
            budget: settings.rule_time_budget,
            memory_budget: settings.rule_memory_budget,
            action_queue: settings.action_queue,
            output_dir: settings.output_dir.clone(),
            state_dir: settings.data_dir.join("actions"),
            buffer_max_bytes: settings.action_buffer_max_bytes,
            policy,
        },
    );
    let shared = match &settings.rule_store {
        Some(url) => {
            let shared = shared_store::SharedStore::open(url).await?;
            tracing::info!(store = %shared_store::redact_url(url), "the rules are kept in the fleet's shared store");
            Some(Arc::new(shared))
        }
        None => None,
    };
    let store = match &shared {
        Some(s) => RuleStore::open_shared(s.clone()).await?,
        None => RuleStore::open(&settings.data_dir)?,
    };
    metrics.rule_store_corrupt.inc_by(store.corrupt_lines());
    let auth = Arc::new(auth::Auth::open(&settings.auth, &settings.data_dir)?);
    let connections = match &shared {
        Some(s) => {
            auth.use_shared(s.clone()).await?;
            connections::ConnectionStore::from_shared(s.all(shared_store::Kind::Connection).await?)
        }
        None => connections::ConnectionStore::open(&settings.data_dir)?,
    };
    let rules = Arc::new(RuleService::new(
        engine,
        pipeline.clone(),
        store,
        connections,
        settings.max_rules,
    ));
    let state = Arc::new(api::AppState {
        rules: rules.clone(),
        auth,
        ready: Default::default(),
        browsers: settings.http.browsers.clone(),
    });
    let http_addr = listeners.http.local_addr()?;
    let http_stop = CancellationToken::new();
    let http = tokio::spawn(api::server::serve(
        listeners.http,
        api::router(state.clone()),
        tls,
        http_stop.clone(),
    ));

    let started = async {
        for (name, c) in &settings.connections {
            rules
                .put_connection(name, c.0.clone(), "config")
                .await
                .map_err(|e| anyhow::anyhow!("connection '{name}' of the config file: {e}"))?;
        }
        rules.load(&settings.queries_dir).await?;
        if let Some(source) = &settings.source {
            weir_connectors::kafka_ingress::start(
                source,
                ingress_tx.clone(),
                settings.mqtt_limits.max_packet,
                metrics.clone(),
                shutdown.clone(),
            )
            .map_err(anyhow::Error::msg)?;
        }
        if let Some(store) = &shared {
            // Changes other replicas make reach this one's pipeline as they are announced.
            let mut changes = shared_store::listen(store.target(), shutdown.clone());
            let (rules, auth) = (rules.clone(), state.auth.clone());
            tokio::spawn(async move {
                use shared_store::{Change, Kind};
                while let Some(change) = changes.recv().await {
                    match change {
                        Change::One(Kind::Rule, name) => rules.sync_rule(&name).await,
                        Change::One(Kind::Connection, name) => rules.sync_connection(&name).await,
                        Change::One(Kind::Token, name) => auth.sync_token(&name).await,
                        Change::All => {
                            rules.sync_connections().await;
                            rules.sync_all().await;
                            auth.sync_tokens().await;
                        }
                    }
                }
            });
        }
        tokio::spawn(
            pipeline
                .clone()
                .route(ingress_rx, settings.broker.is_none()),
        );
        let mqtt_addr = match ingress {
            Ingress::Embedded(broker, listener) => {
                let addr = listener.local_addr()?;
                if let Some((tls, acceptor, options)) = mqtts {
                    tracing::info!(mqtts = %tls.local_addr()?, "the embedded broker's TLS listener is open");
                    tokio::spawn(broker.clone().serve_tls(
                        tls,
                        acceptor,
                        options,
                        shutdown.clone(),
                    ));
                }
                if let Some((ws, options)) = mqtt_ws {
                    tracing::info!(mqtt_ws = %ws.local_addr()?, "the embedded broker's WebSocket listener is open");
                    tokio::spawn(
                        broker
                            .clone()
                            .serve_websocket(ws, options, shutdown.clone()),
                    );
                }
                tokio::spawn(broker.serve(listener, shutdown.clone()));
                Some(addr)
            }
            Ingress::External(ext) => {
                ext.start(ingress_tx.clone(), metrics.clone(), shutdown.clone());
                // Replicas sharing a subscription and a store take over each other's
                // sessions while their owner is away.
                if let (Some(store), Some(config)) = (&shared, &settings.broker)
                    && let Some(group) = &config.share_group
                    && !config.clean_session
                {
                    fleet::start(
                        fleet::Fleet {
                            store: store.target(),
                            broker: ext.clone(),
                            client_id: config.client_id.clone(),
                            share_group: group.clone(),
                            settings: settings.fleet,
                            ingress: ingress_tx,
                            metrics,
                        },
                        shutdown.clone(),
                    );
                }
                None
            }
        };
        anyhow::Ok(mqtt_addr)
    };
    let mqtt_addr = match started.await {
        Ok(addr) => addr,
        Err(e) => {
            http_stop.cancel();
            let _ = http.await;
            pipeline.shutdown(SHUTDOWN_GRACE).await;
            return Err(e);
        }
    };
    state.ready.store(true, Ordering::Release);
    match mqtt_addr {
        Some(m) => {
            tracing::info!(http = %http_addr, mqtt = %m, "weir is running (embedded broker)")
        }
        None => tracing::info!(
            http = %http_addr,
            broker = %settings.broker.as_ref().map(|b| b.url.as_str()).unwrap_or_default(),
            "weir is running (external broker)"
        ),
    }
    shutdown.cancelled().await;
    state.ready.store(false, Ordering::Release);
    http_stop.cancel();
    http.await.context("HTTP server")?;
    pipeline.shutdown(SHUTDOWN_GRACE).await;
    if let Some(broker) = embedded {
        broker.save(std::time::Duration::from_secs(2)).await;
    }
    // Republish deliveries made while draining still reach the broker.
    publisher_stop.cancel();
    tracing::info!("weir stopped");
    Ok(())
}
