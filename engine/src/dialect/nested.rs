//! Nested SELECT over an array field: `(SELECT v FROM e WHERE n = 'temperature')`.
//!
//! AWS IoT SQL runs the inner SELECT once per element of the array `e`, names in it
//! referring to the element's fields, and returns the array of results. The dialect
//! rewrites it into DataFusion's higher-order array functions:
//!
//! ```text
//! array_transform(array_filter(e, el -> el['n'] = 'temperature'), el -> named_struct('v', el['v']))
//! ```
//!
//! so the whole thing stays one vectorised expression. `SELECT VALUE x` yields the values
//! themselves and `SELECT *` the elements.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, AccessExpr, Expr, Ident, LambdaFunction, LambdaFunctionParameter, LambdaSyntax,
    OneOrManyWithParens, SelectItem, SetExpr, Spanned, Subscript, TableFactor, Value,
    visit_expressions_mut,
};

use super::{SqlError, call};

/// The lambda parameter standing for the array element.
pub(super) const ELEMENT: &str = "__weir_el"; // a meta name: never read as a payload field

fn element_field(path: &[Ident]) -> Expr {
    Expr::CompoundFieldAccess {
        root: Box::new(Expr::Identifier(Ident::new(ELEMENT))),
        access_chain: path
            .iter()
            .map(|p| {
                AccessExpr::Subscript(Subscript::Index {
                    index: Expr::value(Value::SingleQuotedString(p.value.clone())),
                })
            })
            .collect(),
    }
}

fn lambda(body: Expr) -> Expr {
    Expr::Lambda(LambdaFunction {
        params: OneOrManyWithParens::One(LambdaFunctionParameter {
            name: Ident::new(ELEMENT),
            data_type: None,
        }),
        body: Box::new(body),
        syntax: LambdaSyntax::Arrow,
    })
}

/// Makes the names in an inner expression refer to the element's fields.
fn on_element(mut e: Expr) -> Expr {
    let _ = visit_expressions_mut(&mut e, |x| {
        match x {
            Expr::Identifier(i) if i.quote_style != Some('"') => {
                *x = element_field(std::slice::from_ref(i))
            }
            Expr::CompoundIdentifier(parts) => *x = element_field(parts),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    e
}

/// The rewrite of a nested SELECT, or an error saying what of it is not supported.
pub(super) fn rewrite(query: &ast::Query) -> Result<Expr, SqlError> {
    let refuse = |what: &str, span| {
        Err(SqlError::at(
            format!("in a nested SELECT, {what} is not supported"),
            span,
        ))
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return refuse("this form", query.span());
    };
    if select.from.len() != 1 || !select.from[0].joins.is_empty() {
        return refuse("reading from more than one array", select.span());
    }
    let TableFactor::Table {
        name,
        alias: None,
        args: None,
        ..
    } = &select.from[0].relation
    else {
        return refuse("this FROM", select.from[0].relation.span());
    };
    let path: Vec<Ident> = name
        .0
        .iter()
        .filter_map(|p| p.as_ident().cloned())
        .collect();
    let array = match path.as_slice() {
        [one] => Expr::Identifier(one.clone()),
        _ => Expr::CompoundIdentifier(path.clone()),
    };
    let filtered = match &select.selection {
        None => array,
        Some(cond) => call(
            "array_filter",
            vec![array, lambda(on_element(cond.clone()))],
        ),
    };
    // The items: `*`, `VALUE x` (which sqlparser reads as the column `value` named `x`),
    // or columns that make an object.
    let projection = match select.projection.as_slice() {
        [SelectItem::Wildcard(_)] => return Ok(filtered),
        [
            SelectItem::ExprWithAlias {
                expr: Expr::Identifier(v),
                alias,
            },
        ] if v.quote_style.is_none() && v.value.eq_ignore_ascii_case("value") => {
            on_element(Expr::Identifier(alias.clone()))
        }
        items => {
            let mut args = Vec::with_capacity(items.len() * 2);
            for (i, item) in items.iter().enumerate() {
                let (name, e) = match item {
                    SelectItem::UnnamedExpr(e) => (super::default_name(e, i + 1), e),
                    SelectItem::ExprWithAlias { expr, alias } => (alias.value.clone(), expr),
                    other => return refuse("this SELECT item", other.span()),
                };
                args.push(Expr::value(Value::SingleQuotedString(name)));
                args.push(on_element(e.clone()));
            }
            call("named_struct", args)
        }
    };
    Ok(call("array_transform", vec![filtered, lambda(projection)]))
}
