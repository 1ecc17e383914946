//! The AWS IoT SQL dialect: from rule text to expressions DataFusion can plan.
//!
//! A rule is `[SET @v = <expr>, ...] SELECT <items> FROM '<topic filter>' [WHERE
//! <condition>]`. The dialect does only what DataFusion cannot do by itself, in passes of
//! one file each:
//!
//! 1. [`tokens`]: the token stream is edited for what SQL cannot parse: the quoted topic
//!    filter in `FROM` becomes the identifier of the message "table", the `SET` clause is
//!    taken out, `SELECT VALUE` and `IS [NOT] UNDEFINED` are recognised. Every token keeps
//!    its position, so errors still point into the text the user wrote ([`error`]).
//! 2. [`shape`]: a rule is exactly one SELECT over the message. Other statements, joins,
//!    GROUP BY, ORDER BY, subqueries and the like are refused with their position.
//! 3. [`version`]: what the rule's SQL version does not have is refused, `sql_version()`
//!    becomes the version's name; `=` and `<>` with an operand that may be JSON `null` get
//!    AWS's null rules ([`functions::nulls`]).
//! 4. [`rewrite`]: each expression is made one DataFusion plans: nested SELECTs
//!    ([`nested`]) and `SET` variables ([`variables`]) are expanded, AWS syntax becomes
//!    SQL, and every function call is resolved by [`functions`], where every SQL function
//!    a rule can call lives. The payload fields the rule reads are collected into a
//!    [`FieldTree`] (so that the decoder materialises only those) and the metadata
//!    columns into [`MetaNeeds`].
//! 5. [`types`]: once a batch's schema is known, AWS's rules for operators on mixed types
//!    are applied to the planned expressions.
//!
//! Every pass stays within [`limits`] (the text's length, an expression's depth and, once
//! variables are substituted, its size); [`ast`] holds the helpers over sqlparser's tree
//! that the passes share.
//!
//! Dotted paths (`geoCoordinates.latitude`) need no rewrite: with identifier
//! normalisation off, DataFusion resolves them as field access into struct columns.

mod ast;
mod error;
pub mod functions;
pub mod limits;
pub(crate) mod nested;
mod rewrite;
mod shape;
mod tokens;
pub mod types;
mod variables;
mod version;

use datafusion::sql::sqlparser::ast::{Expr, SelectItem, SetExpr, Spanned, Statement};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

pub use error::{CallError, SqlError};
pub use variables::Variable;
pub use version::SqlVersion;

use crate::fields::FieldTree;
use crate::meta::MetaNeeds;
use ast::{default_name, field_path};
use datafusion::execution::SessionState;
use rewrite::{desugar, read_null_flagged, rewrite};
use tokens::{take_select_value, take_set_clause, take_topic_filter, undefined_as_unknown};
use variables::substitute_variables;

/// One output column of a rule.
#[derive(Debug, Clone)]
pub struct SelectColumn {
    pub name: String,
    pub expr: Expr,
}

/// A parsed, validated and rewritten rule.
#[derive(Debug, Clone)]
pub struct ParsedRule {
    /// The topic filter of the FROM clause.
    pub topic_filter: String,
    /// `SELECT *` (possibly with more columns): the whole payload is part of the output.
    pub star: bool,
    /// `SELECT VALUE <expr>`: the output is the expression's value itself, not an object.
    pub value: bool,
    pub columns: Vec<SelectColumn>,
    pub condition: Option<Expr>,
    pub fields: FieldTree,
    pub meta: MetaNeeds,
    /// Output columns that pass a payload field through (`SELECT a.b AS x`): their
    /// position and the field's path. A JSON `null` there is output as `null`, as AWS does.
    pub passthrough: Vec<(usize, String)>,
    /// Output columns that are the literal `NULL`: output as `null`, as AWS does
    /// (`SELECT NULL AS n` gives `{"n": null}`).
    pub null_literals: Vec<usize>,
    /// The variables of the rule's SET clause, in order; templates may use them too.
    pub variables: Vec<Variable>,
    /// The AWS IoT SQL version the rule is written for.
    pub version: SqlVersion,
}

/// An expression from outside a rule's SELECT (a `${...}` template), rewritten like one.
#[derive(Debug, Clone)]
pub struct ParsedExpr {
    pub expr: Expr,
    pub fields: FieldTree,
    pub meta: MetaNeeds,
}

/// Parses, validates and rewrites a rule.
pub fn parse_rule(
    state: &SessionState,
    sql: &str,
    version: SqlVersion,
) -> Result<ParsedRule, SqlError> {
    limits::check_text(sql)?;
    let dialect = GenericDialect {};
    let mut tokens = Tokenizer::new(&dialect, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError {
            message: e.message,
            line: Some(e.location.line),
            column: Some(e.location.column),
        })?;
    undefined_as_unknown(&mut tokens);
    let assignments = take_set_clause(&mut tokens)?;
    // What the rule reads besides payload fields, SET variables included.
    let mut needs = MetaNeeds::default();
    let topic_filter = take_topic_filter(&mut tokens)?;
    let value = take_select_value(&mut tokens);
    let mut variables: Vec<Variable> = Vec::with_capacity(assignments.len());
    for (name, mut expr) in assignments {
        if variables.iter().any(|v| v.name == name.value) {
            return Err(SqlError::at(
                format!(
                    "{} is assigned twice: a SET variable is assigned once",
                    name.value
                ),
                name.span,
            ));
        }
        limits::check(&expr)?;
        version::apply(&mut expr, version)?;
        functions::nulls::null_equality(&mut expr, &mut needs);
        desugar(&mut expr)?;
        substitute_variables(&mut expr, &variables)?;
        let nodes = limits::check(&expr)?;
        variables.push(Variable {
            name: name.value,
            expr,
            nodes,
        });
    }

    let mut statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| SqlError::from(e).at_end_if_unplaced(sql))?;
    if statements.len() != 1 {
        return Err(SqlError::new(format!(
            "a rule is exactly one SELECT statement; found {}",
            statements.len()
        )));
    }
    let statement = statements.pop().expect("one statement");
    let Statement::Query(query) = statement else {
        return Err(SqlError::at(
            "a rule is exactly one SELECT statement; other statements are not allowed",
            statement.span(),
        ));
    };
    let query = *query;
    shape::check_query_shape(&query)?;
    let SetExpr::Select(select) = *query.body else {
        unreachable!("check_query_shape accepts only a plain SELECT")
    };
    let select = *select;

    let mut star = false;
    let mut columns = Vec::new();
    for (i, item) in select.projection.into_iter().enumerate() {
        match item {
            SelectItem::Wildcard(_) => star = true,
            SelectItem::UnnamedExpr(expr) => columns.push(SelectColumn {
                name: default_name(&expr, i + 1),
                expr,
            }),
            SelectItem::ExprWithAlias { expr, alias } => columns.push(SelectColumn {
                name: alias.value,
                expr,
            }),
            other => {
                return Err(SqlError::at(
                    "this form of SELECT item is not supported; use `*`, `<expr>` or `<expr> AS <name>`",
                    other.span(),
                ));
            }
        }
    }

    if value && (star || columns.len() != 1) {
        return Err(SqlError::at(
            "SELECT VALUE takes exactly one expression",
            select.select_token.0.span,
        ));
    }
    if value {
        // The encoder unwraps `{"v":...}`.
        columns[0].name = "v".to_owned();
    }
    let mut rule = ParsedRule {
        topic_filter,
        star,
        value,
        columns,
        condition: select.selection,
        fields: FieldTree::default(),
        meta: MetaNeeds::default(),
        passthrough: Vec::new(),
        null_literals: Vec::new(),
        variables,
        version,
    };
    let mut fields = FieldTree::default();
    for (i, col) in rule.columns.iter_mut().enumerate() {
        // As written: rewrites also make NULLs, for what AWS calls Undefined.
        if is_null_literal(&col.expr) && !rule.value {
            rule.null_literals.push(i);
        }
        limits::check(&col.expr)?;
        version::apply(&mut col.expr, version)?;
        rewrite(
            state,
            &mut col.expr,
            &rule.variables,
            &mut fields,
            &mut needs,
        )?;
        if let Some(path) = field_path(&col.expr)
            && !rule.value
        {
            needs.json_null.insert(path.clone());
            rule.passthrough.push((i, path));
        }
    }
    if let Some(cond) = &mut rule.condition {
        limits::check(cond)?;
        version::apply(cond, version)?;
        rewrite(state, cond, &rule.variables, &mut fields, &mut needs)?;
    }
    // A SET variable's comparisons with null, though no expression may use it.
    read_null_flagged(&mut fields, &needs);
    rule.fields = fields;
    rule.meta = needs;
    Ok(rule)
}

/// Whether `e` is the literal `NULL` (in parentheses or not).
fn is_null_literal(e: &Expr) -> bool {
    match e {
        Expr::Value(v) => v.value == datafusion::sql::sqlparser::ast::Value::Null,
        Expr::Nested(inner) => is_null_literal(inner),
        _ => false,
    }
}

/// The topic filter of a rule's FROM clause, without checking the rest of the rule.
pub fn topic_filter_of(sql: &str) -> Result<String, SqlError> {
    let mut tokens = Tokenizer::new(&GenericDialect {}, sql)
        .tokenize_with_location()
        .map_err(|e| SqlError::new(e.message))?;
    take_topic_filter(&mut tokens)
}

/// Parses and rewrites a standalone expression, such as the inside of `${...}`, which may
/// use the rule's SET variables.
pub fn parse_expr(
    state: &SessionState,
    text: &str,
    variables: &[Variable],
    version: SqlVersion,
) -> Result<ParsedExpr, SqlError> {
    limits::check_text(text)?;
    let dialect = GenericDialect {};
    let mut tokens = Tokenizer::new(&dialect, text)
        .tokenize_with_location()
        .map_err(|e| SqlError::new(e.message))?;
    undefined_as_unknown(&mut tokens);
    let mut parser = Parser::new(&dialect).with_tokens_with_locations(tokens);
    let mut expr = parser.parse_expr()?;
    if parser.peek_token().token != Token::EOF {
        return Err(SqlError::at(
            format!(
                "unexpected '{}' after the expression",
                parser.peek_token().token
            ),
            parser.peek_token().span,
        ));
    }
    let mut fields = FieldTree::default();
    let mut needs = MetaNeeds::default();
    limits::check(&expr)?;
    version::apply(&mut expr, version)?;
    rewrite(state, &mut expr, variables, &mut fields, &mut needs)?;
    Ok(ParsedExpr {
        expr,
        fields,
        meta: needs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta;

    fn parse(sql: &str) -> Result<ParsedRule, SqlError> {
        parse_rule(crate::Engine::new().state(), sql, SqlVersion::default())
    }

    /// The walkthrough rule, as shipped.
    const SEED: &str = include_str!("../../../queries/high_temperature.sql");

    #[test]
    fn seed_rule_parses_and_rewrites() {
        let r = parse(SEED).unwrap();
        assert_eq!(r.topic_filter, "enterprise/facilities/+/metrics");
        assert!(!r.star);
        let names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "deviceIdentifier",
                "celsiusReading",
                "fahrenheitReading",
                "lat",
                "lon"
            ]
        );
        assert_eq!(r.columns[0].expr.to_string(), meta::CLIENT_ID);
        assert!(r.meta.client_id && !r.meta.topic && !r.meta.timestamp);
        let top: Vec<&String> = r.fields.children.keys().collect();
        assert_eq!(top, ["currentAmbientTemperature", "geoCoordinates"]);
        let geo = &r.fields.children["geoCoordinates"];
        assert!(!geo.whole);
        assert_eq!(
            geo.children.keys().collect::<Vec<_>>(),
            ["latitude", "longitude"]
        );
    }

    #[test]
    fn context_functions_are_rewritten() {
        let r = parse(
            "SELECT topic() AS t, topic(2) AS d, clientid() AS c, timestamp() AS ts FROM 'a/+'",
        )
        .unwrap();
        let exprs: Vec<String> = r.columns.iter().map(|c| c.expr.to_string()).collect();
        assert_eq!(exprs[0], meta::TOPIC);
        assert_eq!(
            exprs[1],
            format!("{}({}, 2)", functions::context::TOPIC_LEVEL, meta::TOPIC)
        );
        assert_eq!(exprs[2], meta::CLIENT_ID);
        assert_eq!(exprs[3], meta::TIMESTAMP);
        assert!(r.fields.is_empty());
    }

    #[test]
    fn star_and_default_names() {
        let r = parse("SELECT *, 15 AS speed, color.red, upper(x), 1 + 2 FROM 'a/b'").unwrap();
        assert!(r.star);
        let names: Vec<&str> = r.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["speed", "red", "upper", "_5"]);
    }

    #[test]
    fn errors_carry_positions() {
        let e = parse("SELECT a FROM 'x' WHERE").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
        let e = parse("SELECT nosuchfn(a) FROM 'x'").unwrap_err();
        assert!(e.message.contains("unknown function 'nosuchfn'"), "{e}");
        assert_eq!((e.line, e.column), (Some(1), Some(8)));
        let e = parse("SELECT a\nFROM topic").unwrap_err();
        assert!(e.message.contains("single quotes"), "{e}");
        assert_eq!((e.line, e.column), (Some(2), Some(6)));
        let e = parse("SELECT a\nFROM  'a/#/b'").unwrap_err();
        assert!(e.message.contains("'#' must be the last level"), "{e}");
        assert_eq!((e.line, e.column), (Some(2), Some(7)));
        let e = parse("SELECT a").unwrap_err();
        assert!(e.message.contains("needs FROM"), "{e}");
        let e = parse("SELECT sum(a) FROM 'x'").unwrap_err();
        assert!(e.message.contains("aggregate"), "{e}");
        let e = parse("DELETE FROM 'x'").unwrap_err();
        assert!(e.message.contains("exactly one SELECT"), "{e}");
        let e = parse("SELECT a FROM 'x' GROUP BY a").unwrap_err();
        assert!(e.message.contains("GROUP BY"), "{e}");
        let e = parse("SELECT (SELECT 1) FROM 'x'").unwrap_err();
        assert!(e.message.contains("in a nested SELECT"), "{e}");
        let e = parse("SELECT EXISTS (SELECT 1) FROM 'x'").unwrap_err();
        assert!(e.message.contains("subquery"), "{e}");
        let e = parse("SELECT a FROM 'x'; SELECT b FROM 'y'").unwrap_err();
        assert!(e.message.contains("exactly one"), "{e}");
        let e = parse("SELECT topic(1, 2) FROM 'x'").unwrap_err();
        assert!(e.message.contains("takes 1 argument"), "{e}");
    }
}
