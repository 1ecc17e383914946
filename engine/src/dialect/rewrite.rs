//! The rewrite of a rule's expressions into ones DataFusion plans.
//!
//! In order: the AWS forms SQL lacks are desugared (a nested SELECT, `IS UNDEFINED`),
//! `SET` variables are substituted where they are used, what a rule cannot do is refused
//! with its position (subqueries, `*` inside an expression), AWS syntax is made SQL
//! (`"..."` strings, AWS type names in `CAST`, 0-based indexes, AWS's `substring`), every
//! function call is resolved by [`super::functions`], and the payload fields and metadata
//! columns the expression reads are collected.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, Spanned, visit_expressions, visit_expressions_mut,
};

use super::ast::{call, done};
use super::variables::{Variable, substitute_variables};
use super::{SqlError, functions, limits, nested};
use crate::fields::FieldTree;
use crate::meta::{self, MetaNeeds};
use datafusion::execution::SessionState;

/// A member access chain as DataFusion takes it: AWS indexes arrays from 0 (`a[0]`),
/// DataFusion from 1; `a[1].b` takes the field as `['b']`.
fn to_datafusion_access(access_chain: &mut [ast::AccessExpr]) {
    for access in access_chain.iter_mut() {
        if let ast::AccessExpr::Dot(Expr::Identifier(field)) = access {
            *access = ast::AccessExpr::Subscript(ast::Subscript::Index {
                index: Expr::value(ast::Value::SingleQuotedString(field.value.clone())),
            });
            continue;
        }
        if let ast::AccessExpr::Subscript(ast::Subscript::Index { index }) = access {
            let is_key = matches!(index, Expr::Value(v)
                if matches!(v.value, ast::Value::SingleQuotedString(_)));
            if !is_key {
                *index = Expr::BinaryOp {
                    left: Box::new(Expr::Nested(Box::new(index.clone()))),
                    op: ast::BinaryOperator::Plus,
                    right: Box::new(Expr::value(ast::Value::Number("1".into(), false))),
                };
            }
        }
    }
}

/// Whether `e` is a function call (in parentheses or not).
fn is_call(e: &Expr) -> bool {
    match e {
        Expr::Function(_) => true,
        Expr::Nested(inner) => is_call(inner),
        _ => false,
    }
}

/// The AWS forms that SQL lacks, in SQL: a nested SELECT becomes array or object
/// expressions ([`nested`]), `IS [NOT] UNKNOWN` (read from `IS [NOT] UNDEFINED`)
/// becomes `isUndefined()`.
pub(super) fn desugar(expr: &mut Expr) -> Result<(), SqlError> {
    let outcome = visit_expressions_mut(expr, |e| {
        match e {
            Expr::Subquery(q) => match nested::rewrite(q) {
                Ok(r) => *e = Expr::Nested(Box::new(r)),
                Err(err) => return ControlFlow::Break(err),
            },
            Expr::IsUnknown(x) => *e = call("isUndefined", vec![(**x).clone()]),
            Expr::IsNotUnknown(x) => {
                *e = Expr::UnaryOp {
                    op: ast::UnaryOperator::Not,
                    expr: Box::new(call("isUndefined", vec![(**x).clone()])),
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    });
    done(outcome)
}

/// Rewrites an expression of a rule into one DataFusion plans: AWS syntax SQL lacks,
/// `SET` variables, functions; refuses what a rule cannot do, and collects the payload
/// fields and metadata columns it reads.
pub(super) fn rewrite(
    state: &SessionState,
    expr: &mut Expr,
    variables: &[Variable],
    fields: &mut FieldTree,
    needs: &mut MetaNeeds,
) -> Result<(), SqlError> {
    limits::check(expr)?;
    functions::nulls::null_equality(expr, needs);
    desugar(expr)?;
    substitute_variables(expr, variables)?;
    limits::check(expr)?;

    // Refuse what a rule cannot do, with its position.
    let refused = visit_expressions(expr, |e| {
        let what = match e {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => "a subquery",
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => "`*` inside an expression",
            // Not AWS IoT SQL (`+` and concat() are), and no memory check reaches it.
            Expr::BinaryOp {
                op: ast::BinaryOperator::StringConcat,
                ..
            } => "the `||` operator (use `+` or concat())",
            _ => return ControlFlow::Continue(()),
        };
        ControlFlow::Break(SqlError::at(
            format!("{what} is not supported in a rule"),
            e.span(),
        ))
    });
    done(refused)?;

    // AWS IoT SQL: "..." is a string (identifiers are quoted with backticks); CAST takes
    // the AWS type names.
    let _ = visit_expressions_mut(expr, |e| {
        match e {
            Expr::Identifier(i) if i.quote_style == Some('"') => {
                *e = Expr::value(ast::Value::SingleQuotedString(std::mem::take(&mut i.value)));
            }
            Expr::Cast { data_type, .. } => {
                if let Some(t) = functions::cast_type(data_type) {
                    *data_type = t;
                }
            }
            // A member of what a function returned (`decode(x, 'base64').temperature`): of
            // an object, or of the JSON document a String holds; `.a.b` one after the other.
            Expr::CompoundFieldAccess { root, access_chain }
                if is_call(root)
                    && matches!(
                        access_chain.first(),
                        Some(ast::AccessExpr::Dot(Expr::Identifier(_)))
                    ) =>
            {
                let mut value = (**root).clone();
                while let Some(ast::AccessExpr::Dot(Expr::Identifier(m))) = access_chain.first() {
                    let key = Expr::value(ast::Value::SingleQuotedString(m.value.clone()));
                    value = call(functions::collections::MEMBER, vec![value, key]);
                    access_chain.remove(0);
                }
                let mut rest = std::mem::take(access_chain);
                *e = if rest.is_empty() {
                    value
                } else {
                    to_datafusion_access(&mut rest);
                    Expr::CompoundFieldAccess {
                        root: Box::new(value),
                        access_chain: rest,
                    }
                };
            }
            Expr::CompoundFieldAccess { access_chain, .. } => to_datafusion_access(access_chain),
            // `substring(s, start, end)` is AWS's function (0-based, end exclusive), which
            // sqlparser parses as SQL's SUBSTRING; only `SUBSTRING(s FROM a FOR n)` is SQL's.
            Expr::Substring {
                expr: inner,
                substring_from: Some(from),
                substring_for,
                special: true,
                ..
            } => {
                let mut args = vec![(**inner).clone(), (**from).clone()];
                args.extend(substring_for.as_deref().cloned());
                *e = call("substring", args);
            }
            // DataFusion's planner refuses NOT over a string before the AWS coercions in
            // `types` can run: AWS's NOT is a function of weir's.
            Expr::UnaryOp {
                op: ast::UnaryOperator::Not,
                expr: inner,
            } => {
                *e = call(functions::conversions::NOT, vec![(**inner).clone()]);
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });

    // Every function call becomes what the function is in weir (see `functions`).
    let outcome = visit_expressions_mut(expr, |e| {
        let span = e.span();
        let Expr::Function(f) = &*e else {
            return ControlFlow::Continue(());
        };
        match functions::resolve(state, f, needs) {
            Ok(Some(replacement)) => *e = replacement,
            Ok(None) => {}
            Err(refused) => return ControlFlow::Break(SqlError::at(refused.to_string(), span)),
        }
        ControlFlow::Continue(())
    });
    done(outcome)?;

    // Collect the payload paths the expression reads.
    let _ = visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(i) if i.value == meta::PAYLOAD => needs.payload = true,
            Expr::Identifier(i) if !meta::is_meta(&i.value) => {
                fields.add(std::slice::from_ref(&i.value))
            }
            Expr::CompoundIdentifier(parts) => {
                let path: Vec<String> = parts.iter().map(|p| p.value.clone()).collect();
                fields.add(&path);
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    read_null_flagged(fields, needs);
    Ok(())
}

/// `isNull(a.b)` and `a.b = NULL` read `a.b`, though their rewrites name only its
/// null-flag column.
pub(super) fn read_null_flagged(fields: &mut FieldTree, needs: &MetaNeeds) {
    for path in &needs.json_null {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        fields.add(&parts);
    }
}
