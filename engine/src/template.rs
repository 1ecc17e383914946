//! `${...}` substitution templates in action parameters.
//!
//! A template such as `alerts/${topic(3)}/${clientid()}` is split into literal text and
//! expressions. The expressions are not evaluated here: they are handed to the rule, which
//! plans each one beside its SELECT columns, evaluates it over the original message in the
//! same vectorised pass, and returns one value per expression with every output. Rendering
//! is then only string concatenation.

use crate::error::{Classify, ErrorClass};

/// One part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Lit(String),
    /// Index into the rule's list of template expressions.
    Expr(usize),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template '{template}': '${{' at byte {at} is not closed by '}}'")]
    Unclosed { template: String, at: usize },
    #[error("template '{template}': empty expression '${{}}' at byte {at}")]
    Empty { template: String, at: usize },
}

impl Classify for TemplateError {
    fn class(&self) -> ErrorClass {
        ErrorClass::User
    }
}

/// The expressions of all templates of a rule, deduplicated.
#[derive(Debug, Clone, Default)]
pub struct TemplateExprs {
    exprs: Vec<String>,
}

impl TemplateExprs {
    pub fn as_slice(&self) -> &[String] {
        &self.exprs
    }

    fn intern(&mut self, expr: &str) -> usize {
        let expr = expr.trim();
        match self.exprs.iter().position(|e| e == expr) {
            Some(i) => i,
            None => {
                self.exprs.push(expr.to_owned());
                self.exprs.len() - 1
            }
        }
    }
}

impl Template {
    /// Parses `source`, adding its expressions to `exprs`.
    pub fn parse(source: &str, exprs: &mut TemplateExprs) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut offset = 0;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Lit(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let Some(end) = closing_brace(after) else {
                return Err(TemplateError::Unclosed {
                    template: source.to_owned(),
                    at: offset + start,
                });
            };
            let expr = &after[..end];
            if expr.trim().is_empty() {
                return Err(TemplateError::Empty {
                    template: source.to_owned(),
                    at: offset + start,
                });
            }
            parts.push(Part::Expr(exprs.intern(expr)));
            let consumed = start + 2 + end + 1;
            offset += consumed;
            rest = &rest[consumed..];
        }
        if !rest.is_empty() {
            parts.push(Part::Lit(rest.to_owned()));
        }
        Ok(Self {
            source: source.to_owned(),
            parts,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template has no expressions.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Lit(_)))
    }

    /// Renders the template with the values a rule computed for its expressions.
    /// A missing (undefined) value renders as the empty string.
    pub fn render(&self, values: &[Option<String>]) -> String {
        let mut out = String::with_capacity(self.source.len());
        for p in &self.parts {
            match p {
                Part::Lit(s) => out.push_str(s),
                Part::Expr(i) => {
                    if let Some(Some(v)) = values.get(*i) {
                        out.push_str(v);
                    }
                }
            }
        }
        out
    }
}

/// The index of the `}` that closes an expression, skipping braces inside quotes.
fn closing_brace(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    for (i, c) in s.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '}') => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_renders() {
        let mut exprs = TemplateExprs::default();
        let t = Template::parse("alerts/${topic(3)}/${ clientid() }/x", &mut exprs).unwrap();
        let u = Template::parse("${clientid()}-${'}'}", &mut exprs).unwrap();
        assert_eq!(exprs.as_slice(), ["topic(3)", "clientid()", "'}'"]);
        let values = vec![Some("plant-1".to_owned()), None, Some("}".to_owned())];
        assert_eq!(t.render(&values), "alerts/plant-1//x");
        assert_eq!(u.render(&values), "-}");
        assert!(!t.is_literal());
        assert!(Template::parse("plain", &mut exprs).unwrap().is_literal());
    }

    #[test]
    fn refuses_broken_templates() {
        let mut exprs = TemplateExprs::default();
        assert!(matches!(
            Template::parse("a/${topic(1)", &mut exprs),
            Err(TemplateError::Unclosed { at: 2, .. })
        ));
        assert!(matches!(
            Template::parse("a/${ }", &mut exprs),
            Err(TemplateError::Empty { .. })
        ));
    }
}
