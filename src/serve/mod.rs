//! Running weir: [`run`] binds the listeners its settings name and serves; [`serve`] takes
//! listeners the caller bound (tests bind port 0 and run weir in their own process).
//!
//! [`serve`] is the start-up order, step by step: the HTTP API answers first (`/readyz`
//! says 503); then the store is opened, the config file's connections stored, the rule
//! files loaded and the stored rules started; then the store's feed is followed and the
//! ingress opened (after the rules, so that nothing a broker has queued arrives before the
//! rule that wants it), and weir is ready. On shutdown `/readyz` goes back to 503, the
//! HTTP server stops, the pipeline drains, the embedded broker's sessions are saved, and
//! the external publisher stops last.

mod http;
mod ingress;
mod listeners;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_connectors::delivery::Policy;
use weir_connectors::metrics::Metrics;
use weir_engine::Engine;

use crate::api::AppState;
use crate::auth::Auth;
use crate::auth::device::Devices;
use crate::config::Settings;
use crate::fleet::pg::Target;
use crate::pipeline::{BatchSettings, Pipeline};
use crate::rules::RuleService;
use crate::shadow::Shadows;
use crate::store::{self, Store};
use http::Http;
use ingress::Ingress;
pub use listeners::{BindError, Listeners};

/// Messages queued between the ingress and the router.
const INGRESS_QUEUE: usize = 8192;
/// How long shutdown waits for actions to finish what they hold.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Runs weir until `shutdown` fires.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let listeners = Listeners::bind(&settings).await?;
    serve(settings, listeners, shutdown).await
}

/// Runs weir on listeners the caller bound, until `shutdown` fires.
pub async fn serve(
    settings: Settings,
    mut listeners: Listeners,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (to_rules, from_ingress) = mpsc::channel(INGRESS_QUEUE);
    let publisher_stop = CancellationToken::new();
    let policy = policy(&settings, &listeners)?;
    let (ingress, publisher) = Ingress::prepare(
        &settings,
        &mut listeners,
        to_rules.clone(),
        &metrics,
        publisher_stop.clone(),
        &shutdown,
    )?;
    let pipeline = Pipeline::new(
        metrics.clone(),
        publisher,
        ingress.external(),
        batch_settings(&settings, policy),
    );
    let (store, fleet_db) = open_store(&settings, shutdown.clone()).await?;
    // Subscribed before anything reads the store: no change made meanwhile is missed.
    let feed = store.subscribe();
    metrics.rule_store_corrupt.inc_by(store.corrupt());
    let state = services(&settings, &pipeline, &store, &shutdown).await?;
    let http_addr = listeners.http.local_addr()?;
    let http = Http::start(listeners.http, state.clone(), &settings.http)?;
    let started = async {
        start_rules(&settings, &state.rules).await?;
        // Changes, this replica's own and other replicas', reach the pipeline as they are
        // announced.
        let mut followers = state.rules.followers();
        followers.push(state.auth.follower());
        store::follow::follow(store.clone(), feed, followers, shutdown.clone());
        let embedded = settings.ingress.broker.is_none();
        tokio::spawn(pipeline.clone().route(from_ingress, embedded));
        let embedded = ingress.embedded();
        let mqtt_addr = ingress.open(&settings, fleet_db, to_rules, metrics, &shutdown)?;
        anyhow::Ok((mqtt_addr, embedded))
    };
    let (mqtt_addr, embedded) = match started.await {
        Ok(started) => started,
        Err(e) => {
            let _ = http.stop().await;
            pipeline.shutdown(SHUTDOWN_GRACE).await;
            return Err(e);
        }
    };
    state.ready.store(true, Ordering::Release);
    log_running(&settings, http_addr, mqtt_addr);
    shutdown.cancelled().await;
    state.ready.store(false, Ordering::Release);
    http.stop().await?;
    pipeline.shutdown(SHUTDOWN_GRACE).await;
    if let Some(broker) = embedded {
        broker.save(ingress::SAVE_AT_MOST).await;
    }
    // Republish deliveries made while draining still reach the broker.
    publisher_stop.cancel();
    tracing::info!("weir stopped");
    Ok(())
}

/// What the API serves: the rule service and the authenticator, each with its copy of
/// the store's objects, and the device shadows.
async fn services(
    settings: &Settings,
    pipeline: &Arc<Pipeline>,
    store: &Store,
    stop: &CancellationToken,
) -> anyhow::Result<Arc<AppState>> {
    let engine = Engine::new();
    let rules = RuleService::open(
        engine.clone(),
        pipeline.clone(),
        store.clone(),
        settings.pipeline.max_rules,
    )
    .await?;
    let auth = Auth::open(&settings.auth, &settings.storage.data_dir, store.clone()).await?;
    let shadows = Shadows::start(
        &settings.shadows,
        &settings.storage.data_dir,
        settings.storage.rule_store.as_deref(),
        pipeline,
        settings.ingress.broker.is_none(),
        stop.clone(),
    )
    .await?;
    // Before any message flows: the ingress opens after the services.
    engine.read_shadows_with(shadows.reader());
    Ok(Arc::new(AppState {
        rules: Arc::new(rules),
        auth: Arc::new(auth),
        shadows,
        devices: Devices::new(
            settings.mqtt.access.acl.clone(),
            settings.mqtt.limits.max_packet,
        ),
        ready: Default::default(),
        browsers: settings.http.browsers.clone(),
    }))
}

/// The operator's policy on inline destinations, with the addresses weir listens on.
fn policy(settings: &Settings, listeners: &Listeners) -> anyhow::Result<Arc<Policy>> {
    let p = &settings.policy;
    Ok(Arc::new(Policy {
        file_dirs: p.file_dirs.clone(),
        allow_link_local: p.allow_link_local,
        weir_listeners: listeners.addrs()?,
        allow_weir_listeners: p.allow_weir_listeners,
        kafka_properties: p.kafka_properties.iter().cloned().collect(),
        store_options: p.store_options.iter().cloned().collect(),
        allow_ambient_credentials: p.allow_ambient_credentials,
    }))
}

/// How rules run: batches, budgets, where actions keep their state.
fn batch_settings(settings: &Settings, policy: Arc<Policy>) -> BatchSettings {
    let p = &settings.pipeline;
    BatchSettings {
        max_rows: p.batch_max_rows,
        linger: p.batch_linger,
        budget: p.rule_time_budget,
        memory_budget: p.rule_memory_budget,
        action_queue: p.action_queue,
        output_dir: settings.storage.output_dir.clone(),
        state_dir: settings.storage.data_dir.join("actions"),
        buffer_max_bytes: p.action_buffer_max_bytes,
        policy,
    }
}

/// The store the settings name: the fleet's PostgreSQL (and how to reach it, for the
/// fleet's own connections), or files under the data directory.
async fn open_store(
    settings: &Settings,
    stop: CancellationToken,
) -> anyhow::Result<(Store, Option<Target>)> {
    Ok(match &settings.storage.rule_store {
        Some(url) => {
            let pg = store::postgres::Postgres::open(url, stop).await?;
            tracing::info!(store = %pg.shown(), "the rules are kept in the fleet's shared store");
            let target = pg.target();
            (Store::new(Arc::new(pg)), Some(target))
        }
        None => {
            let local = store::local::Local::open(&settings.storage.data_dir)?;
            (Store::new(Arc::new(local)), None)
        }
    })
}

/// The config file's connections stored (each replacing a stored one of its name), the
/// rule files of the queries directory loaded, and the stored rules started.
async fn start_rules(settings: &Settings, rules: &RuleService) -> anyhow::Result<()> {
    for (name, c) in &settings.connections {
        rules
            .put_connection(name, c.0.clone(), "config")
            .await
            .with_context(|| format!("connection '{name}' of the config file"))?;
    }
    rules.load(&settings.storage.queries_dir).await
}

fn log_running(
    settings: &Settings,
    http: std::net::SocketAddr,
    mqtt: Option<std::net::SocketAddr>,
) {
    match (mqtt, &settings.ingress.broker) {
        (Some(m), _) => {
            tracing::info!(http = %http, mqtt = %m, "weir is running (embedded broker)")
        }
        (None, b) => tracing::info!(
            http = %http,
            broker = %b.as_ref().map(|b| b.url.as_str()).unwrap_or_default(),
            "weir is running (external broker)"
        ),
    }
}
