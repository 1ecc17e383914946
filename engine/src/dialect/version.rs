//! AWS IoT SQL versions: what a rule written for `2015-10-08` may not use, and
//! `sql_version()`.
//!
//! The reference marks some functions, the nested SELECT and some CAST type names as
//! added in `2016-03-23`. A `2015-10-08` rule that uses one is refused with its position,
//! rather than run with semantics its author did not choose. The versions' other
//! differences are in how outputs are written (see [`SqlVersion`]).

use std::ops::ControlFlow;

use datafusion::sql::sqlparser::ast::{self, DataType, Expr, Spanned, visit_expressions_mut};

use super::SqlError;
use super::ast::done;

/// The AWS IoT SQL version a rule is written for.
///
/// - `2016-03-23` (the default): a Decimal that is a whole number (`10.0`) is written to
///   outputs as an Int (`10`); `SELECT VALUE` may output an array.
/// - `2015-10-08`: Decimals keep their decimal point; `SELECT VALUE` of an array gives
///   no output; the functions, CAST types and nested SELECT added in `2016-03-23` are
///   refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqlVersion {
    V2015_10_08,
    #[default]
    V2016_03_23,
}

impl SqlVersion {
    /// Every version weir implements, oldest first.
    pub const ALL: [SqlVersion; 2] = [SqlVersion::V2015_10_08, SqlVersion::V2016_03_23];

    /// The version as rules name it (`2016-03-23`).
    pub fn as_str(self) -> &'static str {
        match self {
            SqlVersion::V2015_10_08 => "2015-10-08",
            SqlVersion::V2016_03_23 => "2016-03-23",
        }
    }

    /// The version a rule names, or `None` for one weir does not implement.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == text)
    }

    /// Whether whole-number Decimals are written as Ints.
    pub fn whole_decimals_as_ints(self) -> bool {
        self == SqlVersion::V2016_03_23
    }

    /// Whether `SELECT VALUE` may output an array.
    pub fn arrays_as_values(self) -> bool {
        self == SqlVersion::V2016_03_23
    }
}

impl std::fmt::Display for SqlVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Functions the reference says need `2016-03-23` or later.
const SINCE_2016: &[&str] = &[
    "decode",
    "encode",
    "get_thing_shadow",
    "indexof",
    "isundefined",
    "length",
    "numbytes",
    "parse_time",
    "time_to_epoch",
    "transform",
];

/// `sql_version()` becomes the rule's version; in a `2015-10-08` rule, what that version
/// does not have is refused. Runs on the expression as written, before nested SELECTs are
/// expanded.
pub(super) fn apply(expr: &mut Expr, version: SqlVersion) -> Result<(), SqlError> {
    let outcome = visit_expressions_mut(expr, |e| {
        let refused = match e {
            Expr::Function(f) => {
                let name = f.name.to_string().to_ascii_lowercase();
                if name == "sql_version" {
                    if !matches!(&f.args, ast::FunctionArguments::List(l) if l.args.is_empty())
                        && !matches!(f.args, ast::FunctionArguments::None)
                    {
                        return ControlFlow::Break(SqlError::at(
                            "sql_version() takes no arguments",
                            e.span(),
                        ));
                    }
                    *e = Expr::value(ast::Value::SingleQuotedString(version.as_str().to_owned()));
                    return ControlFlow::Continue(());
                }
                (version == SqlVersion::V2015_10_08 && SINCE_2016.contains(&name.as_str()))
                    .then(|| format!("{name}()"))
            }
            Expr::Subquery(_) if version == SqlVersion::V2015_10_08 => {
                Some("a nested SELECT".to_owned())
            }
            Expr::Cast { data_type, .. } if version == SqlVersion::V2015_10_08 => matches!(
                data_type,
                DataType::Decimal(_) | DataType::Bool | DataType::Boolean
            )
            .then(|| format!("CAST to {data_type}")),
            _ => None,
        };
        match refused {
            Some(what) => ControlFlow::Break(SqlError::at(
                format!(
                    "{what} needs sql_version {}; this rule is written for {}",
                    SqlVersion::V2016_03_23,
                    version
                ),
                e.span(),
            )),
            None => ControlFlow::Continue(()),
        }
    });
    done(outcome)
}
