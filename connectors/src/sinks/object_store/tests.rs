use std::sync::Arc;

use object_store::ObjectStoreExt;
use serde_json::json;
use weir_engine::template::TemplateExprs;

use super::format::to_parquet;
use super::staging::clean_key;
use super::upload::{Pending, Uploader};
use super::*;
use crate::delivery::testing::{assert_refused, parse};
use crate::delivery::{RetryPolicy, SinkConfig};
use crate::metrics::Metrics;

#[test]
fn urls_options_and_templates_are_checked() {
    let mut exprs = TemplateExprs::default();
    let c = parse::<ObjectStoreConfig>(
        json!({"url": "s3://lake/raw/facility=${topic(3)}/", "format": "parquet",
        "options": {"endpoint": "http://127.0.0.1:9000", "allow_http": "true", "region": "us-east-1"}}),
    );
    let v = c.validate(&mut exprs).unwrap();
    assert!(v.settings.path.is_some());
    assert_eq!(v.templates.len(), 1);
    assert_eq!(exprs.as_slice().len(), 1);
    let local = parse::<ObjectStoreConfig>(json!({"url": "file:///tmp/x"}))
        .validate(&mut TemplateExprs::default())
        .unwrap();
    assert!(local.settings.path.is_none());
    assert!(local.templates.is_empty());
    assert_refused::<ObjectStoreConfig>(vec![
        (json!({"url": "ftp://b/p"}), "scheme 'ftp' is not supported"),
        (
            json!({"url": "gs://b/p", "options": {"region": "x"}}),
            "unknown Google Cloud Storage option 'region'",
        ),
        (json!({"url": "file://rel/dir"}), "absolute path"),
        (
            json!({"url": "s3://${topic(1)}/p"}),
            "bucket must be named literally",
        ),
        (
            json!({"url": "s3://b/p", "options": {"colour": "red"}}),
            "unknown S3 option 'colour'",
        ),
        (
            json!({"url": "file:///tmp", "options": {"region": "x"}}),
            "does not apply",
        ),
        (json!({"url": "file:///tmp", "max_rows": 0}), "more than 0"),
    ]);
}

#[test]
fn partition_values_cannot_climb_out_of_the_prefix() {
    assert_eq!(clean_key("a/../b//./c/"), "a/b/c");
    assert_eq!(clean_key(""), "");
}

#[test]
fn json_lines_become_parquet_with_an_inferred_schema() {
    let lines = b"{\"a\":1,\"b\":\"x\",\"n\":{\"c\":1.5}}\n{\"a\":2,\"b\":null}\n";
    let bytes = to_parquet(lines).unwrap();
    assert_eq!(&bytes[..4], b"PAR1");
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<_> = reader.map(Result::unwrap).collect();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 2);
    let schema = batches[0].schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(names, ["a", "b", "n"]);
}

/// A file whose rows cannot become Parquet is not retried for ever: it is moved aside,
/// its rows are counted as dead letters, and a good file behind it is still uploaded.
#[tokio::test]
async fn an_upload_that_can_never_succeed_is_set_aside_not_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let staging = tmp.path().join("staging");
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(&out).unwrap();
    // A number in one row and an object in the other: no schema holds both.
    let bad_rows = b"{\"a\":1}\n{\"a\":{\"b\":1}}\n";
    assert!(
        to_parquet(bad_rows).is_err(),
        "the precondition of this test"
    );
    let bad = staging.join("bad.jsonl");
    std::fs::write(&bad, bad_rows).unwrap();
    let good = staging.join("good.jsonl");
    std::fs::write(&good, b"{\"a\":1}\n").unwrap();

    let metrics = Arc::new(Metrics::new());
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(&out).unwrap());
    let uploader = Uploader {
        store: store.clone(),
        format: Format::Parquet,
        pending: vec![
            Pending::new(bad.clone(), "bad.parquet".to_owned()),
            Pending::new(good.clone(), "good.parquet".to_owned()),
        ],
        retry: RetryPolicy::default(),
        metrics: metrics.clone(),
        rule: "r".to_owned(),
        label: "0-object_store".to_owned(),
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    drop(tx);
    // With the channel closed, `run` tries each file once more and returns: a file left
    // pending would stay in `staging/`.
    tokio::time::timeout(std::time::Duration::from_secs(10), uploader.run(rx))
        .await
        .expect("the uploader stops");

    assert!(!bad.exists(), "the bad file left the staging directory");
    assert!(staging.join("rejected/bad.jsonl").exists());
    assert!(!good.exists(), "the good file was uploaded and removed");
    let uploaded = store.get(&"good.parquet".into()).await.unwrap();
    assert_eq!(&uploaded.bytes().await.unwrap()[..4], b"PAR1");
    assert!(store.get(&"bad.parquet".into()).await.is_err());
    let text = metrics.render();
    assert!(
        text.contains(
            r#"weir_action_dead_lettered_total{action="0-object_store",reason="parquet",rule="r"} 2"#
        ),
        "{text}"
    );
}

/// A staging file removed by hand before its upload is let go of, not retried for ever.
#[tokio::test]
async fn a_staging_file_that_disappeared_is_let_go() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(tmp.path()).unwrap());
    let metrics = Arc::new(Metrics::new());
    let mut uploader = Uploader {
        store,
        format: Format::Jsonl,
        pending: vec![Pending::new(
            tmp.path().join("gone.jsonl"),
            "gone.jsonl".to_owned(),
        )],
        retry: RetryPolicy::default(),
        metrics: metrics.clone(),
        rule: "r".to_owned(),
        label: "0-object_store".to_owned(),
    };
    uploader.upload_due().await;
    assert!(uploader.pending.is_empty(), "nothing is left to retry");
    assert!(
        !metrics.render().contains("dead_lettered_total{"),
        "no rows were lost"
    );
}

#[test]
fn the_policy_keeps_rules_off_local_files_and_weirs_credentials() {
    use crate::delivery::testing::{assert_allowed, assert_not_allowed, default_policy};
    let p = default_policy();
    let creds =
        json!({"access_key_id": "a", "secret_access_key": "s", "endpoint": "http://minio:9000"});
    let s3 = |extra: serde_json::Value| {
        let mut o = creds.clone();
        o.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        json!({"url": "s3://lake/raw", "options": o})
    };
    assert_not_allowed::<ObjectStoreConfig>(
        &p,
        vec![
            (
                json!({"url": "file:///etc/cron.d"}),
                "file:// destination '/etc/cron.d' is outside the directories rules may write to (/data/out); the operator setting allow_file_dirs",
            ),
            (
                json!({"url": "file:///data/out/../../etc/"}),
                "must not contain '.' or '..'",
            ),
            (
                json!({"url": "file:///data/outer"}),
                "outside the directories",
            ),
            (
                s3(json!({"web_identity_token_file": "/var/run/secrets/token"})),
                "option 'web_identity_token_file' is not allowed in a rule: it reads a local file; the operator setting allow_store_options (--allow-store-options) would allow it",
            ),
            (
                s3(json!({"aws_container_authorization_token_file": "/x"})),
                "it reads a local file",
            ),
            (
                s3(json!({"metadata_endpoint": "http://evil"})),
                "weir's own credentials",
            ),
            (
                s3(json!({"imdsv1_fallback": "true"})),
                "weir's own credentials",
            ),
            (
                s3(json!({"allow_invalid_certificates": "true"})),
                "turns off certificate checks",
            ),
            (
                s3(json!({"endpoint": "http://169.254.169.254/"})),
                "option 'endpoint': address 169.254.169.254 is link-local",
            ),
            (
                s3(json!({"endpoint": "http://127.0.0.1:8080/"})),
                "weir's own listener",
            ),
            (
                json!({"url": "s3://lake/raw", "options": {"region": "eu-west-1"}}),
                "a S3 destination in a rule must carry its own credentials (access_key_id and secret_access_key, or skip_signature)",
            ),
            (
                json!({"url": "gs://b/p", "options": {"service_account_path": "/etc/gcp.json", "service_account_key": "{}"}}),
                "it reads a local file",
            ),
            (
                json!({"url": "gs://b/p", "options": {"application_credentials": "/x"}}),
                "it reads a local file",
            ),
            (
                json!({"url": "gs://b/p"}),
                "allow_ambient_credentials (--allow-ambient-credentials)",
            ),
            (
                json!({"url": "az://c/p", "options": {"account_name": "a", "use_azure_cli": "true"}}),
                "it runs a program",
            ),
            (
                json!({"url": "az://c/p", "options": {"account_name": "a", "access_key": "k", "federated_token_file": "/t"}}),
                "it reads a local file",
            ),
            (
                json!({"url": "az://c/p", "options": {"account_name": "a", "client_id": "id"}}),
                "must carry its own credentials",
            ),
        ],
    );
    assert_allowed::<ObjectStoreConfig>(
        &p,
        vec![
            json!({"url": "file:///data/out/lake/${topic(1)}/"}),
            json!({}),
            s3(json!({"allow_http": "true", "region": "us-east-1", "session_token": "t"})),
            json!({"url": "s3://public/data", "options": {"skip_signature": "true"}}),
            json!({"url": "gs://b/p", "options": {"service_account_key": "{}"}}),
            json!({"url": "az://c/p", "options": {"account_name": "a", "access_key": "k", "endpoint": "http://127.0.0.1:10000/a", "allow_http": "true"}}),
            json!({"url": "az://c/p", "options": {"use_emulator": "true"}}),
        ],
    );
    let mut open = default_policy();
    open.allow_ambient_credentials = true;
    open.store_options
        .insert("aws_web_identity_token_file".to_owned());
    open.file_dirs.push("/srv/export".into());
    assert_allowed::<ObjectStoreConfig>(
        &open,
        vec![
            json!({"url": "s3://lake/raw", "options": {"web_identity_token_file": "/var/run/t"}}),
            json!({"url": "file:///srv/export/x"}),
        ],
    );
}
