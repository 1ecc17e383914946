//! Small helpers over sqlparser's syntax tree, shared by the dialect's passes.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, ObjectName,
};

use super::{CallError, SqlError};
use crate::meta;

/// A visit that stopped at an error, as a `Result`.
pub(super) fn done(outcome: ControlFlow<SqlError>) -> Result<(), SqlError> {
    match outcome {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// The output name of an unaliased SELECT item: the field's own name for a field path,
/// the function's name for a call, `_<position>` otherwise.
pub(super) fn default_name(expr: &Expr, position: usize) -> String {
    match expr {
        Expr::Identifier(i) => i.value.strip_prefix('@').unwrap_or(&i.value).to_owned(),
        Expr::CompoundIdentifier(parts) => {
            parts.last().map(|i| i.value.clone()).unwrap_or_default()
        }
        Expr::Function(f) => f.name.to_string(),
        _ => format!("_{position}"),
    }
}

/// The payload field an expression is, as `a.b.c`, if it is just a field.
pub(super) fn field_path(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) if !meta::is_meta(&i.value) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => Some(
            parts
                .iter()
                .map(|p| p.value.as_str())
                .collect::<Vec<_>>()
                .join("."),
        ),
        _ => None,
    }
}

/// The text of a string literal.
pub(super) fn string_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// The arguments of a call; `*` stands for the payload as received.
pub(super) fn function_args(f: &ast::Function) -> Result<Vec<Expr>, CallError> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::Subquery(_) => Err(CallError::Subquery),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                // `encode(*, 'base64')`: the payload as received.
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => {
                    Ok(Expr::Identifier(Ident::new(meta::PAYLOAD)))
                }
                _ => Err(CallError::Argument(f.name.to_string())),
            })
            .collect(),
    }
}

/// A call of the function `name`.
pub(crate) fn call(name: &str, args: Vec<Expr>) -> Expr {
    Expr::Function(ast::Function {
        name: ObjectName::from(vec![Ident::new(name)]),
        uses_odbc_syntax: false,
        parameters: FunctionArguments::None,
        args: FunctionArguments::List(ast::FunctionArgumentList {
            duplicate_treatment: None,
            args: args
                .into_iter()
                .map(|e| FunctionArg::Unnamed(FunctionArgExpr::Expr(e)))
                .collect(),
            clauses: Vec::new(),
        }),
        filter: None,
        null_treatment: None,
        over: None,
        within_group: Vec::new(),
    })
}
