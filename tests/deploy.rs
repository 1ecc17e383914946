//! The deployment files (Dockerfile, docker-compose.yml, deploy/k8s/, deploy/grafana/,
//! deploy/prometheus.yml) checked against weir: this machine has no Docker engine or
//! Kubernetes cluster, so `tests/tools/check_deploy.py` checks what can be checked
//! without them (files named exist, variables and settings are weir's, ports and
//! selectors match, dashboards ask for metrics weir exports). And weir's metrics pass
//! `promtool check metrics`.

mod common;

use std::process::Command;

use common::*;

/// A running weir's /metrics after some traffic: a rule that matched, and one message
/// that failed.
async fn metrics_text(dir: &std::path::Path) -> String {
    let weir = Weir::start(dir, &[]).await;
    let rule = serde_json::json!({"sql": "SELECT t FROM 'm/+'", "actions": [{"republish": {"topic": "out"}}]});
    assert_eq!(weir.put_rule("m", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "device").await;
    device.publish("m/1", r#"{"t": 1}"#).await;
    device.publish("m/1", "not json").await;
    weir.wait_metric(r#"weir_rule_messages_matched_total{rule="m"}"#, 2.0)
        .await;
    weir.metrics().await
}

#[tokio::test]
async fn deployment_files_match_weir_and_its_metrics_pass_promtool() {
    let dir = temp_dir("deploy");
    let text = metrics_text(&dir).await;
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();

    let out = Command::new(tools_dir().join("venv/bin/python"))
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/tools/check_deploy.py"
        ))
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg(env!("CARGO_BIN_EXE_weir"))
        .arg(&file)
        .output()
        .expect("the checker runs (scripts/deps.sh installs its Python)");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("0 problems"), "{report}");

    let out = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool runs (scripts/deps.sh installs Debian's prometheus package)");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("process_resident_memory_bytes")
            && text.contains("process_cpu_seconds_total"),
        "{text}"
    );
}
