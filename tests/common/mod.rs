//! Helpers for the integration tests, one set for all of them: weir in the test process
//! or as the real binary ([`weir`]), MQTT clients and a Mosquitto ([`mqtt`]), an HTTP
//! receiver for webhooks ([`receiver`]), the S3, Azure and Kafka servers
//! ([`servers`]), and temporary directories.

// Each test file uses its own share of the helpers.
#![allow(dead_code, unused_imports)]

pub mod mqtt;
pub mod mqtt_bytes;
pub mod receiver;
pub mod servers;
pub mod weir;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;

pub use mqtt::*;
pub use receiver::*;
use serde_json::Value;
pub use servers::*;
pub use weir::*;

/// The allocator weir runs on (src/main.rs), in every test process too: weir started in
/// the test's process meters its rules' memory budgets with it
/// (`a_rule_over_its_memory_budget_fails_its_messages_and_the_others_carry_on`).
#[global_allocator]
static ALLOCATOR: weir_engine::memory::Counting<mimalloc::MiMalloc> =
    weir_engine::memory::Counting::new(mimalloc::MiMalloc);

/// Installs the TLS crypto provider that the HTTP client needs (once per process).
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A port that was free a moment ago; for servers that must be told their port.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory, removed when the test passes and kept, its path printed, when
/// it fails (for the logs in it).
pub struct TestDir(Option<tempfile::TempDir>);

/// A new temporary directory for `tag`.
pub fn temp_dir(tag: &str) -> TestDir {
    TestDir(Some(
        tempfile::Builder::new()
            .prefix(&format!("weir-test-{tag}-"))
            .tempdir()
            .expect("a temporary directory"),
    ))
}

impl std::ops::Deref for TestDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.0.as_ref().expect("present until dropped").path()
    }
}

impl AsRef<Path> for TestDir {
    fn as_ref(&self) -> &Path {
        self
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!("kept {} for the failed test", d.keep().display());
        }
    }
}

/// What weir's local store holds on disk under the data directory `dir`: its snapshot
/// and journal, as text, and the mode of each (both must be 0600: they hold secrets).
pub fn stored_text(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt;
    let mut text = String::new();
    for file in ["store.json", "store.journal"] {
        if let Ok(t) = std::fs::read_to_string(dir.join(file)) {
            let mode = std::fs::metadata(dir.join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file} is weir's alone");
            text.push_str(&t);
        }
    }
    assert!(
        !text.is_empty(),
        "weir's store in {} has files",
        dir.display()
    );
    text
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
