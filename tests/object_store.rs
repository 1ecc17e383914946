//! The object-storage action against real servers installed by scripts/deps.sh: an S3 API
//! server (moto), read back with boto3 and pyarrow, and an Azure Blob Storage API server
//! (Azurite), read back with azure-storage-blob and pyarrow.

mod common;

use common::*;
use serde_json::{Value, json};

#[tokio::test]
async fn parquet_files_partitioned_by_a_template() {
    let s3 = S3Server::start().await;
    s3.create_bucket("lake").await;
    let dir = temp_dir("s3-parquet");
    let weir = Weir::start(&dir, &[]).await;
    let (status, body) = weir
        .put_rule(
            "archive",
            json!({
                "sql": "SELECT n, temp, topic(2) AS device FROM 'plant/+/t'",
                "actions": [{"object_store": {
                    "url": "s3://lake/raw/device=${topic(2)}/",
                    "format": "parquet",
                    "max_rows": 5,
                    "options": s3.options()
                }}]
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..10 {
        let d = if n % 2 == 0 { "a" } else { "b" };
        device
            .publish(
                &format!("plant/{d}/t"),
                format!(r#"{{"n": {n}, "temp": {}.5}}"#, 20 + n),
            )
            .await;
    }
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-object_store",rule="archive"}"#,
        10.0,
    )
    .await;
    let objects = wait_objects(&s3, "lake", "raw/", 2).await;
    let mut keys: Vec<&str> = objects.iter().map(|o| o["key"].as_str().unwrap()).collect();
    keys.sort();
    assert!(
        keys[0].starts_with("raw/device=a/archive-0-object_store-")
            && keys[0].ends_with(".parquet"),
        "{keys:?}"
    );
    assert!(keys[1].starts_with("raw/device=b/"), "{keys:?}");
    for o in &objects {
        assert_eq!(o["format"], "parquet");
        let rows = o["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 5, "{o}");
        let device = if o["key"].as_str().unwrap().contains("device=a") {
            "a"
        } else {
            "b"
        };
        for r in rows {
            assert_eq!(r["device"], device);
            let n = r["n"].as_i64().unwrap();
            assert_eq!(r["temp"].as_f64().unwrap(), 20.5 + n as f64);
        }
    }
}

#[tokio::test]
async fn json_lines_rolled_by_age_and_at_shutdown() {
    let s3 = S3Server::start().await;
    s3.create_bucket("logs").await;
    let dir = temp_dir("s3-jsonl");
    let mut weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT n FROM 'f'",
        "actions": [{"object_store": {"url": "s3://logs/weir", "format": "jsonl", "max_age": "1s", "options": s3.options()}}]
    });
    assert_eq!(weir.put_rule("lines", rule).await.0, 201);
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..3 {
        device.publish("f", format!(r#"{{"n": {n}}}"#)).await;
    }
    let first = wait_objects(&s3, "logs", "weir/", 1).await;
    assert_eq!(
        rows(&first),
        vec![json!({"n": 0}), json!({"n": 1}), json!({"n": 2})]
    );
    // Shutdown uploads what is open.
    let rule = json!({
        "sql": "SELECT n FROM 'f'",
        "actions": [{"object_store": {"url": "s3://logs/weir", "format": "jsonl", "max_age": "1h", "options": s3.options()}}]
    });
    assert_eq!(weir.put_rule("lines", rule).await.0, 200);
    device.publish("f", r#"{"n": 3}"#).await;
    // Both versions of the rule count in the same series: 3 rows before, 1 now.
    weir.wait_metric(
        r#"weir_action_delivered_total{action="0-object_store",rule="lines"}"#,
        4.0,
    )
    .await;
    weir.stop().await.expect("weir stops cleanly");
    let all = s3.objects("logs", "weir/").await;
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(rows(&all).len(), 4);
}

/// Every row of every object, sorted by `n`.
pub fn rows(objects: &[Value]) -> Vec<Value> {
    let mut rows: Vec<Value> = objects
        .iter()
        .flat_map(|o| o["rows"].as_array().unwrap().clone())
        .collect();
    rows.sort_by_key(|r| r["n"].as_i64());
    rows
}

async fn wait_objects(s3: &S3Server, bucket: &str, prefix: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let objects = s3.objects(bucket, prefix).await;
        if objects.len() >= n {
            return objects;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} objects: {objects:?}",
            objects.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn azure_blob_storage_through_the_same_action() {
    // Any store object_store reaches with configuration alone: here Azure, via Azurite.
    let azure = Azurite::start().await;
    azure.create_container("lake").await;
    let dir = temp_dir("azure");
    let weir = Weir::start(&dir, &[]).await;
    let rule = json!({
        "sql": "SELECT n, topic(2) AS site FROM 'site/+/t'",
        "actions": [{"object_store": {"url": "az://lake/raw/site=${topic(2)}", "format": "parquet",
            "max_rows": 3, "options": azure.options()}}]
    });
    let (status, body) = weir.put_rule("to_azure", rule).await;
    assert_eq!(status, 201, "{body}");
    let device = Mqtt::connect(weir.mqtt, "d").await;
    for n in 0..6 {
        device
            .publish("site/north/t", format!(r#"{{"n": {n}}}"#))
            .await;
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let objects = loop {
        let objects = azure.objects("lake", "raw/").await;
        if objects.len() >= 2 {
            break objects;
        }
        assert!(std::time::Instant::now() < deadline, "{objects:?}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert!(
        objects.iter().all(
            |o| o["key"].as_str().unwrap().starts_with("raw/site=north/")
                && o["format"] == "parquet"
        ),
        "{objects:?}"
    );
    let got = rows(&objects);
    assert_eq!(got.len(), 6);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r["n"], i as i64);
        assert_eq!(r["site"], "north");
    }
}
