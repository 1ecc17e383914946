//! Edits of the token stream, for what SQL cannot parse: the quoted topic filter in
//! `FROM`, the `SET` clause, `SELECT VALUE` and `IS [NOT] UNDEFINED`. Tokens keep their
//! positions, so errors still point into the text the user wrote.

use datafusion::sql::sqlparser::ast::{Expr, Ident};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::Token;

use super::SqlError;
use crate::meta;

pub(super) type Tokens = Vec<datafusion::sql::sqlparser::tokenizer::TokenWithSpan>;

/// Takes a leading `SET @a = <expr>[, @b = <expr>]` clause out of the tokens and returns
/// its assignments, in order.
pub(super) fn take_set_clause(tokens: &mut Tokens) -> Result<Vec<(Ident, Expr)>, SqlError> {
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
pub(super) fn undefined_as_unknown(tokens: &mut Tokens) {
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

/// Removes the `VALUE` of a top-level `SELECT VALUE` and says whether it was there.
pub(super) fn take_select_value(tokens: &mut Tokens) -> bool {
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
pub(super) fn take_topic_filter(
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
