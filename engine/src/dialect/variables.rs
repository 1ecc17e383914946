//! The variables of a rule's `SET @name = <expr>, ...` clause, and their substitution:
//! each use of `@name` (or `@name.member`) becomes the variable's expression, after a
//! check of what the substitution would make (see [`super::limits`]).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, Expr, visit_expressions, visit_expressions_mut};

use super::ast::done;
use super::{SqlError, limits};

/// A variable of a rule's `SET @name = <expr>` clause. Its expression has the earlier
/// variables and nested SELECTs already rewritten; uses of `@name` are replaced by it.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub expr: Expr,
    /// The expression's size, in nodes: what each use of the variable adds.
    pub nodes: u64,
}

/// Replaces every `@name` (and `@name.member`) with the variable's expression.
pub(super) fn substitute_variables(
    expr: &mut Expr,
    variables: &[Variable],
) -> Result<(), SqlError> {
    // What substituting would make, before it is made.
    let mut uses = Vec::new();
    let _ = visit_expressions(expr, |e| {
        if let Some(name) = variable_named(e)
            && let Some(v) = variables.iter().find(|v| v.name == name)
        {
            uses.push(v.nodes);
        }
        ControlFlow::<()>::Continue(())
    });
    limits::check_expansion(expr, uses.into_iter())?;
    let outcome = visit_expressions_mut(expr, |e| {
        let (name, members, span) = match &*e {
            Expr::Identifier(i) if i.quote_style.is_none() && i.value.starts_with('@') => {
                (i.value.clone(), Vec::new(), i.span)
            }
            Expr::CompoundIdentifier(parts)
                if parts[0].quote_style.is_none() && parts[0].value.starts_with('@') =>
            {
                (parts[0].value.clone(), parts[1..].to_vec(), parts[0].span)
            }
            _ => return ControlFlow::Continue(()),
        };
        let Some(v) = variables.iter().find(|v| v.name == name) else {
            return ControlFlow::Break(SqlError::at(
                format!("unknown variable {name}: define it first with SET {name} = <expression>"),
                span,
            ));
        };
        let value = Expr::Nested(Box::new(v.expr.clone()));
        *e = if members.is_empty() {
            value
        } else {
            Expr::CompoundFieldAccess {
                root: Box::new(value),
                access_chain: members
                    .into_iter()
                    .map(|m| ast::AccessExpr::Dot(Expr::Identifier(m)))
                    .collect(),
            }
        };
        ControlFlow::Continue(())
    });
    done(outcome)
}

/// The variable an expression names (`@v` or `@v.member`), if it names one.
fn variable_named(e: &Expr) -> Option<&str> {
    match e {
        Expr::Identifier(i) if i.quote_style.is_none() && i.value.starts_with('@') => {
            Some(&i.value)
        }
        Expr::CompoundIdentifier(parts)
            if parts[0].quote_style.is_none() && parts[0].value.starts_with('@') =>
        {
            Some(&parts[0].value)
        }
        _ => None,
    }
}
