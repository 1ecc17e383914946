//! Workloads shared by weir's benchmarks: realistic telemetry payloads and the seed rule.

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
