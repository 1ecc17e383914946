//! `weir rules ...`: the command-line client of a running weir, for scripts and CI
//! pipelines. It talks to the HTTP API with a token, like any other client, and keeps no
//! state of its own: a directory of rule files is the desired state, weir the actual one.
//!
//! Rule files are those of the queries directory (`NAME.sql`, the rest of the rule in `--`
//! comment lines) or API bodies (`NAME.json`, as `PUT /v1/rules/NAME` takes them); `export`
//! writes the second kind, so `export` then `apply` changes nothing.

//!
//! * `args.rs`: the command line; `client.rs`: the API with the token.
//! * `apply.rs`: a directory applied with a plan; `commands.rs`: list, test, delete, export.

mod apply;
mod args;
mod client;
mod commands;

use std::process::ExitCode;

use apply::apply;
pub use args::{RulesArgs, RulesCommand};
use client::Client;
use commands::{delete, export, list, test};

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
