//! The running pipeline: router, one worker per enabled rule, one worker per action.
//!
//! ```text
//! ingress ─▶ router ─▶ rule worker (batch by rows/linger, Rule::process) ─▶ action workers
//!  (mpsc)   (topic trie)        │ failures                                     │ undeliverable
//!                               └──────────────▶ error action worker ◀─────────┘
//! ```
//!
//! Every hop is a bounded channel, so a slow action holds back its rule, a slow rule holds
//! back the router, and the router holds back the ingress (and through it the publishing
//! clients or the external broker) instead of growing memory.
//!
//! Rule changes swap an immutable routing table. A replaced or deleted rule's worker is not
//! killed: its channel closes, it finishes what it has queued, and its actions drain and
//! close (rolling their files) after it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use weir_connectors::actions::WorkerSettings;
use weir_connectors::actions::{
    self, Action, ActionConfig, ActionContext, Delivery, Undeliverable,
};
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::{ExternalBroker, Publisher};
use weir_connectors::retry::RetryPolicy;
use weir_engine::template::TemplateExprs;
use weir_engine::topic::{TopicTrie, basic_ingest};
use weir_engine::{Engine, FailureReason, Message, Rule, SqlError, now_ms};

use crate::store::RuleSpec;

/// Why a rule was refused.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{0}")]
    Sql(SqlError),
    #[error("{context}: {message}")]
    Action { context: String, message: String },
    #[error("{field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub max_rows: usize,
    pub linger: Duration,
    pub action_queue: usize,
    /// Where file outputs go when their action names no URL.
    pub output_dir: std::path::PathBuf,
    /// Root of the actions' state: `<state_dir>/<rule>/<action label>/` holds an action's
    /// disk buffer (`buffer/`) and staging files (`staging/`).
    pub state_dir: std::path::PathBuf,
    pub buffer_max_bytes: u64,
}

/// Most ingress messages routed against one snapshot of the routing table.
const ROUTE_BATCH: usize = 256;

/// A running rule: its topic filter and its worker.
type RunningRule = (String, Arc<Worker>);

struct Route {
    name: Arc<str>,
    filter: String,
    worker: Arc<Worker>,
}

/// A rule's worker and its actions' workers, started when the rule's first message
/// arrives (or at once, when an action has work from an earlier run or keeps state of its
/// own). Until then the rule holds no task, channel or metric series: 10,000 rules that
/// never match cost only their compiled form.
struct Worker {
    name: Arc<str>,
    tx: std::sync::OnceLock<mpsc::Sender<Arc<Message>>>,
    pending: Mutex<Option<Prepared>>,
}

impl Worker {
    /// The rule worker's channel, starting the workers if they are not running yet.
    fn sender(&self, pipeline: &Pipeline) -> &mpsc::Sender<Arc<Message>> {
        self.tx.get_or_init(|| {
            let prepared = self
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take()
                .expect("a worker that has not started holds its prepared rule");
            pipeline.spawn(&self.name, prepared)
        })
    }
}

#[derive(Default)]
struct Routes {
    trie: TopicTrie<usize>,
    rules: Vec<Route>,
    /// Rule name → index in `rules`, for Basic Ingest topics.
    by_name: HashMap<Arc<str>, usize>,
}

/// A rule that compiled and whose actions were built, ready to start.
pub struct Prepared {
    rule: Arc<Rule>,
    actions: Vec<(Action, ActionContext, RetryPolicy)>,
    error_action: Option<(Action, ActionContext, RetryPolicy)>,
}

impl Prepared {
    /// Whether the rule's workers must start now rather than with its first message: an
    /// action keeps state of its own (files to upload, a Kafka producer), or a disk
    /// buffer holds outputs from an earlier run.
    fn has_work(&self) -> bool {
        self.actions
            .iter()
            .chain(&self.error_action)
            .any(|(action, ctx, _)| {
                !action.is_stateless() || actions::spool::has_segments(&buffer_dir(ctx))
            })
    }
}

pub struct Pipeline {
    engine: Arc<Engine>,
    metrics: Arc<Metrics>,
    publisher: Publisher,
    http: reqwest::Client,
    settings: BatchSettings,
    external: Option<Arc<ExternalBroker>>,
    /// The rules running now: name → (topic filter, channel).
    running: Mutex<HashMap<String, RunningRule>>,
    routes: RwLock<Arc<Routes>>,
    /// Every worker task, so that shutdown can wait for them to drain.
    tasks: TaskTracker,
    /// Cancelled when shutdown begins.
    stop: tokio_util::sync::CancellationToken,
}

impl Pipeline {
    pub fn new(
        engine: Arc<Engine>,
        metrics: Arc<Metrics>,
        publisher: Publisher,
        external: Option<Arc<ExternalBroker>>,
        settings: BatchSettings,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the HTTP client builds with the installed TLS provider");
        Arc::new(Self {
            engine,
            metrics,
            publisher,
            http,
            settings,
            external,
            running: Mutex::new(HashMap::new()),
            routes: RwLock::new(Arc::new(Routes::default())),
            tasks: TaskTracker::new(),
            stop: Default::default(),
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn context(&self, rule: &str, label: String) -> ActionContext {
        ActionContext {
            rule: rule.to_owned(),
            publisher: self.publisher.clone(),
            http: self.http.clone(),
            output_dir: self.settings.output_dir.clone(),
            state_dir: self
                .settings
                .state_dir
                .join(safe_name(rule))
                .join(safe_name(&label)),
            label,
        }
    }

    fn worker_settings(&self, ctx: &ActionContext, policy: RetryPolicy) -> WorkerSettings {
        WorkerSettings {
            policy,
            batch: self.settings.max_rows,
            buffer_dir: buffer_dir(ctx),
            buffer_max_bytes: self.settings.buffer_max_bytes,
            stop: self.stop.clone(),
        }
    }

    /// Checks a rule without building anything: SQL, templates, action configs.
    pub fn check(&self, spec: &RuleSpec) -> Result<Arc<Rule>, RuleError> {
        if spec.sql_version != crate::store::SQL_VERSION {
            return Err(RuleError::Invalid {
                field: "sql_version",
                message: format!(
                    "SQL version '{}' is not supported; weir implements AWS IoT SQL {}",
                    spec.sql_version,
                    crate::store::SQL_VERSION
                ),
            });
        }
        let mut exprs = TemplateExprs::default();
        for (i, a) in spec.actions.iter().enumerate() {
            check_action(a, &format!("actions[{i}]"), &mut exprs)?;
        }
        if let Some(a) = &spec.error_action {
            let mut own = TemplateExprs::default();
            check_action(a, "error_action", &mut own)?;
            if !own.as_slice().is_empty() {
                return Err(RuleError::Action {
                    context: "error_action".to_owned(),
                    message: "the error action's parameters cannot use ${...} templates".to_owned(),
                });
            }
        }
        Rule::compile(&self.engine, &spec.sql, exprs.as_slice())
            .map(Arc::new)
            .map_err(RuleError::Sql)
    }

    /// Compiles a rule and builds its actions.
    pub async fn prepare(&self, name: &str, spec: &RuleSpec) -> Result<Prepared, RuleError> {
        // `check` compiles the rule with the actions' template expressions in the order in
        // which `Action::build` registers them below, so its rule is the one to run.
        let rule = self.check(spec)?;
        let mut exprs = TemplateExprs::default();
        let mut actions = Vec::with_capacity(spec.actions.len());
        for (i, config) in spec.actions.iter().enumerate() {
            let ctx = self.context(name, format!("{i}-{}", config.kind()));
            let action =
                Action::build(config, &mut exprs, &ctx)
                    .await
                    .map_err(|e| RuleError::Action {
                        context: format!("actions[{i}]"),
                        message: e.to_string(),
                    })?;
            actions.push((action, ctx, config.retry()));
        }
        let error_action = match &spec.error_action {
            None => None,
            Some(config) => {
                let ctx = self.context(name, format!("error-{}", config.kind()));
                let mut own = TemplateExprs::default();
                let action =
                    Action::build(config, &mut own, &ctx)
                        .await
                        .map_err(|e| RuleError::Action {
                            context: "error_action".to_owned(),
                            message: e.to_string(),
                        })?;
                Some((action, ctx, config.retry()))
            }
        };
        debug_assert_eq!(exprs.as_slice().len(), rule.template_count());
        Ok(Prepared {
            rule,
            actions,
            error_action,
        })
    }

    /// Starts (or replaces) a rule. The old version, if any, drains and stops.
    pub fn start(&self, name: &str, prepared: Prepared) {
        let filter = prepared.rule.topic_filter().to_owned();
        let eager = prepared.has_work();
        let worker = Arc::new(Worker {
            name: name.into(),
            tx: Default::default(),
            pending: Mutex::new(Some(prepared)),
        });
        if eager {
            worker.sender(self);
        }
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.insert(name.to_owned(), (filter, worker));
        self.publish_routes(&running);
        tracing::info!(rule = name, "rule started");
    }

    /// Spawns a rule's worker and its actions' workers; returns the rule worker's channel.
    fn spawn(&self, name: &str, prepared: Prepared) -> mpsc::Sender<Arc<Message>> {
        tracing::debug!(rule = name, "starting the rule's workers");
        let (tx, rx) = mpsc::channel::<Arc<Message>>(self.settings.max_rows.max(64) * 2);

        let error_tx = prepared.error_action.map(|(action, ctx, policy)| {
            let (etx, erx) = mpsc::channel(self.settings.action_queue);
            let settings = self.worker_settings(&ctx, policy);
            self.tasks.spawn(actions::run_worker(
                action,
                erx,
                settings,
                ctx,
                self.metrics.clone(),
                None,
            ));
            etx
        });
        // Outputs an action gives up on become error records. Without an error action
        // there is nothing to forward them to: the actions log and count them.
        let (failed_tx, mut failed_rx) = mpsc::channel::<Undeliverable>(self.settings.action_queue);
        let failed_tx = error_tx.is_some().then_some(failed_tx);
        if failed_tx.is_some() {
            let error_tx = error_tx.clone();
            let rule_name = name.to_owned();
            self.tasks.spawn(async move {
                while let Some(u) = failed_rx.recv().await {
                    let record = error_record(
                        &rule_name,
                        Some(&u.label),
                        u.error.reason,
                        &u.error.message,
                        &u.delivery.source,
                        Some(&u.delivery.payload),
                    );
                    send_error(&error_tx, &rule_name, record, u.delivery.source).await;
                }
            });
        }
        let mut action_txs = Vec::with_capacity(prepared.actions.len());
        for (action, ctx, policy) in prepared.actions {
            let (atx, arx) = mpsc::channel(self.settings.action_queue);
            let settings = self.worker_settings(&ctx, policy);
            self.tasks.spawn(actions::run_worker(
                action,
                arx,
                settings,
                ctx,
                self.metrics.clone(),
                failed_tx.clone(),
            ));
            action_txs.push(atx);
        }
        drop(failed_tx);
        self.tasks.spawn(rule_worker(RuleWorker {
            name: name.into(),
            rule: prepared.rule,
            rx,
            actions: action_txs,
            error_tx,
            metrics: self.metrics.clone(),
            max_rows: self.settings.max_rows,
            linger: self.settings.linger,
        }));
        tx
    }

    /// Stops a rule (deleted or disabled). Its queued messages are still processed.
    pub fn stop(&self, name: &str) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        if running.remove(name).is_some() {
            self.publish_routes(&running);
            tracing::info!(rule = name, "rule stopped");
        }
    }

    /// Stops every rule and waits up to `grace` for the workers to finish what they hold
    /// (so that files are rolled and queued deliveries made).
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            running.clear();
            self.publish_routes(&running);
        }
        self.tasks.close();
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "some actions were still busy at shutdown; their queued outputs are lost"
            );
        }
    }

    fn publish_routes(&self, running: &HashMap<String, RunningRule>) {
        let mut routes = Routes::default();
        for (name, (filter, worker)) in running {
            let name: Arc<str> = name.as_str().into();
            routes.trie.insert(filter, routes.rules.len());
            routes.by_name.insert(name.clone(), routes.rules.len());
            routes.rules.push(Route {
                name,
                filter: filter.clone(),
                worker: worker.clone(),
            });
        }
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        if let Some(ext) = &self.external {
            let filters: BTreeSet<String> = running.values().map(|(f, _)| f.clone()).collect();
            ext.set_filters(filters);
        }
    }

    /// Routes ingress messages to the rules whose filters match, until the ingress closes.
    pub async fn route(self: Arc<Self>, mut ingress: mpsc::Receiver<Message>, embedded: bool) {
        let mut targets: Vec<usize> = Vec::new();
        let mut inbox: Vec<Message> = Vec::new();
        // What is queued is routed together, against one snapshot of the routing table.
        while ingress.recv_many(&mut inbox, ROUTE_BATCH).await > 0 {
            if embedded {
                self.metrics.ingress_messages.inc_by(inbox.len() as u64);
            }
            let routes = self
                .routes
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for msg in inbox.drain(..) {
                self.route_one(&routes, msg, &mut targets).await;
            }
        }
    }

    /// Sends one message to every rule whose filter matches its topic.
    async fn route_one(&self, routes: &Routes, msg: Message, targets: &mut Vec<usize>) {
        targets.clear();
        let mut msg = msg;
        if let Some((rule, topic)) = basic_ingest(&msg.topic) {
            // Basic Ingest: only the named rule, and only if its filter matches.
            if let Some(&i) = routes.by_name.get(rule)
                && weir_engine::topic::matches(&routes.rules[i].filter, topic)
            {
                targets.push(i);
            }
            msg.topic = topic.to_owned();
        } else {
            routes.trie.for_each_match(&msg.topic, |i| targets.push(*i));
        }
        if targets.is_empty() {
            self.metrics.ingress_unmatched.inc();
            return;
        }
        let msg = Arc::new(msg);
        for &i in targets.iter() {
            let route = &routes.rules[i];
            if route.worker.sender(self).send(msg.clone()).await.is_err() {
                // The rule was replaced or stopped between the lookup and the send.
                tracing::debug!(rule = %route.name, "rule stopped while routing");
            }
        }
    }
}

/// Where an action keeps its disk buffer.
fn buffer_dir(ctx: &ActionContext) -> std::path::PathBuf {
    ctx.state_dir.join("buffer")
}

/// A name usable as one path component.
fn safe_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn check_action(
    a: &ActionConfig,
    context: &str,
    exprs: &mut TemplateExprs,
) -> Result<(), RuleError> {
    a.validate().map_err(|e| RuleError::Action {
        context: context.to_owned(),
        message: e.to_string(),
    })?;
    a.collect_templates(exprs).map_err(|e| RuleError::Action {
        context: context.to_owned(),
        message: e.to_string(),
    })
}

struct RuleWorker {
    name: Arc<str>,
    rule: Arc<Rule>,
    rx: mpsc::Receiver<Arc<Message>>,
    actions: Vec<mpsc::Sender<Delivery>>,
    error_tx: Option<mpsc::Sender<Delivery>>,
    metrics: Arc<Metrics>,
    max_rows: usize,
    linger: Duration,
}

async fn rule_worker(mut w: RuleWorker) {
    let name: &str = &w.name;
    // The rule's series appear with its first message, and a failure reason's with its
    // first failure: an idle rule should cost little.
    let mut series = None;
    let mut failed: HashMap<FailureReason, prometheus::IntCounter> = HashMap::new();
    // Grows with the first messages and is reused: an idle rule holds no batch memory.
    let mut batch: Vec<Arc<Message>> = Vec::new();
    loop {
        batch.clear();
        let Some(first) = w.rx.recv().await else {
            break;
        };
        batch.push(first);
        // Take what is already queued; unless that fills the batch, sleep out the linger
        // time and take what came meanwhile. Sleeping rather than waiting on the queue
        // wakes the worker once per batch instead of once per message.
        let deadline = tokio::time::Instant::now() + w.linger;
        take_queued(&mut w.rx, &mut batch, w.max_rows);
        if batch.len() < w.max_rows && !w.linger.is_zero() && !w.rx.is_closed() {
            tokio::time::sleep_until(deadline).await;
            take_queued(&mut w.rx, &mut batch, w.max_rows);
        }
        let (matched, passed, filtered, latency) = series.get_or_insert_with(|| {
            let m = &w.metrics;
            (
                m.rule_matched.with_label_values(&[name]),
                m.rule_passed.with_label_values(&[name]),
                m.rule_filtered.with_label_values(&[name]),
                m.rule_latency.with_label_values(&[name]),
            )
        });
        matched.inc_by(batch.len() as u64);
        let outcome = w.rule.process(&batch);
        filtered.inc_by(outcome.filtered_out as u64);
        passed.inc_by(outcome.outputs.len() as u64);
        for out in outcome.outputs {
            let delivery = Delivery {
                payload: out.payload,
                params: Arc::new(out.params),
                source: batch[out.index].clone(),
            };
            for tx in &w.actions {
                if tx.send(delivery.clone()).await.is_err() {
                    tracing::error!(rule = name, "an action stopped early; output lost");
                }
            }
        }
        for f in outcome.failures {
            failed
                .entry(f.reason)
                .or_insert_with(|| {
                    w.metrics
                        .rule_failed
                        .with_label_values(&[name, f.reason.as_str()])
                })
                .inc();
            let msg = &batch[f.index];
            tracing::debug!(rule = name, topic = %msg.topic, reason = f.reason.as_str(), error = %f.message, "message failed");
            let record = error_record(name, None, f.reason.as_str(), &f.message, msg, None);
            Box::pin(send_error(&w.error_tx, name, record, msg.clone())).await;
        }
        let now = now_ms();
        for m in &batch {
            latency.observe((now - m.received_at_ms).max(0) as f64 / 1000.0);
        }
        // Let go of the messages now: one that no action holds is acknowledged.
        batch.clear();
    }
    tracing::debug!(rule = name, "rule worker finished");
}

/// Moves queued messages into `batch` until it holds `max` or the queue is empty.
fn take_queued(rx: &mut mpsc::Receiver<Arc<Message>>, batch: &mut Vec<Arc<Message>>, max: usize) {
    while batch.len() < max {
        match rx.try_recv() {
            Ok(m) => batch.push(m),
            Err(_) => break,
        }
    }
}

async fn send_error(
    tx: &Option<mpsc::Sender<Delivery>>,
    rule: &str,
    record: Bytes,
    source: Arc<Message>,
) {
    let Some(tx) = tx else {
        return;
    };
    let d = Delivery {
        payload: record,
        params: Arc::new(Vec::new()),
        source,
    };
    if tx.send(d).await.is_err() {
        tracing::error!(rule, "error action stopped early; error record lost");
    }
}

/// The JSON document the error action receives.
fn error_record(
    rule: &str,
    action: Option<&str>,
    reason: &str,
    error: &str,
    msg: &Message,
    output: Option<&Bytes>,
) -> Bytes {
    let payload: Option<serde_json::Value> = serde_json::from_slice(&msg.payload).ok();
    let mut doc = json!({
        "rule": rule,
        "reason": reason,
        "error": error,
        "topic": msg.topic,
        "clientid": msg.client_id,
        "timestamp": msg.received_at_ms,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(&msg.payload),
    });
    if let Some(a) = action {
        doc["action"] = json!(a);
    }
    if let Some(p) = payload {
        doc["payload"] = p;
    }
    if let Some(o) = output.and_then(|o| serde_json::from_slice::<serde_json::Value>(o).ok()) {
        doc["output"] = o;
    }
    Bytes::from(serde_json::to_vec(&doc).expect("a JSON value serialises"))
}
