//! `weir rules apply`: a directory of rule files is the desired state; the plan says what
//! to create, update, keep or delete, and each rule is tested before it is stored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::client::{Client, failure_text};
use crate::rules::spec::{RuleSpec, parse_rule_file};
use crate::store::{Kind, validate_name};

/// The rule files of a directory (or the file itself), by rule name.
pub fn read_rules(path: &Path) -> anyhow::Result<BTreeMap<String, RuleSpec>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sql" || x == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut rules = BTreeMap::new();
    for file in files {
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?;
        let (name, spec) = match file.extension().and_then(|x| x.to_str()) {
            Some("sql") => parse_rule_file(&file, &text)?,
            Some("json") => {
                let name = file
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .context("rule file name is not UTF-8")?
                    .to_owned();
                validate_name(Kind::Rule, &name)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
                let spec: RuleSpec = serde_json::from_str(&text)
                    .with_context(|| format!("{}: not a rule", file.display()))?;
                (name, spec)
            }
            _ => bail!("{}: a rule file is NAME.sql or NAME.json", file.display()),
        };
        if rules.insert(name.clone(), spec).is_some() {
            bail!("two files in {} define the rule '{name}'", path.display());
        }
    }
    Ok(rules)
}

/// What `apply` does to one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Create,
    Update,
    Delete,
    Unchanged,
    /// Not in the directory, and no --prune.
    Kept,
}

/// The plan: each rule of the directory or of weir, with its step, by name.
pub fn plan(
    wanted: &BTreeMap<String, RuleSpec>,
    actual: &BTreeMap<String, (Value, u64)>,
    prune: bool,
) -> Vec<(String, Step)> {
    let mut steps = Vec::new();
    for (name, spec) in wanted {
        let step = match actual.get(name) {
            None => Step::Create,
            // A rule that carries a secret is always sent: weir shows secrets as
            // "<redacted>", so no comparison can tell whether one changed.
            Some(_) if has_secrets(spec) => Step::Update,
            Some((current, _)) => match serde_json::from_value::<RuleSpec>(current.clone()) {
                Ok(current) if &current == spec => Step::Unchanged,
                _ => Step::Update,
            },
        };
        steps.push((name.clone(), step));
    }
    for name in actual.keys().filter(|n| !wanted.contains_key(*n)) {
        steps.push((name.clone(), if prune { Step::Delete } else { Step::Kept }));
    }
    steps
}

pub fn has_secrets(spec: &RuleSpec) -> bool {
    spec.actions
        .iter()
        .chain(spec.error_action.as_ref())
        .any(|a| &a.redacted() != a)
}

/// The body of `POST /v1/test` that checks a rule and runs its tests.
pub fn test_body(spec: &RuleSpec) -> Value {
    json!({
        "sql": spec.sql,
        "actions": spec.actions,
        "sql_version": spec.sql_version,
        "tests": spec.tests,
    })
}

pub async fn apply(
    client: &Client,
    dir: &Path,
    prune: bool,
    dry_run: bool,
) -> anyhow::Result<bool> {
    if !dir.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    let wanted = read_rules(dir)?;
    let actual = client.rules().await?;
    let steps = plan(&wanted, &actual, prune);
    let count = |s: Step| steps.iter().filter(|(_, x)| *x == s).count();
    for (name, step) in &steps {
        let line = match step {
            Step::Create => format!("+ create    {name}"),
            Step::Update => format!("~ update    {name}"),
            Step::Delete => format!("- delete    {name}"),
            Step::Unchanged => format!("  unchanged {name}"),
            Step::Kept => format!(
                "  kept      {name} (not in {}; --prune deletes it)",
                dir.display()
            ),
        };
        println!("{line}");
    }
    println!(
        "plan: {} to create, {} to update, {} to delete, {} unchanged",
        count(Step::Create),
        count(Step::Update),
        count(Step::Delete),
        count(Step::Unchanged)
    );
    let mut ok = true;
    for (name, step) in &steps {
        let spec = wanted.get(name);
        let result = match (step, spec) {
            (Step::Create | Step::Update, Some(spec)) if dry_run => {
                let a = client
                    .call(reqwest::Method::POST, "/v1/test", Some(&test_body(spec)))
                    .await?;
                let failed = a.body["tests"]["failed"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                if a.status != 200 {
                    Err(a.error())
                } else if !failed.is_empty() {
                    let mut e =
                        format!("{} of its {} tests failed", failed.len(), spec.tests.len());
                    for f in &failed {
                        e.push_str(&failure_text(f));
                    }
                    Err(e)
                } else {
                    Ok("would be accepted")
                }
            }
            (Step::Create | Step::Update, Some(spec)) => {
                let body = serde_json::to_value(spec)?;
                // Only over the version the plan was made from: a change someone else
                // made meanwhile is not overwritten unseen.
                let condition = match actual.get(name) {
                    Some((_, version)) => ("If-Match", format!("\"{version}\"")),
                    None => ("If-None-Match", "*".to_owned()),
                };
                let a = client
                    .call_if(
                        reqwest::Method::PUT,
                        &format!("/v1/rules/{name}"),
                        Some(&body),
                        Some(condition),
                    )
                    .await?;
                match a.status {
                    200 => Ok("updated"),
                    201 => Ok("created"),
                    _ => Err(a.error()),
                }
            }
            (Step::Delete, _) if dry_run => continue,
            (Step::Delete, _) => {
                let version = actual.get(name).map_or(0, |(_, v)| *v);
                let a = client
                    .call_if(
                        reqwest::Method::DELETE,
                        &format!("/v1/rules/{name}"),
                        None,
                        Some(("If-Match", format!("\"{version}\""))),
                    )
                    .await?;
                match a.status {
                    204 => Ok("deleted"),
                    _ => Err(a.error()),
                }
            }
            _ => continue,
        };
        match result {
            Ok(what) => println!("{name}: {what}"),
            Err(e) => {
                ok = false;
                println!("{name}: refused: {e}");
            }
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::client::spec_of;

    fn spec(sql: &str) -> RuleSpec {
        serde_json::from_value(json!({"sql": sql, "actions": []})).unwrap()
    }

    #[test]
    fn the_plan_creates_updates_and_prunes() {
        let wanted = BTreeMap::from([
            ("new".to_owned(), spec("SELECT 1 FROM 'a'")),
            ("same".to_owned(), spec("SELECT 2 FROM 'b'")),
            ("changed".to_owned(), spec("SELECT 3 FROM 'c'")),
        ]);
        let shown = |sql: &str| {
            json!({"name": "x", "sql": sql, "actions": [], "enabled": true,
                   "sql_version": "2016-03-23", "source": "api", "created_at_ms": 1,
                   "updated_at_ms": 2, "topic_filter": "b"})
        };
        let actual = BTreeMap::from([
            ("same".to_owned(), (spec_of(&shown("SELECT 2 FROM 'b'")), 1)),
            (
                "changed".to_owned(),
                (spec_of(&shown("SELECT 4 FROM 'c'")), 1),
            ),
            ("gone".to_owned(), (spec_of(&shown("SELECT 5 FROM 'd'")), 1)),
        ]);
        let steps: BTreeMap<String, Step> = plan(&wanted, &actual, false).into_iter().collect();
        assert_eq!(steps["new"], Step::Create);
        assert_eq!(steps["same"], Step::Unchanged);
        assert_eq!(steps["changed"], Step::Update);
        assert_eq!(steps["gone"], Step::Kept);
        let pruned: BTreeMap<String, Step> = plan(&wanted, &actual, true).into_iter().collect();
        assert_eq!(pruned["gone"], Step::Delete);
    }
}
