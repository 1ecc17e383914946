//! The servers the connector tests talk to, started by the tests on free ports from what
//! `scripts/deps.sh` installed: moto (S3), Azurite (Azure Blob Storage) and tansu (Kafka),
//! and the independent clients (Python, rdkafka) that read back what weir wrote.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{TestDir, free_port, run, temp_dir};

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
    dir: TestDir,
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

/// A real Kafka-protocol broker (tansu) on a free port, storing its data in a PostgreSQL
/// database of its own on the machine's PostgreSQL, so that it survives `stop` and
/// `restart`, an idempotent producer's epoch bump included (tansu's SQLite storage
/// panics on that and refuses every produce after it). Stopped, and its database
/// dropped, on drop.
pub struct Kafka {
    process: Process,
    pub port: u16,
    /// Dropped after the process stops (fields drop in order).
    database: Database,
}

/// The machine's PostgreSQL (on `WEIR_PG_PORT`, default 5432, as `scripts/deps.sh`
/// makes sure), where the tests' tansu brokers keep their data.
pub fn postgres() -> String {
    let port = std::env::var("WEIR_PG_PORT").unwrap_or_else(|_| "5432".to_owned());
    format!("postgres://postgres@127.0.0.1:{port}")
}

pub fn psql(database: &str, args: &[&str]) -> String {
    let url = format!("{}/{database}", postgres());
    let out = Command::new("psql")
        .args([url.as_str(), "-q", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .output()
        .expect("psql runs (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "psql {args:?} on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Kafka {
    pub async fn start() -> Kafka {
        let port = free_port();
        let database = Database::create("weir_tansu");
        let schema = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/tansu/postgres-schema.sql"
        );
        psql(&database.name, &["-f", schema]);
        let mut k = Kafka {
            process: Process::new("tansu"),
            port,
            database,
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
                    .args(["--storage-engine", &self.database.url()])
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
        let done = move |got: &[KafkaRecord]| got.len() >= n;
        tokio::task::spawn_blocking(move || consume(&bootstrap, &topic, done, Duration::ZERO, secs))
            .await
            .unwrap()
    }

    /// Reads the records of partition 0 of `topic` from the start until `done` says what
    /// came is enough (and then for as long as more keep coming, a second apart at most:
    /// late duplicates too), or `secs` passed.
    pub async fn consume_until(
        &self,
        topic: &str,
        done: impl Fn(&[KafkaRecord]) -> bool + Send + 'static,
        secs: u64,
    ) -> Vec<KafkaRecord> {
        let (bootstrap, topic) = (self.bootstrap(), topic.to_owned());
        let quiet = Duration::from_secs(1);
        tokio::task::spawn_blocking(move || consume(&bootstrap, &topic, done, quiet, secs))
            .await
            .unwrap()
    }
}

/// The blocking body of [`Kafka::consume_until`].
fn consume(
    bootstrap: &str,
    topic: &str,
    done: impl Fn(&[KafkaRecord]) -> bool,
    quiet: Duration,
    secs: u64,
) -> Vec<KafkaRecord> {
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
        let mut out: Vec<KafkaRecord> = Vec::new();
        // Once `done`, reading goes on until `quiet` passes without a record.
        let mut quiet_since: Option<Instant> = None;
        while Instant::now() < deadline {
            if quiet_since.is_some_and(|t| t.elapsed() >= quiet) {
                break;
            }
            if quiet_since.is_none() && done(&out) {
                quiet_since = Some(Instant::now());
            }
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
                    if quiet_since.is_some() {
                        quiet_since = Some(Instant::now());
                    }
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

/// A database of its own on the machine's PostgreSQL, dropped on drop.
pub struct Database {
    pub name: String,
}

impl Database {
    pub fn create(prefix: &str) -> Database {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("{prefix}_{}_{n}", std::process::id());
        psql(
            "postgres",
            &["-c", &format!("DROP DATABASE IF EXISTS {name}")],
        );
        psql("postgres", &["-c", &format!("CREATE DATABASE {name}")]);
        Database { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}?sslmode=disable", postgres(), self.name)
    }

    /// The rows `sql` returns, a line each, columns separated by `|`.
    pub fn query(&self, sql: &str) -> String {
        psql(&self.name, &["-tA", "-c", sql])
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let drop_database = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let _ = Command::new("psql")
            .args([
                &format!("{}/postgres", postgres()),
                "-q",
                "-c",
                &drop_database,
            ])
            .output();
    }
}

/// A PostgreSQL server of its own that speaks TLS with a certificate for 127.0.0.1 from
/// [`super::make_certs`]'s CA (Debian's server binaries, which `scripts/deps.sh`
/// installs). Stopped on drop.
pub struct TlsPostgres {
    pub port: u16,
    /// The directory of ca.pem (the CA that signed the server's certificate).
    pub certs: TestDir,
    data: PathBuf,
    bin: PathBuf,
    as_postgres: bool,
}

impl TlsPostgres {
    pub fn start() -> TlsPostgres {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL's server binaries (scripts/deps.sh installs them)")
            .filter_map(|e| e.ok())
            .map(|e| e.path().join("bin"))
            .filter(|b| b.join("initdb").exists())
            .max_by_key(|b| {
                b.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        // The server does not run as root: as root, it runs as the user postgres, with
        // its data where that user may write.
        let as_postgres = Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let data = std::env::temp_dir().join(format!("weir-test-pgtls-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        std::fs::create_dir_all(&data).unwrap();
        let certs = super::make_certs();
        let server = Self {
            port: free_port(),
            certs,
            data,
            bin,
            as_postgres,
        };
        if as_postgres {
            run(Command::new("chown").args(["postgres", server.data.to_str().unwrap()]));
        }
        server.pg(
            "initdb",
            &[
                "-D",
                server.data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ],
        );
        for f in ["server.pem", "server.key"] {
            std::fs::copy(server.certs.join(f), server.data.join(f)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            server.data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if as_postgres {
            run(Command::new("chown").args([
                "postgres",
                server.data.join("server.pem").to_str().unwrap(),
                server.data.join("server.key").to_str().unwrap(),
            ]));
        }
        let options = format!(
            "-h 127.0.0.1 -p {} -k /tmp -c ssl=on -c ssl_cert_file=server.pem -c ssl_key_file=server.key",
            server.port
        );
        let log = server.data.join("server.log");
        server.pg(
            "pg_ctl",
            &[
                "-D",
                server.data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-w",
                "-o",
                &options,
                "start",
            ],
        );
        server
    }

    fn pg(&self, tool: &str, args: &[&str]) {
        let path = self.bin.join(tool);
        let out = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", path.to_str().unwrap()])
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        };
        let out = out.unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A URL of the database `postgres`, with `query` (`sslmode=...`).
    pub fn url(&self, query: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/postgres?{query}",
            self.port
        )
    }

    /// The rows `sql` returns (over a connection without TLS), a line each.
    pub fn query(&self, sql: &str) -> String {
        let out = Command::new("psql")
            .args([
                &self.url("sslmode=disable"),
                "-tA",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let data = self.data.to_str().unwrap().to_owned();
        let stop = self.bin.join("pg_ctl");
        let _ = if self.as_postgres {
            Command::new("runuser")
                .args(["-u", "postgres", "--", stop.to_str().unwrap()])
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output()
        } else {
            Command::new(&stop)
                .args(["-D", &data, "-m", "immediate", "stop"])
                .output()
        };
        let _ = std::fs::remove_dir_all(&self.data);
    }
}
