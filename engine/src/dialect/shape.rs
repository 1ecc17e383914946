//! The shape of a rule: exactly one SELECT over the message. Other statements, joins,
//! GROUP BY, ORDER BY, subqueries and the like are refused with their position.

use datafusion::sql::sqlparser::ast::{
    self, GroupByExpr, ObjectName, SetExpr, Spanned, TableFactor,
};
use datafusion::sql::sqlparser::tokenizer::Span;

use super::SqlError;
use crate::meta;

/// Refuses a query that is not one plain SELECT over the message.
pub(super) fn check_query_shape(q: &ast::Query) -> Result<(), SqlError> {
    let refuse = |what: &str| {
        Err(SqlError::at(
            format!("{what} is not supported: a rule is one SELECT over one message"),
            q.span(),
        ))
    };
    if q.with.is_some() {
        return refuse("WITH");
    }
    if q.order_by.is_some() {
        return refuse("ORDER BY");
    }
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return refuse("LIMIT");
    }
    if !q.locks.is_empty() || q.for_clause.is_some() || q.settings.is_some() {
        return refuse("this clause");
    }
    if q.format_clause.is_some() || !q.pipe_operators.is_empty() {
        return refuse("this clause");
    }
    let SetExpr::Select(s) = q.body.as_ref() else {
        return Err(SqlError::at(
            "only a plain SELECT is supported: a rule is one SELECT over one message",
            q.body.span(),
        ));
    };
    let refuse_at = |what: &str, span: Span| {
        Err(SqlError::at(
            format!("{what} is not supported: a rule is one SELECT over one message"),
            span,
        ))
    };
    if s.distinct.is_some() {
        return refuse_at("DISTINCT", s.span());
    }
    if s.top.is_some() || s.into.is_some() {
        return refuse_at("TOP / INTO", s.span());
    }
    match &s.group_by {
        GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty() => {}
        _ => return refuse_at("GROUP BY", s.span()),
    }
    if s.having.is_some() || s.qualify.is_some() || !s.named_window.is_empty() {
        return refuse_at("HAVING / QUALIFY / WINDOW", s.span());
    }
    if !s.lateral_views.is_empty()
        || s.prewhere.is_some()
        || !s.connect_by.is_empty()
        || !s.cluster_by.is_empty()
        || !s.distribute_by.is_empty()
        || !s.sort_by.is_empty()
        || s.exclude.is_some()
    {
        return refuse_at("this clause", s.span());
    }
    if s.from.len() != 1 {
        return refuse_at("reading from more than one source", s.span());
    }
    let from = &s.from[0];
    if !from.joins.is_empty() {
        return refuse_at("JOIN", from.joins[0].span());
    }
    match &from.relation {
        TableFactor::Table {
            name,
            alias: None,
            args: None,
            with_hints,
            ..
        } if with_hints.is_empty() && is_message_table(name) => Ok(()),
        other => Err(SqlError::at(
            "a rule reads only the message: FROM takes one topic filter in single quotes, without alias",
            other.span(),
        )),
    }
}

fn is_message_table(name: &ObjectName) -> bool {
    name.0.len() == 1 && name.0[0].as_ident().is_some_and(|i| i.value == meta::TABLE)
}
