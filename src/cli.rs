//! `weir rules ...`: the command-line client of a running weir, for scripts and CI
//! pipelines. It talks to the HTTP API with a token, like any other client, and keeps no
//! state of its own: a directory of rule files is the desired state, weir the actual one.
//!
//! Rule files are those of the queries directory (`NAME.sql`, the rest of the rule in `--`
//! comment lines) or API bodies (`NAME.json`, as `PUT /v1/rules/NAME` takes them); `export`
//! writes the second kind, so `export` then `apply` changes nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::rules::spec::{RuleSpec, parse_rule_file, validate_name};

#[derive(Debug, Args)]
pub struct RulesArgs {
    /// The weir to talk to: its HTTP API.
    #[arg(
        long,
        env = "WEIR_URL",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub url: String,
    /// API token: `viewer` for list, export and test (`editor` for test too), `editor`
    /// for apply and delete. Not needed with `--auth off`.
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the API token (instead of --token).
    #[arg(long, env = "WEIR_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// A PEM CA certificate to trust for an https:// URL (besides the system's roots).
    #[arg(long, env = "WEIR_CA_CERT", global = true)]
    pub ca_cert: Option<PathBuf>,
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// List the rules: name, enabled, topic filter and where each came from.
    List {
        /// Print weir's answer as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Make weir's rules those of a directory: prints the plan (create, update, delete,
    /// unchanged), then carries it out. A rule whose SQL, actions or tests fail is refused
    /// by weir and reported; the others are applied. Exits 1 if any change failed.
    Apply {
        dir: PathBuf,
        /// Also delete the rules weir has and the directory does not.
        #[arg(long)]
        prune: bool,
        /// Print the plan and check each new or changed rule (SQL, actions, tests) on weir
        /// without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
    /// Run the tests of rule files (or of every rule file in a directory) on weir,
    /// storing nothing. Exits 1 if any fails, printing the differences.
    Test {
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Delete rules.
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Write every rule as DIR/NAME.json (an API body; secrets as "<redacted>", which
    /// `apply` sends back to keep the stored values), or as one JSON object to stdout.
    Export { dir: Option<PathBuf> },
}

/// Runs a `weir rules` command: 0 when it did all it was asked, 1 when a change or a
/// test failed, 2 when it could not start (a bad file, weir unreachable, refused token).
pub async fn run(args: RulesArgs) -> ExitCode {
    let result = match Client::new(&args) {
        Ok(client) => command_run(&client, args.command).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("weir rules: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn command_run(client: &Client, command: RulesCommand) -> anyhow::Result<bool> {
    match command {
        RulesCommand::List { json } => list(client, json).await,
        RulesCommand::Apply {
            dir,
            prune,
            dry_run,
        } => apply(client, &dir, prune, dry_run).await,
        RulesCommand::Test { paths } => test(client, &paths).await,
        RulesCommand::Delete { names } => delete(client, &names).await,
        RulesCommand::Export { dir } => export(client, dir.as_deref()).await,
    }
}

/// The API, with the token on every request.
struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// An answer of the API: its status and JSON body (`Null` when it had none).
struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    /// The API's error message, with each failed test's difference.
    fn error(&self) -> String {
        let e = &self.body["error"];
        let mut out = match e["message"].as_str() {
            Some(m) => format!("{} ({})", m, e["code"].as_str().unwrap_or("error")),
            None => format!("HTTP {}: {}", self.status, self.body),
        };
        for f in e["failures"].as_array().into_iter().flatten() {
            out.push_str(&failure_text(f));
        }
        out
    }
}

fn failure_text(f: &Value) -> String {
    let name = match f["name"].as_str() {
        Some(n) => format!(" ({n})"),
        None => String::new(),
    };
    let mut out = format!("\n  test {}{name}: - expected, + got", f["test"]);
    for line in f["diff"].as_str().unwrap_or("").lines() {
        out.push_str("\n    ");
        out.push_str(line);
    }
    out
}

impl Client {
    fn new(args: &RulesArgs) -> anyhow::Result<Self> {
        let token = match (&args.token, &args.token_file) {
            (Some(_), Some(_)) => bail!("give --token or --token-file, not both"),
            (Some(t), None) => Some(t.trim().to_owned()),
            (None, Some(f)) => Some(
                std::fs::read_to_string(f)
                    .with_context(|| format!("cannot read the token file {}", f.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let mut builder = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(60))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(ca) = &args.ca_cert {
            let pem = std::fs::read(ca)
                .with_context(|| format!("cannot read the CA certificate {}", ca.display()))?;
            builder = builder.add_root_certificate(
                reqwest::Certificate::from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", ca.display()))?,
            );
        }
        let base = args.url.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--url must start with http:// or https://, got '{base}'");
        }
        Ok(Self {
            http: builder.build().context("cannot set up the HTTP client")?,
            base,
            token,
        })
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Answer> {
        self.call_if(method, path, body, None).await
    }

    /// [`Client::call`] with a precondition header (`If-Match`, `If-None-Match`).
    async fn call_if(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        condition: Option<(&str, String)>,
    ) -> anyhow::Result<Answer> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some((name, value)) = condition {
            req = req.header(name, value);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("cannot reach weir at {}", self.base))?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.context("reading weir's answer")?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        let answer = Answer { status, body };
        if status == 401 || status == 403 {
            bail!("{}", answer.error());
        }
        Ok(answer)
    }

    /// weir's rules, by name, each as the body that would create it, and its version.
    async fn rules(&self) -> anyhow::Result<BTreeMap<String, (Value, u64)>> {
        let a = self.call(reqwest::Method::GET, "/v1/rules", None).await?;
        if a.status != 200 {
            bail!("listing the rules: {}", a.error());
        }
        let mut out = BTreeMap::new();
        for r in a.body["rules"].as_array().into_iter().flatten() {
            let Some(name) = r["name"].as_str() else {
                continue;
            };
            out.insert(
                name.to_owned(),
                (spec_of(r), r["version"].as_u64().unwrap_or(0)),
            );
        }
        Ok(out)
    }
}

/// A rule as weir shows it, less what weir adds (name, source, times, topic filter):
/// the body of a PUT.
fn spec_of(rule: &Value) -> Value {
    let mut spec = rule.clone();
    if let Some(o) = spec.as_object_mut() {
        for k in [
            "name",
            "source",
            "created_at_ms",
            "updated_at_ms",
            "topic_filter",
            "version",
        ] {
            o.remove(k);
        }
    }
    spec
}

/// The rule files of a directory (or the file itself), by rule name.
fn read_rules(path: &Path) -> anyhow::Result<BTreeMap<String, RuleSpec>> {
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
                validate_name(&name).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
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

async fn list(client: &Client, as_json: bool) -> anyhow::Result<bool> {
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

/// What `apply` does to one rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Create,
    Update,
    Delete,
    Unchanged,
    /// Not in the directory, and no --prune.
    Kept,
}

/// The plan: each rule of the directory or of weir, with its step, by name.
fn plan(
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

fn has_secrets(spec: &RuleSpec) -> bool {
    spec.actions
        .iter()
        .chain(spec.error_action.as_ref())
        .any(|a| &a.redacted() != a)
}

/// The body of `POST /v1/test` that checks a rule and runs its tests.
fn test_body(spec: &RuleSpec) -> Value {
    json!({
        "sql": spec.sql,
        "actions": spec.actions,
        "sql_version": spec.sql_version,
        "tests": spec.tests,
    })
}

async fn apply(client: &Client, dir: &Path, prune: bool, dry_run: bool) -> anyhow::Result<bool> {
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

async fn test(client: &Client, paths: &[PathBuf]) -> anyhow::Result<bool> {
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

async fn delete(client: &Client, names: &[String]) -> anyhow::Result<bool> {
    let mut ok = true;
    for name in names {
        validate_name(name).map_err(anyhow::Error::msg)?;
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

async fn export(client: &Client, dir: Option<&Path>) -> anyhow::Result<bool> {
    let rules = client.rules().await?;
    let Some(dir) = dir else {
        let specs: BTreeMap<&String, &Value> = rules.iter().map(|(n, (s, _))| (n, s)).collect();
        println!("{}", serde_json::to_string_pretty(&specs)?);
        return Ok(true);
    };
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for (name, (spec, _)) in &rules {
        // weir checked the name; a name that could leave the directory is not written.
        validate_name(name).map_err(anyhow::Error::msg)?;
        let file = dir.join(format!("{name}.json"));
        std::fs::write(&file, serde_json::to_string_pretty(spec)? + "\n")
            .with_context(|| format!("cannot write {}", file.display()))?;
        println!("{}", file.display());
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
