//! The AWS IoT SQL dialect: from rule text to expressions DataFusion can plan.
//!
//! A rule is `SELECT <items> FROM '<topic filter>' [WHERE <condition>]`. The dialect layer
//! does only what DataFusion cannot do by itself:
//!
//! 1. **FROM**: the topic filter is a quoted string, which SQL does not allow as a table.
//!    The tokenizer's output is edited so that the string becomes the identifier of the
//!    message "table"; every token keeps its position, so errors still point into the text
//!    the user wrote.
//! 2. **Shape**: a rule is exactly one SELECT over the message. Other statements, joins,
//!    GROUP BY, ORDER BY, subqueries and the like are refused with their position.
//! 3. **Functions**: the message-context functions become columns or UDF calls over the
//!    metadata columns the batcher adds (see [`meta`]): `topic()` → the topic,
//!    `topic(n)` → its n-th level, `clientid()` and `thingName()` → the publisher's client
//!    id, `timestamp()` → the receive time. Every other function must be a DataFusion
//!    scalar function; unknown ones are refused with their position.
//! 4. **Fields**: every field path the rule reads (`a`, `a.b.c`) is collected into a
//!    [`FieldTree`] so that the decoder materialises only those.
//!
//! Dotted paths (`geoCoordinates.latitude`) need no rewrite: with identifier
//! normalisation off, DataFusion resolves them as field access into struct columns.

mod aws_functions;
mod collections;
pub mod functions;
mod hashes;
pub mod json_values;
pub(crate) mod nested;
pub mod time;
pub mod types;

use std::collections::BTreeMap;
use std::fmt;
use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{
    self, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident, ObjectName,
    SelectItem, SetExpr, Spanned, Statement, TableFactor, visit_expressions, visit_expressions_mut,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::{Parser, ParserError};
use datafusion::sql::sqlparser::tokenizer::{Location, Span, Token, Tokenizer};

use crate::Engine;

/// Names of the metadata columns the batcher adds beside the payload's fields.
pub mod meta {
    /// The "table" the FROM clause is rewritten to.
    pub const TABLE: &str = "__weir_msg";
    pub const TOPIC: &str = "__weir_topic";
    pub const CLIENT_ID: &str = "__weir_clientid";
    pub const TIMESTAMP: &str = "__weir_timestamp";
    pub const PRINCIPAL: &str = "__weir_principal";
    pub const SOURCE_IP: &str = "__weir_sourceip";
    pub const TRACE_ID: &str = "__weir_traceid";
    /// The raw payload (`*` as a function argument, as in `encode(*, 'base64')`).
    pub const PAYLOAD: &str = "__weir_payload";

    /// Whether `name` is one of weir's own columns (all start with `__weir_`).
    pub fn is_meta(name: &str) -> bool {
        name.starts_with("__weir_")
    }

    /// The column telling, per message, whether the field at `path` is JSON `null`
    /// (rather than a value, or missing).
    pub fn json_null(path: &str) -> String {
        format!("__weir_null:{path}")
    }

    /// The column holding the MQTT 5 property `name` (`get_mqtt_property(name)`).
    pub fn mqtt_property(name: &str) -> String {
        format!("__weir_mqtt:{name}")
    }

    /// The column holding the values of the MQTT 5 user property `key`
    /// (`get_user_properties(key)`), or all user properties as JSON text (`None`).
    pub fn user_properties(key: Option<&str>) -> String {
        match key {
            Some(k) => format!("__weir_user_property:{k}"),
            None => "__weir_user_properties".to_owned(),
        }
    }
}

/// A rule or expression that could not be accepted, with its position in the SQL text
/// where known (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlError {
    pub message: String,
    pub line: Option<u64>,
    pub column: Option<u64>,
}

impl SqlError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            line: None,
            column: None,
        }
    }

    fn at(message: impl Into<String>, span: Span) -> Self {
        let mut e = Self::new(message);
        if span.start != Location::empty() {
            e.line = Some(span.start.line);
            e.column = Some(span.start.column);
        }
        e
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{} (line {l}, column {c})", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for SqlError {}

impl From<ParserError> for SqlError {
    fn from(e: ParserError) -> Self {
        let text = match e {
            ParserError::TokenizerError(s) | ParserError::ParserError(s) => s,
            ParserError::RecursionLimitExceeded => "the expression nests too deeply".to_owned(),
        };
        // sqlparser appends " at Line: L, Column: C" to its messages.
        if let Some(i) = text.rfind(" at Line: ") {
            let tail = &text[i + " at Line: ".len()..];
            let mut nums = tail.split(", Column: ").map(|s| s.trim().parse::<u64>());
            if let (Some(Ok(line)), Some(Ok(column))) = (nums.next(), nums.next()) {
                return Self {
                    message: text[..i].to_owned(),
                    line: Some(line),
                    column: Some(column),
                };
            }
        }
        Self::new(text)
    }
}

/// The payload fields an expression reads, as a tree of paths. `whole` means the field is
/// read as a whole (so all of it is decoded); otherwise only the listed children are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldTree {
    pub whole: bool,
    pub children: BTreeMap<String, FieldTree>,
}

impl FieldTree {
    pub fn add(&mut self, path: &[String]) {
        let mut node = self;
        for part in path {
            if node.whole {
                return;
            }
            node = node.children.entry(part.clone()).or_default();
        }
        node.whole = true;
        node.children.clear();
    }

    pub fn merge(&mut self, other: &FieldTree) {
        if other.whole {
            self.whole = true;
            self.children.clear();
        }
        if self.whole {
            return;
        }
        for (k, v) in &other.children {
            self.children.entry(k.clone()).or_default().merge(v);
        }
    }

    pub fn is_empty(&self) -> bool {
        !self.whole && self.children.is_empty()
    }
}

/// Which metadata columns a rule reads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetaNeeds {
    pub topic: bool,
    pub client_id: bool,
    pub timestamp: bool,
    pub principal: bool,
    pub source_ip: bool,
    pub trace_id: bool,
    /// The raw payload bytes: a rule that reads only them takes any payload, JSON or not.
    pub payload: bool,
    /// Field paths (`a.b`) whose JSON-null-ness the rule asks about (`isNull`,
    /// `isUndefined`): the batch gets a boolean column [`meta::json_null`] for each.
    pub json_null: std::collections::BTreeSet<String>,
    /// MQTT 5 properties the rule reads (`get_mqtt_property`), by AWS's names.
    pub mqtt: std::collections::BTreeSet<String>,
    /// MQTT 5 user properties the rule reads (`get_user_properties`): a key, or `None`
    /// for all of them.
    pub user_properties: std::collections::BTreeSet<Option<String>>,
}

impl MetaNeeds {
    pub fn merge(&mut self, o: MetaNeeds) {
        self.topic |= o.topic;
        self.client_id |= o.client_id;
        self.timestamp |= o.timestamp;
        self.principal |= o.principal;
        self.source_ip |= o.source_ip;
        self.payload |= o.payload;
        self.trace_id |= o.trace_id;
        self.json_null.extend(o.json_null);
        self.mqtt.extend(o.mqtt);
        self.user_properties.extend(o.user_properties);
    }
}

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
    /// The variables of the rule's SET clause, in order; templates may use them too.
    pub variables: Vec<Variable>,
}

/// A variable of a rule's `SET @name = <expr>` clause. Its expression has the earlier
/// variables and nested SELECTs already rewritten; uses of `@name` are replaced by it.
#[derive(Debug, Clone)]
pub struct Variable {
    pub name: String,
    pub expr: Expr,
}

/// An expression from outside a rule's SELECT (a `${...}` template), rewritten like one.
#[derive(Debug, Clone)]
pub struct ParsedExpr {
    pub expr: Expr,
    pub fields: FieldTree,
    pub meta: MetaNeeds,
}

/// Parses, validates and rewrites a rule.
pub fn parse_rule(engine: &Engine, sql: &str) -> Result<ParsedRule, SqlError> {
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
        desugar(&mut expr)?;
        substitute_variables(&mut expr, &variables)?;
        variables.push(Variable {
            name: name.value,
            expr,
        });
    }

    let mut statements = Parser::new(&dialect)
        .with_tokens_with_locations(tokens)
        .parse_statements()
        .map_err(|e| at_end_if_unplaced(SqlError::from(e), sql))?;
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
    check_query_shape(&query)?;
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
        variables,
    };
    let mut fields = FieldTree::default();
    let mut meta = MetaNeeds::default();
    for (i, col) in rule.columns.iter_mut().enumerate() {
        rewrite(
            engine,
            &mut col.expr,
            &rule.variables,
            &mut fields,
            &mut meta,
        )?;
        if let Some(path) = field_path(&col.expr)
            && !rule.value
        {
            meta.json_null.insert(path.clone());
            rule.passthrough.push((i, path));
        }
    }
    if let Some(cond) = &mut rule.condition {
        rewrite(engine, cond, &rule.variables, &mut fields, &mut meta)?;
    }
    rule.fields = fields;
    rule.meta = meta;
    Ok(rule)
}

/// sqlparser gives no position for "found: EOF": point after the last character.
fn at_end_if_unplaced(mut e: SqlError, sql: &str) -> SqlError {
    if e.line.is_none() {
        let line = sql.lines().count().max(1);
        let column = sql.lines().last().map_or(0, |l| l.chars().count()) + 1;
        e.line = Some(line as u64);
        e.column = Some(column as u64);
    }
    e
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
    engine: &Engine,
    text: &str,
    variables: &[Variable],
) -> Result<ParsedExpr, SqlError> {
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
    let mut meta = MetaNeeds::default();
    rewrite(engine, &mut expr, variables, &mut fields, &mut meta)?;
    Ok(ParsedExpr { expr, fields, meta })
}

type Tokens = Vec<datafusion::sql::sqlparser::tokenizer::TokenWithSpan>;

/// Takes a leading `SET @a = <expr>[, @b = <expr>]` clause out of the tokens and returns
/// its assignments, in order.
fn take_set_clause(tokens: &mut Tokens) -> Result<Vec<(Ident, Expr)>, SqlError> {
    let Some(start) = tokens
        .iter()
        .position(|t| !matches!(t.token, Token::Whitespace(_)))
    else {
        return Ok(Vec::new());
    };
    if !matches!(&tokens[start].token, Token::Word(w) if w.keyword == Keyword::SET) {
        return Ok(Vec::new());
    }
    // The assignments end where the rule's SELECT begins (outside any parentheses).
    let mut depth = 0i32;
    let end = tokens[start + 1..]
        .iter()
        .position(|t| {
            match &t.token {
                Token::LParen => depth += 1,
                Token::RParen => depth -= 1,
                Token::Word(w) if depth == 0 && w.keyword == Keyword::SELECT => return true,
                _ => {}
            }
            false
        })
        .map(|i| i + start + 1)
        .ok_or_else(|| {
            SqlError::at(
                "SET must be followed by the rule's SELECT",
                tokens[start].span,
            )
        })?;
    let mut parser =
        Parser::new(&GenericDialect {}).with_tokens_with_locations(tokens[start + 1..end].to_vec());
    let mut assignments = Vec::new();
    loop {
        let at = parser.peek_token();
        let name = parser.parse_identifier()?;
        let valid = name.quote_style.is_none()
            && name.value.starts_with('@')
            && (2..=65).contains(&name.value.len())
            && name.value[1..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(SqlError::at(
                format!(
                    "SET assigns variables named @name (letters, digits and underscores, up to 64 characters); found {}",
                    at.token
                ),
                at.span,
            ));
        }
        parser.expect_token(&Token::Eq)?;
        let expr = parser.parse_expr()?;
        assignments.push((name, expr));
        if !parser.consume_token(&Token::Comma) {
            break;
        }
    }
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(SqlError::at(
            format!(
                "unexpected {} in SET: assignments are `@name = <expression>`, separated by commas",
                next.token
            ),
            next.span,
        ));
    }
    tokens.drain(start..end);
    Ok(assignments)
}

/// `x IS [NOT] UNDEFINED` is not SQL: it is read as `x IS [NOT] UNKNOWN`, which the
/// rewrite turns into `isUndefined(x)`.
fn undefined_as_unknown(tokens: &mut Tokens) {
    let word = |t: &Token, k: Keyword| matches!(t, Token::Word(w) if w.keyword == k);
    let mut after_is = false;
    for t in tokens.iter_mut() {
        match &t.token {
            Token::Whitespace(_) => continue,
            Token::Word(w)
                if after_is
                    && w.quote_style.is_none()
                    && w.value.eq_ignore_ascii_case("undefined") =>
            {
                t.token = Token::make_keyword("UNKNOWN");
                after_is = false;
            }
            tok if word(tok, Keyword::IS) => after_is = true,
            tok if after_is && word(tok, Keyword::NOT) => {}
            _ => after_is = false,
        }
    }
}

/// Replaces every `@name` (and `@name.member`) with the variable's expression.
fn substitute_variables(expr: &mut Expr, variables: &[Variable]) -> Result<(), SqlError> {
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

/// The AWS forms that SQL lacks, in SQL: a nested SELECT becomes array or object
/// expressions ([`nested`]), `IS [NOT] UNKNOWN` (read from `IS [NOT] UNDEFINED`)
/// becomes `isUndefined()`.
fn desugar(expr: &mut Expr) -> Result<(), SqlError> {
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

/// A visit that stopped at an error, as a `Result`.
fn done(outcome: ControlFlow<SqlError>) -> Result<(), SqlError> {
    match outcome {
        ControlFlow::Break(e) => Err(e),
        ControlFlow::Continue(()) => Ok(()),
    }
}

/// Removes the `VALUE` of a top-level `SELECT VALUE` and says whether it was there.
fn take_select_value(tokens: &mut Tokens) -> bool {
    let significant = |t: &Token| !matches!(t, Token::Whitespace(_));
    let mut words = tokens
        .iter()
        .enumerate()
        .filter(|(_, t)| significant(&t.token));
    let (Some((_, first)), Some((i, second))) = (words.next(), words.next()) else {
        return false;
    };
    let is_select = matches!(&first.token, Token::Word(w) if w.keyword == Keyword::SELECT);
    let is_value = matches!(&second.token, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("value"));
    if is_select && is_value {
        tokens.remove(i);
        true
    } else {
        false
    }
}

/// Finds `FROM '<filter>'` at the top level, replaces the string with the message table's
/// identifier (keeping its position) and returns the filter.
fn take_topic_filter(
    tokens: &mut [datafusion::sql::sqlparser::tokenizer::TokenWithSpan],
) -> Result<String, SqlError> {
    let mut depth = 0i32;
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i].token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.keyword == Keyword::FROM => {
                let mut j = i + 1;
                while j < tokens.len() && matches!(tokens[j].token, Token::Whitespace(_)) {
                    j += 1;
                }
                let Some(next) = tokens.get(j) else {
                    return Err(SqlError::at(
                        "FROM must be followed by a topic filter in single quotes, e.g. FROM 'plant/+/metrics'",
                        tokens[i].span,
                    ));
                };
                let Token::SingleQuotedString(filter) = &next.token else {
                    return Err(SqlError::at(
                        format!(
                            "FROM must be followed by a topic filter in single quotes, e.g. FROM 'plant/+/metrics'; found {}",
                            next.token
                        ),
                        next.span,
                    ));
                };
                let filter = filter.clone();
                crate::topic::validate_filter(&filter)
                    .map_err(|e| SqlError::at(e.to_string(), next.span))?;
                tokens[j].token = Token::make_word(meta::TABLE, None);
                return Ok(filter);
            }
            _ => {}
        }
        i += 1;
    }
    Err(SqlError::new(
        "a rule needs FROM '<topic filter>', e.g. SELECT * FROM 'plant/+/metrics'",
    ))
}

fn check_query_shape(q: &ast::Query) -> Result<(), SqlError> {
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

/// The output name of an unaliased SELECT item: the field's own name for a field path,
/// the function's name for a call, `_<position>` otherwise.
pub(crate) fn default_name(expr: &Expr, position: usize) -> String {
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
fn field_path(e: &Expr) -> Option<String> {
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
fn string_literal(e: &Expr) -> Option<&str> {
    match e {
        Expr::Value(v) => match &v.value {
            ast::Value::SingleQuotedString(s) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// Rewrites the context functions, checks every other function and collects field paths.
fn rewrite(
    engine: &Engine,
    expr: &mut Expr,
    variables: &[Variable],
    fields: &mut FieldTree,
    meta: &mut MetaNeeds,
) -> Result<(), SqlError> {
    desugar(expr)?;
    substitute_variables(expr, variables)?;

    // Refuse what a rule cannot do, with its position.
    let refused = visit_expressions(expr, |e| {
        let what = match e {
            Expr::Subquery(_) | Expr::Exists { .. } | Expr::InSubquery { .. } => "a subquery",
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => "`*` inside an expression",
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
                if let Some(t) = aws_functions::cast_type(data_type) {
                    *data_type = t;
                }
            }
            // AWS indexes arrays from 0 (`a[0]`), DataFusion from 1.
            Expr::CompoundFieldAccess { access_chain, .. } => {
                for access in access_chain.iter_mut() {
                    // `a[1].b`: DataFusion takes the field as `['b']`.
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
            // `types` can run; `x = false` means the same and reaches them.
            Expr::UnaryOp {
                op: ast::UnaryOperator::Not,
                expr: inner,
            } => {
                *e = Expr::BinaryOp {
                    left: Box::new(Expr::Nested(inner.clone())),
                    op: ast::BinaryOperator::Eq,
                    right: Box::new(Expr::value(ast::Value::Boolean(false))),
                };
            }
            _ => {}
        }
        ControlFlow::<()>::Continue(())
    });

    let state = engine.state();
    let outcome = visit_expressions_mut(expr, |e| {
        let span = e.span();
        let Expr::Function(f) = &*e else {
            return ControlFlow::Continue(());
        };
        let name = f.name.to_string().to_ascii_lowercase();
        if let Some(why) = aws_functions::unsupported(&name) {
            return ControlFlow::Break(SqlError::at(
                format!("{}() is not supported: it {why}", f.name),
                span,
            ));
        }
        let args = match function_args(f) {
            Ok(a) => a,
            Err(msg) => return ControlFlow::Break(SqlError::at(msg, span)),
        };
        let arity = |n: usize| -> Result<(), SqlError> {
            if args.len() == n {
                Ok(())
            } else {
                Err(SqlError::at(
                    format!("{}() takes {n} argument(s), got {}", f.name, args.len()),
                    span,
                ))
            }
        };
        let replacement = match name.as_str() {
            "topic" if args.is_empty() => {
                meta.topic = true;
                Expr::Identifier(Ident::new(meta::TOPIC))
            }
            "topic" => {
                if let Err(err) = arity(1) {
                    return ControlFlow::Break(err);
                }
                meta.topic = true;
                call(
                    functions::TOPIC_LEVEL,
                    vec![Expr::Identifier(Ident::new(meta::TOPIC)), args[0].clone()],
                )
            }
            "clientid" | "thingname" => {
                if let Err(err) = arity(0) {
                    return ControlFlow::Break(err);
                }
                meta.client_id = true;
                Expr::Identifier(Ident::new(meta::CLIENT_ID))
            }
            "principal" | "sourceip" => {
                if let Err(err) = arity(0) {
                    return ControlFlow::Break(err);
                }
                if name == "principal" {
                    meta.principal = true;
                    Expr::Identifier(Ident::new(meta::PRINCIPAL))
                } else {
                    meta.source_ip = true;
                    Expr::Identifier(Ident::new(meta::SOURCE_IP))
                }
            }
            "isnull" | "isundefined" => {
                if let Err(err) = arity(1) {
                    return ControlFlow::Break(err);
                }
                let path = field_path(&args[0]);
                let is_json_null =
                    |path: &str| Expr::Identifier(Ident::with_quote('`', meta::json_null(path)));
                let literal_null =
                    matches!(&args[0], Expr::Value(v) if v.value == ast::Value::Null);
                let undefined = Expr::IsNull(Box::new(args[0].clone()));
                match (name.as_str(), path) {
                    ("isnull", Some(p)) => {
                        meta.json_null.insert(p.clone());
                        is_json_null(&p)
                    }
                    ("isnull", None) => Expr::value(ast::Value::Boolean(literal_null)),
                    (_, Some(p)) => {
                        meta.json_null.insert(p.clone());
                        Expr::Nested(Box::new(Expr::BinaryOp {
                            left: Box::new(undefined),
                            op: ast::BinaryOperator::And,
                            right: Box::new(Expr::UnaryOp {
                                op: ast::UnaryOperator::Not,
                                expr: Box::new(is_json_null(&p)),
                            }),
                        }))
                    }
                    (_, None) if literal_null => Expr::value(ast::Value::Boolean(false)),
                    (_, None) => undefined,
                }
            }
            "timestamp" => {
                if let Err(err) = arity(0) {
                    return ControlFlow::Break(err);
                }
                meta.timestamp = true;
                Expr::Identifier(Ident::new(meta::TIMESTAMP))
            }
            "traceid" => {
                if let Err(err) = arity(0) {
                    return ControlFlow::Break(err);
                }
                meta.trace_id = true;
                Expr::Identifier(Ident::new(meta::TRACE_ID))
            }
            "get_mqtt_property" => {
                if let Err(err) = arity(1) {
                    return ControlFlow::Break(err);
                }
                let known = crate::MqttProperties::NAMES;
                match string_literal(&args[0]) {
                    Some(p) if known.contains(&p) => {
                        meta.mqtt.insert(p.to_owned());
                        Expr::Identifier(Ident::with_quote('`', meta::mqtt_property(p)))
                    }
                    _ => {
                        return ControlFlow::Break(SqlError::at(
                            format!(
                                "get_mqtt_property() takes one of the names '{}'",
                                known.join("', '")
                            ),
                            span,
                        ));
                    }
                }
            }
            "get_user_properties" => {
                let key = match args.as_slice() {
                    [] => None,
                    [k] if let Some(k) = string_literal(k) => Some(k.to_owned()),
                    _ => {
                        return ControlFlow::Break(SqlError::at(
                            "get_user_properties() takes no argument (all user properties) or a user property key as a string literal",
                            span,
                        ));
                    }
                };
                let column = meta::user_properties(key.as_deref());
                meta.user_properties.insert(key);
                Expr::Identifier(Ident::with_quote('`', column))
            }
            _ if let Some(rewritten) = aws_functions::rewrite(&name, &args) => match rewritten {
                Ok(e) => e,
                Err(msg) => return ControlFlow::Break(SqlError::at(msg, span)),
            },
            // Both forms of a nested SELECT: their calls are checked one by one.
            _ if name == nested::SELECT_FROM => return ControlFlow::Continue(()),
            _ if name.starts_with("__weir") => {
                return ControlFlow::Break(SqlError::at(
                    format!("unknown function '{}'", f.name),
                    span,
                ));
            }
            _ if state.scalar_functions().contains_key(&name)
                || state.higher_order_functions().contains_key(&name) =>
            {
                if f.over.is_some() || f.filter.is_some() {
                    return ControlFlow::Break(SqlError::at(
                        "window clauses are not supported in a rule",
                        span,
                    ));
                }
                return ControlFlow::Continue(());
            }
            _ if state.aggregate_functions().contains_key(&name)
                || state.window_functions().contains_key(&name) =>
            {
                return ControlFlow::Break(SqlError::at(
                    format!(
                        "'{}' is an aggregate or window function; a rule works on one message at a time",
                        f.name
                    ),
                    span,
                ));
            }
            _ => {
                return ControlFlow::Break(SqlError::at(
                    format!("unknown function '{}'", f.name),
                    span,
                ));
            }
        };
        *e = replacement;
        ControlFlow::Continue(())
    });
    done(outcome)?;

    // Collect the payload paths the expression reads.
    let _ = visit_expressions(expr, |e| {
        match e {
            Expr::Identifier(i) if i.value == meta::PAYLOAD => meta.payload = true,
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
    // isNull(a.b) reads a.b, though its rewrite only names the null-flag column.
    for path in &meta.json_null {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        fields.add(&parts);
    }
    Ok(())
}

fn function_args(f: &ast::Function) -> Result<Vec<Expr>, String> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::Subquery(_) => Err("a subquery is not supported in a rule".to_owned()),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e.clone()),
                // `encode(*, 'base64')`: the payload as received.
                FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => {
                    Ok(Expr::Identifier(Ident::new(meta::PAYLOAD)))
                }
                _ => Err(format!("unsupported argument to {}()", f.name)),
            })
            .collect(),
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(sql: &str) -> Result<ParsedRule, SqlError> {
        parse_rule(&Engine::new(), sql)
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
            format!("{}({}, 2)", functions::TOPIC_LEVEL, meta::TOPIC)
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

    #[test]
    fn field_tree_whole_subsumes_parts() {
        let mut t = FieldTree::default();
        t.add(&["a".into(), "b".into()]);
        t.add(&["a".into()]);
        t.add(&["a".into(), "c".into()]);
        assert!(t.children["a"].whole);
        assert!(t.children["a"].children.is_empty());
    }
}
