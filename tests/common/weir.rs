//! weir under test: [`Weir`] runs it in this test process, on listeners the test bound
//! to port 0 (most tests); [`WeirProcess`] runs the real binary, for what only a process
//! shows (a crash, a signal, the exit code). Both give the HTTP helpers of [`Api`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{free_port, init, run};

/// Talks to a running weir over its HTTP API.
pub struct Api {
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    /// The embedded broker's TLS listener, when the test asked for one.
    pub mqtts: Option<SocketAddr>,
    /// The embedded broker's WebSocket listener, when the test asked for one.
    pub mqtt_ws: Option<SocketAddr>,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
}

impl Api {
    fn new(http: SocketAddr, mqtt: SocketAddr, data_dir: &Path) -> Api {
        init();
        Api {
            http,
            mqtt,
            mqtts: None,
            mqtt_ws: None,
            data_dir: data_dir.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// The admin token weir made in its data directory, if it made one.
    pub fn admin_token(&self) -> Option<String> {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_owned())
    }

    /// From now on every request carries `token` (`None`: no token).
    pub fn use_token(&mut self, token: Option<&str>) {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        self.client = reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .unwrap();
    }

    /// Once weir is up: requests carry the admin token it made, if it made one.
    fn use_admin_token(&mut self) {
        if let Some(token) = self.admin_token() {
            self.use_token(Some(&token));
        }
    }

    pub async fn put_rule(&self, name: &str, body: Value) -> (StatusCode, Value) {
        self.send_json(reqwest::Method::PUT, &format!("/v1/rules/{name}"), &body)
            .await
    }

    /// `POST /v1/test`: a rule tried on sample messages.
    pub async fn test_rule(&self, body: &Value) -> (StatusCode, Value) {
        self.send_json(reqwest::Method::POST, "/v1/test", body)
            .await
    }

    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let r = self
            .client
            .request(method, self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn request(&self, method: reqwest::Method, path: &str) -> (StatusCode, Value) {
        let r = self
            .client
            .request(method, self.url(path))
            .send()
            .await
            .unwrap();
        let status = StatusCode::from_u16(r.status().as_u16()).unwrap();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric line, e.g. `weir_rule_messages_matched_total{rule="r"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        let text = self.metrics().await;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    /// Waits until `series` reaches `value`.
    pub async fn wait_metric(&self, series: &str, value: f64) {
        self.wait_metric_until(series, value, |v| v >= value).await
    }

    /// Waits until `series` is exactly `value` (a gauge going down, say).
    pub async fn wait_metric_eq(&self, series: &str, value: f64) {
        self.wait_metric_until(series, value, |v| v == value).await
    }

    async fn wait_metric_until(&self, series: &str, value: f64, done: impl Fn(f64) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(series).await;
            if done(v) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {v}, expected {value}\n{}",
                self.metrics().await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until weir answers `/readyz` with 200; `Err` when `gone()` says weir stopped
    /// first. `Ok(true)` when it answered 503 (not ready) before.
    async fn wait_ready<E>(&self, mut gone: impl FnMut() -> Option<E>) -> Result<bool, E> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut not_ready = false;
        loop {
            if let Some(e) = gone() {
                return Err(e);
            }
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await {
                if r.status().is_success() {
                    return Ok(not_ready);
                }
                not_ready |= r.status() == StatusCode::SERVICE_UNAVAILABLE;
            }
            assert!(
                Instant::now() < deadline,
                "weir not ready within 30s (data in {})",
                self.data_dir.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// The command line of a test's weir: its data directory, no rule files unless the test
/// names a queries directory, and the test's own flags.
fn args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "serve".into(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--log".into(),
        "info,weir=debug".into(),
    ];
    if !extra.contains(&"--queries-dir") {
        let no_queries = data_dir.join("no-queries");
        args.extend(["--queries-dir".into(), no_queries.display().to_string()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// weir running in this test process, on a runtime and thread of its own, on listeners
/// the test bound: no port can be taken between choosing and binding it. Stopped (as on
/// SIGTERM: rules drain, files roll) by [`Weir::stop`] or on drop.
pub struct Weir {
    api: Api,
    /// Whether `/readyz` answered 503 while weir started.
    pub answered_not_ready: bool,
    args: Vec<String>,
    shutdown: CancellationToken,
    done: Option<std::sync::mpsc::Receiver<anyhow::Result<()>>>,
}

/// Gives a weir the HTTP helpers of its [`Api`].
macro_rules! deref_to_api {
    ($t:ty) => {
        impl std::ops::Deref for $t {
            type Target = Api;
            fn deref(&self) -> &Api {
                &self.api
            }
        }

        impl std::ops::DerefMut for $t {
            fn deref_mut(&mut self) -> &mut Api {
                &mut self.api
            }
        }
    };
}

deref_to_api!(Weir);
deref_to_api!(WeirProcess);

impl Weir {
    /// Starts weir with its embedded broker (unless `extra` names one with `--broker`).
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Weir {
        let mut w = Self::launch(data_dir, extra);
        w.wait_started().await;
        w
    }

    /// Starts weir and returns at once, before it is ready: for tests of what happens
    /// while it starts. [`Weir::wait_started`] waits for the rest.
    pub fn launch(data_dir: &Path, extra: &[&str]) -> Weir {
        Self::launch_args(data_dir, args(data_dir, extra))
    }

    async fn start_args(data_dir: &Path, args: Vec<String>) -> Weir {
        let mut w = Self::launch_args(data_dir, args);
        w.wait_started().await;
        w
    }

    fn launch_args(data_dir: &Path, args: Vec<String>) -> Weir {
        init();
        log_if_asked();
        let cli = weir::config::parse_from(std::iter::once("weir".to_owned()).chain(args.clone()))
            .unwrap_or_else(|e| panic!("weir's flags {args:?}: {e}"));
        let weir::config::Command::Serve(serve) = cli.command else {
            panic!("weir serve {args:?}")
        };
        let settings = weir::config::Settings::resolve(&serve).expect("weir's settings resolve");
        let http = std::net::TcpListener::bind("127.0.0.1:0").expect("an HTTP port");
        let mqtt = std::net::TcpListener::bind("127.0.0.1:0").expect("an MQTT port");
        let mqtts = settings
            .mqtt
            .tls
            .as_ref()
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("an MQTT TLS port"));
        let mut api = Api::new(
            http.local_addr().unwrap(),
            mqtt.local_addr().unwrap(),
            data_dir,
        );
        api.mqtts = mqtts.as_ref().map(|l| l.local_addr().unwrap());
        let mqtt_ws =
            settings.mqtt.ws.as_ref().map(|_| {
                std::net::TcpListener::bind("127.0.0.1:0").expect("an MQTT WebSocket port")
            });
        api.mqtt_ws = mqtt_ws.as_ref().map(|l| l.local_addr().unwrap());
        let embedded = settings.ingress.broker.is_none();
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        let (done_tx, done) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("weir".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("weir's runtime");
                let result = runtime.block_on(async move {
                    let listen = |l: std::net::TcpListener| {
                        l.set_nonblocking(true)?;
                        tokio::net::TcpListener::from_std(l)
                    };
                    let listeners = weir::Listeners {
                        http: listen(http)?,
                        mqtt: if embedded { Some(listen(mqtt)?) } else { None },
                        mqtts: match mqtts {
                            Some(l) if embedded => Some(listen(l)?),
                            _ => None,
                        },
                        mqtt_ws: match mqtt_ws {
                            Some(l) if embedded => Some(listen(l)?),
                            _ => None,
                        },
                    };
                    weir::serve(settings, listeners, stop).await
                });
                let _ = done_tx.send(result);
            })
            .expect("weir's thread starts");
        Weir {
            api,
            answered_not_ready: false,
            args,
            shutdown,
            done: Some(done),
        }
    }

    /// Waits until weir is ready; panics if it stopped instead.
    pub async fn wait_started(&mut self) {
        let started = {
            let done = self.done.as_ref().expect("weir was launched");
            self.api.wait_ready(|| done.try_recv().ok()).await
        };
        match started {
            Ok(not_ready) => {
                self.answered_not_ready = not_ready;
                self.api.use_admin_token();
            }
            Err(result) => {
                self.done = None;
                panic!("weir stopped during start: {result:?}");
            }
        }
    }

    /// Stops weir as SIGTERM does and waits for it: what it returned.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let Some(done) = self.done.take() else {
            return Ok(());
        };
        tokio::task::spawn_blocking(move || {
            done.recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|e| Err(anyhow::anyhow!("weir did not stop: {e}")))
        })
        .await
        .unwrap()
    }

    /// Stops weir and starts it again on the same data directory (on new ports: a client
    /// of the test may have taken the old ones meanwhile).
    pub async fn restart(mut self) -> Weir {
        self.stop().await.expect("weir stops cleanly");
        let (dir, args) = (self.api.data_dir.clone(), std::mem::take(&mut self.args));
        Self::start_args(&dir, args).await
    }
}

impl Drop for Weir {
    /// Asks weir to stop and does not wait: waiting would block the test's runtime, which
    /// runs the servers weir may be draining to. Tests that need weir stopped call
    /// [`Weir::stop`].
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// With `WEIR_TEST_LOG` set (`debug`, `weir=debug`, ...), the in-process weirs log to
/// stderr.
fn log_if_asked() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if let Ok(filter) = std::env::var("WEIR_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_writer(std::io::stderr)
                .try_init();
        }
    });
}

/// The real weir binary, with its embedded broker on free ports. Killed on drop.
pub struct WeirProcess {
    api: Api,
    pub child: Child,
}

impl WeirProcess {
    /// Starts the binary on free ports. A port found free can be taken by another test's
    /// process before weir binds it: then weir stops at once, saying so, and it is started
    /// again on other ports.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> WeirProcess {
        for _ in 0..5 {
            let http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let mqtt: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let log_path = data_dir.join("weir.log");
            // The log is appended to: read only what this start wrote.
            let logged_before = std::fs::metadata(&log_path).map_or(0, |m| m.len() as usize);
            let mut w = Self::spawn(data_dir, http, mqtt, extra);
            match w.wait_ready().await {
                Ok(()) => return w,
                Err(status) => {
                    let log = std::fs::read(&log_path).unwrap_or_default();
                    let this_start = String::from_utf8_lossy(&log[logged_before.min(log.len())..]);
                    assert!(
                        this_start.contains("Address already in use"),
                        "weir exited during start: {status}; see {}",
                        log_path.display()
                    );
                }
            }
        }
        panic!("weir found no free ports in five tries");
    }

    /// Starts the binary again on the addresses of an earlier run.
    pub async fn start_on(
        data_dir: &Path,
        http: SocketAddr,
        mqtt: SocketAddr,
        extra: &[&str],
    ) -> WeirProcess {
        let mut w = Self::spawn(data_dir, http, mqtt, extra);
        if let Err(status) = w.wait_ready().await {
            panic!(
                "weir exited during start: {status}; see {}",
                data_dir.join("weir.log").display()
            );
        }
        w
    }

    fn spawn(data_dir: &Path, http: SocketAddr, mqtt: SocketAddr, extra: &[&str]) -> WeirProcess {
        let mut argv = args(data_dir, extra);
        argv.extend([
            "--http-listen".into(),
            http.to_string(),
            "--mqtt-listen".into(),
            mqtt.to_string(),
        ]);
        // weir's log goes to a file beside its data, named in any failure.
        let log_path = data_dir.join("weir.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(&argv)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weir starts");
        WeirProcess {
            api: Api::new(http, mqtt, data_dir),
            child,
        }
    }

    /// Waits until weir is ready; from then on requests carry its admin token.
    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let child = &mut self.child;
        self.api.wait_ready(|| child.try_wait().unwrap()).await?;
        self.api.use_admin_token();
        Ok(())
    }

    /// Asks weir to stop (SIGTERM) and waits for it.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        run(Command::new("kill").args(["-TERM", &self.child.id().to_string()]));
        self.child.wait().unwrap()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WeirProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
