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
//!
//! Over an object field, the inner SELECT runs once, on the object: names refer to its
//! members, and the result is the object (or value) it selects, Undefined when its WHERE
//! is false. Which of the two a field is becomes known only with the batch's schema, so
//! the rewrite keeps both forms in a marker call, `__weir_select_from(e, array_form,
//! object_form)`, and [`resolve`] picks one when the rule is planned for a schema.

use std::ops::ControlFlow;

use datafusion::arrow::datatypes::{DataType, Schema};

use datafusion::sql::sqlparser::ast::{
    self, AccessExpr, Expr, Ident, LambdaFunction, LambdaFunctionParameter, LambdaSyntax,
    OneOrManyWithParens, SelectItem, SetExpr, Spanned, Subscript, TableFactor, Value,
    visit_expressions_mut,
};

use super::SqlError;
use super::ast::{call, default_name, function_args};

/// The marker call holding both forms of a nested SELECT (see the module docs).
pub(super) const SELECT_FROM: &str = "__weir_select_from";

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
    // Metered: what the body gives for every element is charged before the array function
    // repeats it (see `functions::bounded::MATERIALIZE`).
    let body = call(super::functions::bounded::MATERIALIZE, vec![body]);
    Expr::Lambda(LambdaFunction {
        params: OneOrManyWithParens::One(LambdaFunctionParameter {
            name: Ident::new(ELEMENT),
            data_type: None,
        }),
        body: Box::new(body),
        syntax: LambdaSyntax::Arrow,
    })
}

/// Rebinds the names (field paths) in an inner expression with `to`. `@name` is a SET
/// variable of the rule, not a name of the inner SELECT, and `"..."` is a string.
fn rebind(mut e: Expr, to: impl Fn(&[Ident]) -> Expr) -> Expr {
    let _ = visit_expressions_mut(&mut e, |x| {
        match x {
            Expr::Identifier(i) if i.quote_style != Some('"') && !i.value.starts_with('@') => {
                *x = to(std::slice::from_ref(i))
            }
            Expr::CompoundIdentifier(parts) if !parts[0].value.starts_with('@') => *x = to(parts),
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });
    e
}

/// Makes the names in an inner expression refer to the element's fields.
fn on_element(e: Expr) -> Expr {
    rebind(e, element_field)
}

/// Makes the names in an inner expression refer to the members of the object at `path`.
fn on_object(e: Expr, path: &[Ident]) -> Expr {
    rebind(e, |names| {
        let mut full = path.to_vec();
        full.extend_from_slice(names);
        Expr::CompoundIdentifier(full)
    })
}

/// Picks, in every nested SELECT of `expr`, the array or the object form, by the type of
/// the field it reads in `schema`. A field that is neither (or absent) makes it Undefined.
pub(crate) fn resolve(mut expr: Expr, schema: &Schema) -> Expr {
    let _ = visit_expressions_mut(&mut expr, |e| {
        let Expr::Function(f) = &*e else {
            return ControlFlow::<()>::Continue(());
        };
        if f.name.to_string() != SELECT_FROM {
            return ControlFlow::Continue(());
        }
        let Ok(args) = function_args(f) else {
            return ControlFlow::Continue(());
        };
        let path: Vec<&str> = match &args[0] {
            Expr::Identifier(i) => vec![i.value.as_str()],
            Expr::CompoundIdentifier(parts) => parts.iter().map(|p| p.value.as_str()).collect(),
            _ => Vec::new(),
        };
        *e = match field_type(schema, &path) {
            Some(DataType::List(_) | DataType::LargeList(_)) => args[1].clone(),
            Some(DataType::Struct(_)) => args[2].clone(),
            _ => Expr::value(Value::Null),
        };
        ControlFlow::Continue(())
    });
    expr
}

fn field_type<'a>(schema: &'a Schema, path: &[&str]) -> Option<&'a DataType> {
    let (first, rest) = path.split_first()?;
    let mut t = schema.field_with_name(first).ok()?.data_type();
    for name in rest {
        let DataType::Struct(fields) = t else {
            return None;
        };
        t = fields.iter().find(|f| f.name() == name)?.data_type();
    }
    Some(t)
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
    if path.is_empty() {
        return refuse("this FROM", select.from[0].relation.span());
    }
    let array_form = array_form(select, array.clone())?;
    let object_form = object_form(select, &path, array.clone())?;
    Ok(call(SELECT_FROM, vec![array, array_form, object_form]))
}

/// The SELECT's items as `(name, expression)` pairs, or `None` for `SELECT *`; `VALUE x`
/// (which sqlparser reads as the column `value` named `x`) is one pair named `None`.
#[allow(clippy::type_complexity)]
fn items(select: &ast::Select) -> Result<Option<Vec<(Option<String>, Expr)>>, SqlError> {
    match select.projection.as_slice() {
        [SelectItem::Wildcard(_)] => Ok(None),
        [
            SelectItem::ExprWithAlias {
                expr: Expr::Identifier(v),
                alias,
            },
        ] if v.quote_style.is_none() && v.value.eq_ignore_ascii_case("value") => {
            Ok(Some(vec![(None, Expr::Identifier(alias.clone()))]))
        }
        items => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                SelectItem::UnnamedExpr(e) => Ok((Some(default_name(e, i + 1)), e.clone())),
                SelectItem::ExprWithAlias { expr, alias } => {
                    Ok((Some(alias.value.clone()), expr.clone()))
                }
                other => Err(SqlError::at(
                    "in a nested SELECT, this SELECT item is not supported",
                    other.span(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
    }
}

/// The items as one expression over `scope` (the element, or the object's members).
fn projection(items: Vec<(Option<String>, Expr)>, scope: impl Fn(Expr) -> Expr) -> Expr {
    if let [(None, value)] = items.as_slice() {
        return scope(value.clone());
    }
    let mut args = Vec::with_capacity(items.len() * 2);
    for (name, e) in items {
        args.push(Expr::value(Value::SingleQuotedString(
            name.unwrap_or_default(),
        )));
        args.push(scope(e));
    }
    call("named_struct", args)
}

fn array_form(select: &ast::Select, array: Expr) -> Result<Expr, SqlError> {
    let filtered = match &select.selection {
        None => array,
        Some(cond) => call(
            "array_filter",
            vec![array, lambda(on_element(cond.clone()))],
        ),
    };
    Ok(match items(select)? {
        None => filtered,
        Some(items) => call(
            "array_transform",
            vec![filtered, lambda(projection(items, on_element))],
        ),
    })
}

fn object_form(select: &ast::Select, path: &[Ident], object: Expr) -> Result<Expr, SqlError> {
    let selected = match items(select)? {
        None => object,
        Some(items) => projection(items, |e| on_object(e, path)),
    };
    Ok(match &select.selection {
        None => selected,
        Some(cond) => Expr::Case {
            case_token: ast::helpers::attached_token::AttachedToken::empty(),
            end_token: ast::helpers::attached_token::AttachedToken::empty(),
            operand: None,
            conditions: vec![ast::CaseWhen {
                condition: on_object(cond.clone(), path),
                result: selected,
            }],
            else_result: None,
        },
    })
}
