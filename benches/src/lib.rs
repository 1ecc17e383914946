//! Workloads shared by weir's benchmarks: realistic telemetry payloads and the seed rule;
//! what the end-to-end harnesses share ([`harness`]); and the load harness itself
//! ([`load`], run by `weir-load`).

pub mod load;

use bytes::Bytes;
use weir_engine::Message;

/// The rule of the walkthrough: three fields, one comparison, arithmetic, nested fields.
pub const SEED_RULE: &str = include_str!("../../queries/high_temperature.sql");

/// `n` messages of about 250 bytes, half of which pass the seed rule's WHERE clause.
pub fn telemetry(n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            let temp = if i % 2 == 0 { 90.5 + (i % 7) as f64 } else { 20.25 + (i % 5) as f64 };
            let payload = format!(
                r#"{{"currentAmbientTemperature": {temp}, "humidity": {h}, "pressure": 1013.{p}, "geoCoordinates": {{"latitude": 52.{i:04}, "longitude": 4.{j:04}}}, "firmware": "v2.3.{f}", "status": "running", "uptime": {u}, "model": "TH-2000 rev B", "battery": 3.{b}, "alarms": []}}"#,
                h = 40 + i % 20,
                p = i % 10,
                j = (i * 7) % 10000,
                f = i % 9,
                u = 100_000 + i,
                b = 600 + i % 300,
            );
            Message::new(format!("enterprise/facilities/plant-{:02}/metrics", i % 50), Bytes::from(payload))
                .with_client_id(format!("sensor-{}", i % 1000))
        })
        .collect()
}

/// What the end-to-end harnesses (`weir-load`, `weir-conns`, `weir-scale`) share: the
/// processes they start and what they read of them.
pub mod harness {
    use std::net::SocketAddr;
    use std::process::Child;
    use std::time::{Duration, Instant};

    /// A process killed when dropped.
    pub struct Killed(pub Child);

    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// A port free now on 127.0.0.1.
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// Waits until something listens on `addr` (30 s at most).
    pub async fn wait_port(addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < deadline, "nothing listens on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU seconds (user + system) a process has used, from /proc (ticks of 1/100 s).
    pub fn cpu_seconds(pid: u32) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// The value of the series `series` (name and labels) in weir's /metrics, over HTTP.
    pub fn weir_metric(http: SocketAddr, series: &str) -> Option<f64> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(http).ok()?;
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse::<f64>().ok())
    }

    /// Resident memory of a process in KiB now (VmRSS).
    pub fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}
