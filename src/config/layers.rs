//! The layers of settings: defaults < config file < environment < flags, with no list of
//! settings of its own. Each flag of `weir serve` gets its environment variable from its
//! name (`--http-listen`: `WEIR_HTTP_LISTEN`); a config file's key names the flag (with
//! `_` for `-`), and its value becomes that flag's default, so that clap itself takes a
//! flag over its environment variable over the file over the built-in default. The file's
//! `[connections.<name>]` tables are the one thing only a file holds.

use std::ffi::OsString;
use std::path::Path;

use anyhow::{Context, bail};
use clap::{Arg, CommandFactory, FromArgMatches};

use super::args::{Cli, Command, FileConnection};

/// Why the command line was not taken: clap's own error (which prints help, the version,
/// or what was wrong, and exits with its code), or the config file's.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Flags(#[from] clap::Error),
    #[error("{0:#}")]
    File(anyhow::Error),
}

/// weir's command line, with each `serve` flag's environment variable.
pub fn command() -> clap::Command {
    Cli::command().mut_subcommand("serve", |serve| {
        serve.mut_args(|a| {
            let env = format!("WEIR_{}", a.get_id().as_str().to_uppercase());
            a.env(env)
        })
    })
}

/// Parses weir's command line (`argv[0]` first), with the environment and, for `serve`
/// with `--config`, the config file.
pub fn parse_from<I, T>(argv: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let mut cmd = command();
    let mut matches = cmd.clone().try_get_matches_from(&argv)?;
    let config = matches
        .subcommand_matches("serve")
        .and_then(|m| m.get_one::<std::path::PathBuf>("config").cloned());
    let mut connections = Default::default();
    if let Some(path) = config {
        let file = read_file(&path).map_err(ParseError::File)?;
        connections = file.connections;
        let mut failed = None;
        cmd = cmd.mut_subcommand("serve", |serve| {
            let mut serve = serve;
            for (key, values) in &file.settings {
                match with_default(&serve, key, values) {
                    Ok(arg) => serve = serve.mut_arg(key.as_str(), |_| arg),
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
            serve
        });
        if let Some(e) = failed {
            return Err(ParseError::File(
                e.context(format!("config file {}", path.display())),
            ));
        }
        matches = cmd.try_get_matches_from(&argv)?;
    }
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let Command::Serve(serve) = &mut cli.command {
        serve.connections = connections;
    }
    Ok(cli)
}

/// What a config file holds: each setting's values as text, and its connections.
struct File {
    settings: Vec<(String, Vec<String>)>,
    connections: std::collections::BTreeMap<String, FileConnection>,
}

fn read_file(path: &Path) -> anyhow::Result<File> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("config file {}", path.display()))?;
    let mut file = File {
        settings: Vec::new(),
        connections: Default::default(),
    };
    for (key, value) in table {
        let at = || format!("config file {}: {key}", path.display());
        if key == "connections" {
            file.connections = value.try_into().with_context(at)?;
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items
                .into_iter()
                .map(|v| scalar(v).with_context(at))
                .collect::<anyhow::Result<_>>()?,
            v => vec![scalar(v).with_context(at)?],
        };
        file.settings.push((key, values));
    }
    Ok(file)
}

/// A TOML scalar as the text a flag takes.
fn scalar(v: toml::Value) -> anyhow::Result<String> {
    Ok(match v {
        toml::Value::String(s) => s,
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Datetime(d) => d.to_string(),
        toml::Value::Array(_) | toml::Value::Table(_) => {
            bail!("expected a value, not a list or table")
        }
    })
}

/// The flag `key` of `serve` with `values` as its default, once they are checked as the
/// flag would check them.
fn with_default(serve: &clap::Command, key: &str, values: &[String]) -> anyhow::Result<Arg> {
    let Some(arg) = serve
        .get_arguments()
        .find(|a| a.get_id() == key && a.get_long().is_some() && key != "config")
    else {
        bail!("unknown setting '{key}'");
    };
    if values.is_empty() {
        // An empty list: nothing beyond the built-in default, which is empty too.
        return Ok(arg.clone());
    }
    // The values alone, through the flag's own parser: an error names the key.
    let probe = clap::Command::new("weir")
        .no_binary_name(true)
        .arg(arg.clone().env(None::<&str>).default_value(None::<&str>));
    let long = arg.get_long().expect("found by it");
    probe
        .try_get_matches_from(values.iter().map(|v| format!("--{long}={v}")))
        .map_err(|e| {
            let shown = e.render().to_string();
            anyhow::anyhow!("{key}: {}", shown.trim().trim_start_matches("error: "))
        })?;
    Ok(arg.clone().default_values(values))
}
