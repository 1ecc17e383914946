//! The running pipeline: the router, one worker per enabled rule, one worker per action.
//!
//! ```text
//! ingress ─▶ router ─▶ rule worker (batch by rows/linger, Rule::process) ─▶ action workers
//!  (mpsc)   (topic trie)        │ failures                                     │ undeliverable
//!                               └──────────────▶ error action worker ◀─────────┘
//! ```
//!
//! * `router.rs`: the routing table: which rules a message goes to.
//! * [`rule_worker`]: batches a rule's messages, runs the rule, hands the outputs on.
//! * [`error_records`]: what a rule's error action receives.
//! * the action workers are the connectors' ([`weir_connectors::delivery::worker`]).
//!
//! Every hop is a bounded channel, so a slow action holds back its rule, a slow rule holds
//! back the router, and the router holds back the ingress (and through it the publishing
//! clients or the external broker) instead of growing memory.
//!
//! Rule changes swap an immutable routing table. A replaced or deleted rule's worker is not
//! killed: its channel closes, it finishes what it has queued, and its actions drain and
//! close (rolling their files) after it. Which rules run is decided by the rule service
//! ([`crate::rules`]); the pipeline only runs what it is given.

mod error_records;
pub mod evaluate;
mod router;
mod rule_worker;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use weir_connectors::delivery::disk_buffer::has_segments;
use weir_connectors::delivery::policy::Resolver;
use weir_connectors::delivery::{
    Delivery, Policy, RetryPolicy, SinkContext, Undeliverable, WorkerSettings,
};
use weir_connectors::metrics::Metrics;
use weir_connectors::mqtt::{ExternalBroker, OwnService, Publisher};
use weir_connectors::sinks::{Action, ActionWorker, WorkerInputs};
use weir_engine::{Message, Rule};

use router::{Routed, Routes};

/// Most ingress messages routed against one snapshot of the routing table.
const ROUTE_BATCH: usize = 256;

#[derive(Debug, Clone)]
pub struct BatchSettings {
    pub max_rows: usize,
    pub linger: Duration,
    /// How long one batch may take to evaluate (`--rule-time-budget`).
    pub budget: Duration,
    /// How much memory one batch may take to evaluate (`--rule-memory-budget`).
    pub memory_budget: usize,
    pub action_queue: usize,
    /// Where file outputs go when their action names no URL.
    pub output_dir: std::path::PathBuf,
    /// Root of the actions' state: `<state_dir>/<rule>/<action label>/` holds an action's
    /// disk buffer (`buffer/`) and staging files (`staging/`).
    pub state_dir: std::path::PathBuf,
    pub buffer_max_bytes: u64,
    /// What inline destinations may reach.
    pub policy: Arc<Policy>,
}

/// A rule that compiled and whose actions were validated: what the pipeline runs.
pub struct CompiledRule {
    pub rule: Arc<Rule>,
    pub actions: Vec<Action>,
    pub error_action: Option<Action>,
}

/// An action whose sink could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{context}: {message}")]
pub struct BuildError {
    /// `actions[<i>]` or `error_action`.
    pub context: String,
    pub message: String,
}

/// One built action, waiting for its worker to start.
struct BuiltAction {
    worker: ActionWorker,
    ctx: SinkContext,
    retry: RetryPolicy,
    keeps_state: bool,
}

/// A rule whose actions were built, ready to start.
pub struct Prepared {
    rule: Arc<Rule>,
    actions: Vec<BuiltAction>,
    error_action: Option<BuiltAction>,
}

impl Prepared {
    /// Whether the rule's workers must start now rather than with its first message: an
    /// action keeps state of its own (files to upload, a Kafka producer), or a disk
    /// buffer holds outputs from an earlier run.
    fn has_work(&self) -> bool {
        self.actions
            .iter()
            .chain(&self.error_action)
            .any(|a| a.keeps_state || has_segments(&a.ctx.buffer_dir()))
    }
}

/// A rule's worker and its actions' workers, started when the rule's first message
/// arrives (or at once, when an action has work from an earlier run or keeps state of its
/// own). Until then the rule holds no task, channel or metric series: 10,000 rules that
/// never match cost only their compiled form.
struct RunningRule {
    name: Arc<str>,
    filter: String,
    tx: std::sync::OnceLock<mpsc::Sender<Arc<Message>>>,
    pending: Mutex<Option<Prepared>>,
}

impl Routed for RunningRule {
    fn name(&self) -> &Arc<str> {
        &self.name
    }

    fn filter(&self) -> &str {
        &self.filter
    }
}

impl RunningRule {
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

pub struct Pipeline {
    metrics: Arc<Metrics>,
    /// The service taking some topics' messages, once one is attached.
    service: std::sync::OnceLock<OwnService>,
    publisher: Publisher,
    http: reqwest::Client,
    /// The client of webhooks through named connections: the operator's, unfiltered.
    http_trusted: reqwest::Client,
    trusted_policy: Arc<Policy>,
    settings: BatchSettings,
    external: Option<Arc<ExternalBroker>>,
    /// The rules running now, by name.
    running: Mutex<HashMap<String, Arc<RunningRule>>>,
    routes: RwLock<Arc<Routes<RunningRule>>>,
    /// Every worker task, so that shutdown can wait for them to drain.
    tasks: TaskTracker,
    /// Cancelled when shutdown begins.
    stop: tokio_util::sync::CancellationToken,
}

impl Pipeline {
    pub fn new(
        metrics: Arc<Metrics>,
        publisher: Publisher,
        external: Option<Arc<ExternalBroker>>,
        settings: BatchSettings,
    ) -> Arc<Self> {
        // Webhooks follow no redirect: a redirect could lead where the policy does not
        // let a rule go, and a receiver that moved is the rule's author's to update.
        let http = reqwest::Client::builder()
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .dns_resolver(Arc::new(Resolver {
                policy: settings.policy.clone(),
            }))
            .build()
            .expect("the HTTP client builds with the installed TLS provider");
        let http_trusted = reqwest::Client::builder()
            .user_agent(concat!("weir/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("the HTTP client builds with the installed TLS provider");
        Arc::new(Self {
            metrics,
            publisher,
            http,
            http_trusted,
            trusted_policy: Arc::new(Policy::allow_all()),
            settings,
            external,
            service: Default::default(),
            running: Mutex::new(HashMap::new()),
            routes: RwLock::new(Arc::new(Routes::default())),
            tasks: TaskTracker::new(),
            stop: Default::default(),
        })
    }

    /// Attaches the service that takes the messages of its topics (once; later calls are
    /// ignored), and tells an external broker to send them.
    pub fn attach(&self, service: OwnService) {
        if let Publisher::Embedded(broker) = &self.publisher {
            broker.serve_own(service.clone());
        }
        if self.service.set(service).is_ok() {
            let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            self.publish_routes(&running);
        }
    }

    /// The publisher republished messages (and the attached service's answers) go out on.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Routes messages weir made itself (a batch's shadow answers on the embedded broker)
    /// to the rules that read their topics, as a device's are, against one snapshot of
    /// the routing table. They are not ingress: one no rule reads is not counted.
    pub async fn route_own(&self, msgs: impl IntoIterator<Item = Message>) {
        let routes = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut targets = Vec::new();
        for mut msg in msgs {
            routes.targets(&mut msg, &mut targets);
            if !targets.is_empty() {
                self.to_rules(&routes, &Arc::new(msg), &targets).await;
            }
        }
    }

    /// What inline destinations may reach.
    pub fn policy(&self) -> &Policy {
        &self.settings.policy
    }

    /// How much memory one batch may take to evaluate (`--rule-memory-budget`).
    pub fn memory_budget(&self) -> usize {
        self.settings.memory_budget
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// An action's context; one through a named connection is not held to the policy on
    /// inline destinations.
    fn context(&self, rule: &str, label: String, trusted: bool) -> SinkContext {
        let (http, policy) = if trusted {
            (self.http_trusted.clone(), self.trusted_policy.clone())
        } else {
            (self.http.clone(), self.settings.policy.clone())
        };
        SinkContext {
            rule: rule.to_owned(),
            publisher: self.publisher.clone(),
            metrics: self.metrics.clone(),
            http,
            policy,
            output_dir: self.settings.output_dir.clone(),
            state_dir: self
                .settings
                .state_dir
                .join(safe_name(rule))
                .join(safe_name(&label)),
            label,
        }
    }

    fn worker_settings(&self, ctx: &SinkContext, policy: RetryPolicy) -> WorkerSettings {
        WorkerSettings {
            policy,
            batch: self.settings.max_rows,
            buffer_dir: ctx.buffer_dir(),
            buffer_max_bytes: self.settings.buffer_max_bytes,
            stop: self.stop.clone(),
        }
    }

    /// Builds a compiled rule's sinks (this may connect, or create directories).
    pub async fn build(&self, name: &str, rule: CompiledRule) -> Result<Prepared, BuildError> {
        let mut actions = Vec::with_capacity(rule.actions.len());
        for (i, action) in rule.actions.iter().enumerate() {
            let label = format!("{i}-{}", action.kind());
            actions.push(
                self.build_one(name, label, action, format!("actions[{i}]"))
                    .await?,
            );
        }
        let error_action = match &rule.error_action {
            None => None,
            Some(action) => {
                let label = format!("error-{}", action.kind());
                Some(
                    self.build_one(name, label, action, "error_action".to_owned())
                        .await?,
                )
            }
        };
        Ok(Prepared {
            rule: rule.rule,
            actions,
            error_action,
        })
    }

    async fn build_one(
        &self,
        rule: &str,
        label: String,
        action: &Action,
        context: String,
    ) -> Result<BuiltAction, BuildError> {
        let ctx = self.context(rule, label, action.is_trusted());
        let worker = action.build(&ctx).await.map_err(|e| BuildError {
            context,
            message: e.to_string(),
        })?;
        Ok(BuiltAction {
            worker,
            ctx,
            retry: action.retry().clone(),
            keeps_state: action.keeps_state(),
        })
    }

    /// Starts (or replaces) a rule. The old version, if any, drains and stops.
    pub fn start(&self, name: &str, prepared: Prepared) {
        let eager = prepared.has_work();
        let running = Arc::new(RunningRule {
            name: name.into(),
            filter: prepared.rule.topic_filter().to_owned(),
            tx: Default::default(),
            pending: Mutex::new(Some(prepared)),
        });
        if eager {
            running.sender(self);
        }
        let mut all = self.running.lock().unwrap_or_else(|p| p.into_inner());
        all.insert(name.to_owned(), running);
        self.publish_routes(&all);
        tracing::info!(rule = name, "rule started");
    }

    /// Spawns a rule's worker and its actions' workers; returns the rule worker's channel.
    fn spawn(&self, name: &str, prepared: Prepared) -> mpsc::Sender<Arc<Message>> {
        tracing::debug!(rule = name, "starting the rule's workers");
        let (tx, rx) = mpsc::channel::<Arc<Message>>(self.settings.max_rows.max(64) * 2);

        let error_tx = prepared.error_action.map(|a| self.spawn_action(a, None));
        // Outputs an action gives up on become error records. Without an error action
        // there is nothing to forward them to: the actions log and count them.
        let failed_tx = error_tx.as_ref().map(|error_tx| {
            let (failed_tx, failed_rx) = mpsc::channel::<Undeliverable>(self.settings.action_queue);
            self.tasks.spawn(error_records::forward(
                name.to_owned(),
                failed_rx,
                error_tx.clone(),
            ));
            failed_tx
        });
        let action_txs = prepared
            .actions
            .into_iter()
            .map(|a| self.spawn_action(a, failed_tx.clone()))
            .collect();
        drop(failed_tx);
        self.tasks.spawn(rule_worker::run(rule_worker::RuleWorker {
            name: name.into(),
            rule: prepared.rule,
            rx,
            actions: action_txs,
            error_tx,
            metrics: self.metrics.clone(),
            max_rows: self.settings.max_rows,
            linger: self.settings.linger,
            budget: evaluate::Budget {
                time: self.settings.budget,
                memory: self.settings.memory_budget,
            },
        }));
        tx
    }

    /// Spawns an action's worker; returns its queue.
    fn spawn_action(
        &self,
        a: BuiltAction,
        failed: Option<mpsc::Sender<Undeliverable>>,
    ) -> mpsc::Sender<Delivery> {
        let (tx, queue) = mpsc::channel(self.settings.action_queue);
        let settings = self.worker_settings(&a.ctx, a.retry);
        self.tasks.spawn(a.worker.run(WorkerInputs {
            queue,
            settings,
            ctx: a.ctx,
            metrics: self.metrics.clone(),
            failed,
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

    /// Makes the rules in `running` the ones messages are routed to, and tells the
    /// external broker which topic filters they read: each rule's own, and its Basic
    /// Ingest filter (`$aws/rules/<rule>/<filter>`), which only that rule receives.
    fn publish_routes(&self, running: &HashMap<String, Arc<RunningRule>>) {
        let routes = Routes::new(running.values());
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
        if let Some(ext) = &self.external {
            let service = self.service.get().map_or(&[][..], |s| s.filters);
            let filters: BTreeSet<String> = running
                .values()
                .flat_map(|r| {
                    [
                        r.filter.clone(),
                        weir_engine::topic::basic_ingest_filter(&r.name, &r.filter),
                    ]
                })
                .chain(service.iter().map(|f| (*f).to_owned()))
                .collect();
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
    async fn route_one(
        &self,
        routes: &Routes<RunningRule>,
        mut msg: Message,
        targets: &mut Vec<usize>,
    ) {
        routes.targets(&mut msg, targets);
        // A will is not a request to weir's own services (AWS ignores wills on shadow
        // topics); the rules still see it.
        let service = self
            .service
            .get()
            .filter(|s| !msg.will && (s.wants)(&msg.topic));
        if targets.is_empty() && service.is_none() {
            self.metrics.ingress_unmatched.inc();
            return;
        }
        let msg = Arc::new(msg);
        if let Some(s) = service
            && s.tx.send(msg.clone()).await.is_err()
        {
            tracing::debug!(topic = %msg.topic, "the service of this topic has stopped");
        }
        self.to_rules(routes, &msg, targets).await;
    }

    /// Sends a message to the rules at `targets`.
    async fn to_rules(&self, routes: &Routes<RunningRule>, msg: &Arc<Message>, targets: &[usize]) {
        for &i in targets {
            let rule = &routes.rules[i];
            if rule.sender(self).send(msg.clone()).await.is_err() {
                // The rule was replaced or stopped between the lookup and the send.
                tracing::debug!(rule = %rule.name, "rule stopped while routing");
            }
        }
    }
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
