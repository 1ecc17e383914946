//! Helpers for the integration tests: start the real weir binary on free ports, talk to it
//! over HTTP and MQTT, run a real HTTP receiver for webhooks and a real Mosquitto.

#![allow(dead_code)] // each test file uses its own share of the helpers

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

/// Installs the TLS crypto provider that the HTTP client needs (once per process).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "weir-test-{tag}-{}-{}",
        std::process::id(),
        weir_engine::now_ms()
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A weir process. Killed on drop.
pub struct Weir {
    pub child: Child,
    pub http: SocketAddr,
    pub mqtt: SocketAddr,
    pub data_dir: PathBuf,
    pub client: reqwest::Client,
}

impl Weir {
    /// Starts weir with its embedded broker on free ports. A port found free can be taken
    /// by another test's process before weir binds it: then weir stops at once, saying so,
    /// and it is started again on other ports.
    pub async fn start(data_dir: &Path, extra: &[&str]) -> Weir {
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
                        data_dir.join("weir.log").display()
                    );
                }
            }
        }
        panic!("weir found no free ports in five tries");
    }

    pub async fn start_on(
        data_dir: &Path,
        http: SocketAddr,
        mqtt: SocketAddr,
        extra: &[&str],
    ) -> Weir {
        let mut w = Self::spawn(data_dir, http, mqtt, extra);
        if let Err(status) = w.wait_ready().await {
            panic!(
                "weir exited during start: {status}; see {}",
                data_dir.join("weir.log").display()
            );
        }
        w
    }

    fn spawn(data_dir: &Path, http: SocketAddr, mqtt: SocketAddr, extra: &[&str]) -> Weir {
        init();
        let no_queries = data_dir.join("no-queries");
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--http-listen".into(),
            http.to_string(),
            "--mqtt-listen".into(),
            mqtt.to_string(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--log".into(),
            "info,weir=debug".into(),
        ];
        if !extra.contains(&"--queries-dir") {
            args.extend(["--queries-dir".into(), no_queries.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        // weir's log goes to a file beside its data, named in any failure.
        let log_path = data_dir.join("weir.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weir"))
            .args(&args)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("weir starts");
        Weir {
            child,
            http,
            mqtt,
            data_dir: data_dir.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Waits until weir answers /readyz; `Err` if it exited first.
    async fn wait_ready(&mut self) -> Result<(), std::process::ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(status);
            }
            if let Ok(r) = self.client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "weir not ready within 30s; see {}",
                self.data_dir.join("weir.log").display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
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

    async fn send_json(
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
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(series).await;
            if v >= value {
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

    /// Waits until `series` is exactly `value` (a gauge going down, say).
    pub async fn wait_metric_eq(&self, series: &str, value: f64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let v = self.metric(series).await;
            if v == value {
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

impl Drop for Weir {
    fn drop(&mut self) {
        self.kill();
    }
}

/// An MQTT client: publish, and receive what its subscriptions deliver.
pub struct Mqtt {
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    /// Connection events: CONNACK, SUBACK and UNSUBACK.
    acks: tokio::sync::Mutex<mpsc::UnboundedReceiver<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mqtt {
    fn drop(&mut self) {
        // Otherwise the event loop reconnects on its own, with the same client id.
        self.task.abort();
    }
}

impl Mqtt {
    pub async fn connect(addr: SocketAddr, client_id: &str) -> Mqtt {
        let mut opts = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, eventloop) = AsyncClient::new(opts, 100);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ack_tx, mut acks) = mpsc::unbounded_channel();
        let task = tokio::spawn(poll(eventloop, tx, ack_tx));
        tokio::time::timeout(Duration::from_secs(10), acks.recv())
            .await
            .expect("MQTT connection within 10s");
        Mqtt {
            client,
            rx,
            acks: tokio::sync::Mutex::new(acks),
            task,
        }
    }

    /// Subscribes and waits for the SUBACK.
    pub async fn subscribe(&self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.acks.lock().await.recv())
            .await
            .expect("SUBACK within 10s");
    }

    /// Unsubscribes and waits for the UNSUBACK.
    pub async fn unsubscribe(&self, filter: &str) {
        self.client.unsubscribe(filter).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.acks.lock().await.recv())
            .await
            .expect("UNSUBACK within 10s");
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    /// Publishes `payload` to `topic` until `watcher` receives a message, within 10 s, and
    /// returns that message: weir subscribes to an external broker when a rule is
    /// installed, so the first publishes may find no subscriber.
    pub async fn publish_until_seen(
        &self,
        topic: &str,
        payload: &str,
        watcher: &mut Mqtt,
    ) -> (String, Value) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            self.publish(topic, payload).await;
            if let Some(got) = watcher.next(1).await {
                return got;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing on {topic} came back through the broker"
            );
        }
    }

    /// The next message, within `secs` seconds.
    pub async fn next(&mut self, secs: u64) -> Option<(String, Value)> {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .ok()??;
        let v = serde_json::from_slice(&payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&payload).into_owned()));
        Some((topic, v))
    }
}

async fn poll(
    mut el: EventLoop,
    tx: mpsc::UnboundedSender<(String, Vec<u8>)>,
    acks: mpsc::UnboundedSender<()>,
) {
    loop {
        match el.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_))) => {
                let _ = acks.send(());
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send((p.topic, p.payload.to_vec())).is_err() {
                    return;
                }
            }
            Ok(_) => {}
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A real HTTP server that records the bodies POSTed to it and answers with the statuses
/// it is told to (200 once the script runs out). A scripted 0 is a request that hangs
/// for 3 seconds and is then answered 503 (the client has timed out by then).
#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    pub bodies: Arc<Mutex<Vec<Value>>>,
    script: Arc<Mutex<Vec<u16>>>,
    pub hits: Arc<Mutex<u32>>,
    delay: Arc<Mutex<Duration>>,
}

impl Receiver {
    pub async fn start(script: Vec<u16>) -> Receiver {
        init();
        use axum::routing::post;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Receiver {
            addr,
            bodies: Default::default(),
            script: Arc::new(Mutex::new(script.into_iter().rev().collect())),
            hits: Default::default(),
            delay: Default::default(),
        };
        let state = r.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            post(move |body: axum::body::Bytes| {
                let state = state.clone();
                async move {
                    *state.hits.lock().unwrap() += 1;
                    let delay = *state.delay.lock().unwrap();
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let status = state.script.lock().unwrap().pop().unwrap_or(200);
                    if status == 0 {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        return StatusCode::SERVICE_UNAVAILABLE;
                    }
                    if status == 200 {
                        state
                            .bodies
                            .lock()
                            .unwrap()
                            .push(serde_json::from_slice(&body).unwrap());
                    }
                    StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        r
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Replaces the statuses still to be answered.
    pub fn set_script(&self, script: Vec<u16>) {
        *self.script.lock().unwrap() = script.into_iter().rev().collect();
    }

    /// Makes every answer wait this long (a slow sink).
    pub fn set_delay(&self, d: Duration) {
        *self.delay.lock().unwrap() = d;
    }

    /// Waits until `n` bodies have arrived; returns them.
    pub async fn wait_for(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let got = self.bodies.lock().unwrap().clone();
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "webhook got {} of {n} bodies: {got:?}",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// A Mosquitto broker on a free port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    pub addr: SocketAddr,
}

impl Mosquitto {
    /// A Mosquitto with one anonymous listener.
    pub async fn start() -> Mosquitto {
        let port = free_port();
        Self::start_with(
            port,
            &format!("listener {port} 127.0.0.1\nallow_anonymous true\n"),
        )
        .await
    }

    /// A Mosquitto with the given configuration; `port` is the one to wait for.
    pub async fn start_with(port: u16, config: &str) -> Mosquitto {
        let bin = ["mosquitto", "/usr/sbin/mosquitto"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("-h")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .expect("mosquitto is installed (scripts/deps.sh installs it)");
        let dir = temp_dir("mosquitto");
        let conf = dir.join("mosquitto.conf");
        std::fs::write(&conf, format!("persistence false\n{config}")).unwrap();
        let log = std::fs::File::create(dir.join("mosquitto.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mosquitto starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {addr}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Mosquitto { child, addr }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a command and panics with its output if it fails.
pub fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1/localhost and a client certificate, made with
/// the openssl command. Returns the directory holding ca.pem, server.pem/key, client.pem/key.
pub fn make_certs() -> PathBuf {
    let dir = temp_dir("certs");
    let d = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args([
            "-subj",
            "/CN=weir test CA",
            "-keyout",
            &d("ca.key"),
            "-out",
            &d("ca.pem"),
        ]));
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for who in ["server", "client"] {
        run(Command::new("openssl")
            .args([
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=weir-{who}"),
            ])
            .args([
                "-keyout",
                &d(&format!("{who}.key")),
                "-out",
                &d(&format!("{who}.csr")),
            ]));
        run(Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .args([
                "-in",
                &d(&format!("{who}.csr")),
                "-CA",
                &d("ca.pem"),
                "-CAkey",
                &d("ca.key"),
            ])
            .args([
                "-extfile",
                &d(&format!("{who}.ext")),
                "-out",
                &d(&format!("{who}.pem")),
            ]));
    }
    // Mosquitto drops root privileges before it reads its key: let it.
    for key in ["server.key", "client.key"] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    dir
}

/// The walkthrough rule, as shipped (its `-- action:` lines are SQL comments).
pub const SEED_SQL: &str = include_str!("../../queries/high_temperature.sql");

pub const HOT: &str = r#"{"currentAmbientTemperature": 90.5, "geoCoordinates": {"latitude": 52.1, "longitude": 4.3}}"#;
pub const COLD: &str = r#"{"currentAmbientTemperature": 20.0, "geoCoordinates": {"latitude": 52.1, "longitude": 4.3}}"#;

/// Checks the seed rule's output for the HOT payload from `device`.
pub fn assert_seed_output(v: &Value, device: Option<&str>) {
    match device {
        Some(d) => assert_eq!(v["deviceIdentifier"], d, "{v}"),
        None => assert!(v.get("deviceIdentifier").is_none(), "{v}"),
    }
    assert_eq!(v["celsiusReading"], 90.5, "{v}");
    assert!(
        (v["fahrenheitReading"].as_f64().unwrap() - 194.9).abs() < 1e-9,
        "{v}"
    );
    assert_eq!(v["lat"], 52.1, "{v}");
    assert_eq!(v["lon"], 4.3, "{v}");
}

/// Where `scripts/deps.sh` installs the test servers: `$WEIR_TOOLS`, or
/// `~/.cache/weir/tools`.
pub fn tools_dir() -> PathBuf {
    std::env::var_os("WEIR_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/weir/tools")
        })
}

fn tool(rel: &str) -> PathBuf {
    let p = tools_dir().join(rel);
    assert!(
        p.exists(),
        "{} is missing: run `bash scripts/deps.sh` (the README's test command does)",
        p.display()
    );
    p
}

async fn wait_listening(addr: SocketAddr, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on {addr}; its log ({}):\n{}",
            log.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A server process the tests start and stop, logging to `<dir>/<name>.log`.
struct Process {
    child: Option<Child>,
    dir: PathBuf,
    name: &'static str,
}

impl Process {
    fn new(name: &'static str) -> Process {
        Process {
            child: None,
            dir: temp_dir(name),
            name,
        }
    }

    /// (Re)starts the process and waits until it listens on `port`.
    async fn start(&mut self, cmd: &mut Command, port: u16) {
        self.stop();
        let log_path = self.dir.join(format!("{}.log", self.name));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let child = cmd
            .current_dir(&self.dir)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        self.child = Some(child);
        wait_listening(
            format!("127.0.0.1:{port}").parse().unwrap(),
            self.name,
            &log_path,
        )
        .await;
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs one of the independent clients in tests/tools with the tools' Python:
/// `<script> <command> <endpoint> <args...>`; returns what it printed. It runs on the
/// blocking pool, so that the test's runtime keeps its MQTT connections alive meanwhile.
async fn client_script(script: &str, command: &str, endpoint: &str, args: &[&str]) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/tools")
        .join(script);
    let mut argv: Vec<String> = vec![command.to_owned(), endpoint.to_owned()];
    argv.extend(args.iter().map(|a| a.to_string()));
    let what = format!("{script} {argv:?}");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(tool("venv/bin/python"))
            .arg(&path)
            .args(&argv)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A real S3 API server (moto, from PyPI) on a free port. Stopped on drop; `stop` and
/// `restart` keep the port. moto keeps its objects in memory, so a restarted server
/// starts empty.
pub struct S3Server {
    process: Process,
    pub port: u16,
}

impl S3Server {
    pub async fn start() -> S3Server {
        let mut s = S3Server {
            process: Process::new("moto"),
            port: free_port(),
        };
        s.restart().await;
        s
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let port = self.port.to_string();
        self.process
            .start(
                Command::new(tool("venv/bin/moto_server")).args(["-H", "127.0.0.1", "-p", &port]),
                self.port,
            )
            .await;
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Runs tests/tools/s3.py (boto3 and pyarrow): `<command> <endpoint> <args...>`.
    async fn python(&self, command: &str, args: &[&str]) -> String {
        client_script("s3.py", command, &self.endpoint(), args).await
    }

    pub async fn create_bucket(&self, bucket: &str) {
        self.python("create-bucket", &[bucket]).await;
    }

    /// Every object under `prefix` with its rows, read with boto3 (and pyarrow for Parquet).
    pub async fn objects(&self, bucket: &str, prefix: &str) -> Vec<Value> {
        let out: Value =
            serde_json::from_str(&self.python("read", &[bucket, prefix]).await).unwrap();
        out["objects"].as_array().unwrap().clone()
    }

    /// The options an object_store action needs to reach this server.
    pub fn options(&self) -> Value {
        serde_json::json!({
            "endpoint": self.endpoint(),
            "region": "us-east-1",
            "access_key_id": "test",
            "secret_access_key": "test",
            "allow_http": "true",
        })
    }
}

/// A real Azure Blob Storage API server (Azurite, from npm) on a free port, with its
/// well-known development account. Stopped on drop.
pub struct Azurite {
    _process: Process,
    pub port: u16,
}

impl Azurite {
    pub const ACCOUNT: &'static str = "devstoreaccount1";
    pub const KEY: &'static str =
        "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    pub async fn start() -> Azurite {
        let mut process = Process::new("azurite");
        let port = free_port();
        let data = process.dir.join("data");
        process
            .start(
                Command::new(tool("azurite/node_modules/.bin/azurite-blob"))
                    .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
                    .arg("--location")
                    .arg(&data)
                    .args(["--silent", "--skipApiVersionCheck", "--loose"]),
                port,
            )
            .await;
        Azurite {
            _process: process,
            port,
        }
    }

    /// The account's blob endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{}", self.port, Self::ACCOUNT)
    }

    /// Runs tests/tools/azure_blob.py: `<command> <endpoint> <args...>`.
    async fn python(&self, command: &str, args: &[&str]) -> String {
        client_script("azure_blob.py", command, &self.endpoint(), args).await
    }

    pub async fn create_container(&self, container: &str) {
        self.python("create-container", &[container]).await;
    }

    /// Every blob under `prefix` with its rows, read with azure-storage-blob and pyarrow.
    pub async fn objects(&self, container: &str, prefix: &str) -> Vec<Value> {
        let out: Value =
            serde_json::from_str(&self.python("read", &[container, prefix]).await).unwrap();
        out["objects"].as_array().unwrap().clone()
    }

    /// The options an object_store action needs to reach this server.
    pub fn options(&self) -> Value {
        serde_json::json!({
            "account_name": Self::ACCOUNT,
            "access_key": Self::KEY,
            "endpoint": self.endpoint(),
            "allow_http": "true",
        })
    }
}

/// A real Kafka-protocol broker (tansu) on a free port, with SQLite storage, which
/// survives `stop` and `restart`. Stopped on drop.
pub struct Kafka {
    process: Process,
    pub port: u16,
}

impl Kafka {
    pub async fn start() -> Kafka {
        let mut k = Kafka {
            process: Process::new("tansu"),
            port: free_port(),
        };
        k.restart().await;
        k
    }

    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        self.process
            .start(
                Command::new(tool("bin/tansu"))
                    .args([
                        "broker",
                        "--listener-url",
                        &url,
                        "--advertised-listener-url",
                        &url,
                    ])
                    // A path relative to the working directory, the process's own.
                    .args(["--storage-engine", "sqlite://tansu.db"])
                    .env("RUST_LOG", "warn"),
                self.port,
            )
            .await;
    }

    pub fn stop(&mut self) {
        self.process.stop();
    }

    /// Creates a topic with one partition, with an independent admin client.
    pub async fn create_topic(&self, topic: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
        let admin: AdminClient<_> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", self.bootstrap())
            .create()
            .expect("admin client");
        let r = admin
            .create_topics(
                &[NewTopic::new(topic, 1, TopicReplication::Fixed(1))],
                &AdminOptions::new(),
            )
            .await
            .expect("create_topics answers");
        for t in r {
            if let Err((name, code)) = t {
                assert!(
                    code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists,
                    "creating {name}: {code:?}"
                );
            }
        }
    }

    /// Reads every record of partition 0 of `topic` from the start with an independent
    /// consumer, until `n` arrived or `secs` passed: (key, payload as JSON, headers).
    pub async fn consume(&self, topic: &str, n: usize, secs: u64) -> Vec<KafkaRecord> {
        let (bootstrap, topic) = (self.bootstrap(), topic.to_owned());
        tokio::task::spawn_blocking(move || consume(&bootstrap, &topic, n, secs))
            .await
            .unwrap()
    }
}

/// The blocking body of [`Kafka::consume`].
fn consume(bootstrap: &str, topic: &str, n: usize, secs: u64) -> Vec<KafkaRecord> {
    {
        use rdkafka::Message as _;
        use rdkafka::consumer::{BaseConsumer, Consumer};
        use rdkafka::message::Headers;
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("test-{}", weir_engine::now_ms()))
            .set("enable.auto.commit", "false")
            .create()
            .expect("consumer");
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, rdkafka::Offset::Beginning)
            .unwrap();
        consumer.assign(&tpl).unwrap();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let mut out = Vec::new();
        while out.len() < n && Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(KafkaRecord {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: serde_json::from_slice(m.payload().unwrap_or_default())
                            .unwrap_or(Value::Null),
                        headers,
                    });
                }
                Some(Err(e)) => eprintln!("consumer: {e}"),
                None => {}
            }
        }
        out
    }
}

#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub key: Option<String>,
    pub value: Value,
    pub headers: Vec<(String, String)>,
}
