//! What a rule may ask of weir: SQL text of at most [`MAX_SQL_BYTES`], expressions at most
//! [`MAX_DEPTH`] levels deep and, once `SET` variables are substituted, of at most
//! [`MAX_NODES`] nodes. Without these, one rule could exhaust a thread's stack (a sum of
//! 100,000 terms) or the memory (a variable doubled 30 times) while weir plans it.
//!
//! The text limit bounds every tree the parser can build, so that the passes before the
//! depth check stay within the stack the compilation runs on ([`COMPILE_STACK`]); the
//! depth limit bounds what DataFusion plans and evaluates, on any thread.

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{Expr, Spanned, Visit, Visitor};

use super::SqlError;

/// The longest SQL text of a rule or template expression.
pub const MAX_SQL_BYTES: usize = 64 * 1024;

/// The deepest an expression may nest.
pub const MAX_DEPTH: usize = 128;

/// The most nodes an expression may have once variables are substituted.
pub const MAX_NODES: u64 = 20_000;

/// The largest text value a function that a count argument sizes (`repeat`, `lpad`,
/// `rpad`) may build, in bytes (or characters, for the pads).
pub const MAX_TEXT_BYTES: usize = 1024 * 1024;

/// The longest list a function that a count argument sizes (`array_repeat`,
/// `array_resize`, `range`, `generate_series`) may build.
pub const MAX_LIST_LEN: usize = 100_000;

/// The stack a rule is compiled on: deep enough for any tree [`MAX_SQL_BYTES`] of text
/// can make, before the depth check refuses it.
pub const COMPILE_STACK: usize = 64 * 1024 * 1024;

/// Refuses SQL text longer than [`MAX_SQL_BYTES`].
pub(super) fn check_text(sql: &str) -> Result<(), SqlError> {
    if sql.len() > MAX_SQL_BYTES {
        return Err(SqlError::new(format!(
            "the SQL text has {} bytes; at most {MAX_SQL_BYTES} are allowed",
            sql.len()
        )));
    }
    Ok(())
}

/// An expression's depth and number of nodes.
#[derive(Debug, Default)]
pub(super) struct Size {
    pub depth: usize,
    pub nodes: u64,
    at: usize,
}

impl Visitor for Size {
    type Break = ();

    fn pre_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.at += 1;
        self.depth = self.depth.max(self.at);
        self.nodes += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_expr(&mut self, _: &Expr) -> ControlFlow<()> {
        self.at -= 1;
        ControlFlow::Continue(())
    }
}

/// The size of `expr`.
pub(super) fn size(expr: &Expr) -> Size {
    let mut s = Size::default();
    let _ = expr.visit(&mut s);
    s
}

/// Refuses an expression deeper than [`MAX_DEPTH`] or larger than [`MAX_NODES`].
pub(super) fn check(expr: &Expr) -> Result<u64, SqlError> {
    let s = size(expr);
    if s.depth > MAX_DEPTH {
        return Err(SqlError::at(
            format!(
                "the expression nests {} levels deep; at most {MAX_DEPTH} are allowed",
                s.depth
            ),
            expr.span(),
        ));
    }
    if s.nodes > MAX_NODES {
        return Err(SqlError::at(
            format!(
                "the expression has {} parts once its variables are substituted; at most {MAX_NODES} are allowed",
                s.nodes
            ),
            expr.span(),
        ));
    }
    Ok(s.nodes)
}

/// Refuses an expression that substituting `uses` (the size of each variable it uses,
/// once per use) would grow beyond [`MAX_NODES`], before it is substituted.
pub(super) fn check_expansion(
    expr: &Expr,
    uses: impl Iterator<Item = u64>,
) -> Result<(), SqlError> {
    let nodes = uses.fold(size(expr).nodes, |n, v| n.saturating_add(v));
    if nodes > MAX_NODES {
        return Err(SqlError::at(
            format!(
                "the expression has {nodes} parts once its variables are substituted; at most {MAX_NODES} are allowed"
            ),
            expr.span(),
        ));
    }
    Ok(())
}
