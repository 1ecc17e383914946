//! `weir rules list`, `test`, `delete` and `export`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::Value;

use super::apply::{read_rules, test_body};
use super::client::{Client, failure_text};
use crate::store::{Kind, validate_name};

pub async fn list(client: &Client, as_json: bool) -> anyhow::Result<bool> {
    let a = client.call(reqwest::Method::GET, "/v1/rules", None).await?;
    if a.status != 200 {
        bail!("listing the rules: {}", a.error());
    }
    if as_json {
        println!("{}", serde_json::to_string_pretty(&a.body)?);
        return Ok(true);
    }
    println!(
        "{:<32} {:<8} {:<40} SOURCE",
        "NAME", "ENABLED", "TOPIC FILTER"
    );
    for r in a.body["rules"].as_array().into_iter().flatten() {
        println!(
            "{:<32} {:<8} {:<40} {}",
            r["name"].as_str().unwrap_or(""),
            r["enabled"].as_bool().unwrap_or(false),
            r["topic_filter"].as_str().unwrap_or(""),
            r["source"].as_str().unwrap_or("")
        );
    }
    Ok(true)
}

pub async fn test(client: &Client, paths: &[PathBuf]) -> anyhow::Result<bool> {
    let mut rules = BTreeMap::new();
    for p in paths {
        rules.extend(read_rules(p)?);
    }
    let (mut passed, mut failed, mut without) = (0, 0, 0);
    for (name, spec) in &rules {
        if spec.tests.is_empty() {
            without += 1;
            println!("{name}: no tests");
            continue;
        }
        let a = client
            .call(reqwest::Method::POST, "/v1/test", Some(&test_body(spec)))
            .await?;
        if a.status != 200 {
            failed += 1;
            println!("{name}: refused: {}", a.error());
            continue;
        }
        let failures = a.body["tests"]["failed"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if failures.is_empty() {
            passed += 1;
            println!("{name}: ok ({} tests)", spec.tests.len());
        } else {
            failed += 1;
            let mut text = format!(
                "{name}: FAILED, {} of {} tests",
                failures.len(),
                spec.tests.len()
            );
            for f in &failures {
                text.push_str(&failure_text(f));
            }
            println!("{text}");
        }
    }
    println!("{passed} rules passed, {failed} failed, {without} without tests");
    Ok(failed == 0)
}

pub async fn delete(client: &Client, names: &[String]) -> anyhow::Result<bool> {
    let mut ok = true;
    for name in names {
        validate_name(Kind::Rule, name)?;
        let a = client
            .call(reqwest::Method::DELETE, &format!("/v1/rules/{name}"), None)
            .await?;
        if a.status == 204 {
            println!("{name}: deleted");
        } else {
            ok = false;
            println!("{name}: {}", a.error());
        }
    }
    Ok(ok)
}

pub async fn export(client: &Client, dir: Option<&Path>) -> anyhow::Result<bool> {
    let rules = client.rules().await?;
    let Some(dir) = dir else {
        let specs: BTreeMap<&String, &Value> = rules.iter().map(|(n, (s, _))| (n, s)).collect();
        println!("{}", serde_json::to_string_pretty(&specs)?);
        return Ok(true);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, (spec, _)) in &rules {
        // weir checked the name; a name that could leave the directory is not written.
        validate_name(Kind::Rule, name)?;
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(spec)? + "\n")
            .with_context(|| format!("cannot write {}", file.display()))?;
        println!("{}", file.display());
    }
    Ok(true)
}
