//! The weir service: loads settings, wires ingress → pipeline → actions, serves the HTTP API.
//!
//! * [`config`]: flags, environment and config file.
//! * [`store`]: the rule store on disk and rule files.
//! * [`pipeline`]: router, rule workers, action workers.
//! * [`api`]: the HTTP API.

pub mod api;
pub mod config;
pub mod pipeline;
pub mod store;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::{Broker, ExternalBroker, Publisher};
use weir_engine::{Engine, now_ms};

use crate::config::Settings;
use crate::pipeline::{BatchSettings, Pipeline};
use crate::store::{RuleStore, StoredRule, parse_rule_file};

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

/// Runs weir until `shutdown` fires.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let http_listener = bind(
        settings.http_listen,
        "the HTTP API",
        "--http-listen",
        "WEIR_HTTP_LISTEN",
    )
    .await?;
    let engine = Engine::new();
    let metrics = Arc::new(Metrics::new());
    let (ingress_tx, ingress_rx) = mpsc::channel(INGRESS_QUEUE);

    // The ingress is made here but started after the rules, so that nothing a broker
    // has queued for weir arrives before the rule that wants it.
    enum Ingress {
        Embedded(Broker, TcpListener),
        External(Arc<ExternalBroker>),
    }
    // Stops the external publisher after the pipeline has drained.
    let publisher_stop = CancellationToken::new();
    let (publisher, ingress, mqtt_addr) = match &settings.broker {
        None => {
            let listener = bind(
                settings.mqtt_listen,
                "the embedded MQTT broker",
                "--mqtt-listen",
                "WEIR_MQTT_LISTEN",
            )
            .await?;
            let addr = listener.local_addr()?;
            let broker = Broker::new(ingress_tx.clone(), metrics.clone());
            let publisher = Publisher::Embedded(broker.clone());
            (publisher, Ingress::Embedded(broker, listener), Some(addr))
        }
        Some(config) => {
            let ext = ExternalBroker::new(config.clone())
                .with_context(|| format!("external broker {}", config.url))?;
            let ext = Arc::new(ext);
            let publisher = ext.publisher(publisher_stop.clone());
            (publisher, Ingress::External(ext), None)
        }
    };
    let external = match &ingress {
        Ingress::External(e) => Some(e.clone()),
        Ingress::Embedded(..) => None,
    };
    let pipeline = Pipeline::new(
        engine,
        metrics.clone(),
        publisher,
        external,
        BatchSettings {
            max_rows: settings.batch_max_rows,
            linger: settings.batch_linger,
            action_queue: settings.action_queue,
            output_dir: settings.output_dir.clone(),
            state_dir: settings.data_dir.join("actions"),
            buffer_max_bytes: settings.action_buffer_max_bytes,
        },
    );

    let mut store = RuleStore::open(&settings.data_dir)?;
    load_rules(&pipeline, &mut store, &settings.queries_dir).await?;
    tokio::spawn(
        pipeline
            .clone()
            .route(ingress_rx, settings.broker.is_none()),
    );
    match ingress {
        Ingress::Embedded(broker, listener) => {
            tokio::spawn(broker.serve(listener, shutdown.clone()));
        }
        Ingress::External(ext) => ext.start(ingress_tx, metrics, shutdown.clone()),
    }
    let state = Arc::new(api::AppState {
        pipeline,
        store: tokio::sync::Mutex::new(store),
        ready: Default::default(),
    });
    let app = api::router(state.clone());
    let http_addr = http_listener.local_addr()?;
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
    axum::serve(http_listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("HTTP server")?;
    state.pipeline.shutdown(SHUTDOWN_GRACE).await;
    // Republish deliveries made while draining still reach the broker.
    publisher_stop.cancel();
    tracing::info!("weir stopped");
    Ok(())
}

/// Starts the stored rules, after loading the rule files of `queries_dir` into the store
/// (a file replaces a stored rule of the same name).
async fn load_rules(
    pipeline: &Pipeline,
    store: &mut RuleStore,
    queries_dir: &Path,
) -> anyhow::Result<()> {
    if let Ok(entries) = std::fs::read_dir(queries_dir) {
        let mut files: Vec<_> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql"))
            .collect();
        files.sort();
        for path in files {
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let (name, spec) = parse_rule_file(&path, &text)?;
            let created = store
                .get(&name)
                .map(|r| r.created_at_ms)
                .unwrap_or_else(now_ms);
            let rule = StoredRule {
                name: name.clone(),
                spec,
                source: format!("file:{}", path.display()),
                created_at_ms: created,
                updated_at_ms: now_ms(),
            };
            api::apply(pipeline, store, rule)
                .await
                .map_err(|e| anyhow::anyhow!("rule file {}: {e:?}", path.display()))?;
            tracing::info!(rule = %name, file = %path.display(), "loaded rule file");
        }
    }
    let stored: Vec<StoredRule> = store.list().filter(|r| r.spec.enabled).cloned().collect();
    for rule in stored {
        if !rule.source.starts_with("file:") || !Path::new(&rule.source[5..]).exists() {
            match pipeline.prepare(&rule.name, &rule.spec).await {
                Ok(p) => pipeline.start(&rule.name, p),
                Err(e) => {
                    tracing::error!(rule = %rule.name, error = %e, "stored rule cannot start")
                }
            }
        }
    }
    Ok(())
}
