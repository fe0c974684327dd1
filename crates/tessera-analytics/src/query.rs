//! The query language: a small SQL-shaped grammar, parsed by recursive descent.
//!
//! ```text
//! query      := SELECT item ("," item)* FROM ident clause*
//! clause     := WHERE expr | GROUP BY ident ("," ident)* | PER SITE
//!             | CLAMP ident number number ("," ident number number)*
//! item       := ident | ident "(" [ "*" | arg ("," arg)* ] ")"
//! arg        := ident | number | string
//! expr       := and (OR and)*
//! and        := not (AND not)*
//! not        := NOT not | "(" expr ")" | ident op literal | ident [NOT] IN "(" literal ("," literal)* ")"
//! op         := "=" | "<>" | "!=" | "<" | "<=" | ">" | ">="
//! literal    := number | string            (strings in single quotes, '' for a quote)
//! ```
//!
//! A column name that is not a plain word (or is a keyword) is written in
//! double quotes: `"time-in-hospital"`. Keywords are case-insensitive. A hand-written grammar rather than
//! `sqlparser`: the language is a dozen productions, none of SQL's joins,
//! subqueries or expressions in aggregates may appear (each would need its
//! own sensitivity analysis), `CLAMP` and `PER SITE` are not SQL, and every
//! error names the token and its position in the query (1-based character).

use serde::Serialize;

use crate::AnalyticsError;

/// A parsed query.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Query {
    /// The SELECT list, in order.
    pub items: Vec<Item>,
    /// The table named in FROM (`data`).
    pub from: String,
    /// The WHERE filter.
    pub filter: Option<Expr>,
    /// GROUP BY columns.
    pub group_by: Vec<String>,
    /// `PER SITE`: each site's answer besides the federation's.
    pub per_site: bool,
    /// CLAMP bounds given by the query: `(column, low, high)`.
    pub clamps: Vec<(String, f64, f64)>,
}

/// One entry of the SELECT list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Item {
    /// A GROUP BY column, echoed.
    Column(String),
    /// An aggregate.
    Aggregate(Aggregate),
}

/// A statistic over the rows of a group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Aggregate {
    /// `count(*)`: rows.
    Count,
    /// `sum(x)`.
    Sum(String),
    /// `mean(x)`.
    Mean(String),
    /// `variance(x)` (sample, n - 1).
    Variance(String),
    /// `stddev(x)` (sample, n - 1).
    Stddev(String),
    /// `histogram(x, bins)` or `histogram(x, bins, 'hierarchical')`.
    Histogram {
        /// The column.
        column: String,
        /// Bins over the column's bounds (a power of two when hierarchical).
        bins: usize,
        /// A binary tree of bins, each row counted once per level.
        hierarchical: bool,
    },
    /// `quantile(x, q)` from a hierarchical histogram.
    Quantile(String, f64),
    /// `min(x)`: a quantile at rank 0, protected by noise.
    Min(String),
    /// `max(x)`: a quantile at the top rank, protected by noise.
    Max(String),
    /// `corr(x, y, ...)`: Pearson correlation (a matrix for more than two columns).
    Corr(Vec<String>),
    /// `cov(x, y, ...)`: sample covariance (a matrix for more than two columns).
    Cov(Vec<String>),
    /// `crosstab(a, b)`: counts of each pair of levels of two categorical columns.
    Crosstab(String, String),
    /// `count_distinct(x)`: distinct values, by a linear counting sketch.
    CountDistinct(String),
}

impl Aggregate {
    /// The columns it reads.
    pub fn columns(&self) -> Vec<&str> {
        match self {
            Aggregate::Count => Vec::new(),
            Aggregate::Sum(c)
            | Aggregate::Mean(c)
            | Aggregate::Variance(c)
            | Aggregate::Stddev(c)
            | Aggregate::Quantile(c, _)
            | Aggregate::Min(c)
            | Aggregate::Max(c)
            | Aggregate::CountDistinct(c) => vec![c],
            Aggregate::Histogram { column, .. } => vec![column],
            Aggregate::Corr(cs) | Aggregate::Cov(cs) => cs.iter().map(String::as_str).collect(),
            Aggregate::Crosstab(a, b) => vec![a, b],
        }
    }

    /// The name shown in answers, e.g. `mean(age)`.
    pub fn label(&self) -> String {
        match self {
            Aggregate::Count => "count(*)".into(),
            Aggregate::Sum(c) => format!("sum({c})"),
            Aggregate::Mean(c) => format!("mean({c})"),
            Aggregate::Variance(c) => format!("variance({c})"),
            Aggregate::Stddev(c) => format!("stddev({c})"),
            Aggregate::Histogram {
                column,
                bins,
                hierarchical,
            } => {
                if *hierarchical {
                    format!("histogram({column}, {bins}, 'hierarchical')")
                } else {
                    format!("histogram({column}, {bins})")
                }
            }
            Aggregate::Quantile(c, q) => format!("quantile({c}, {q})"),
            Aggregate::Min(c) => format!("min({c})"),
            Aggregate::Max(c) => format!("max({c})"),
            Aggregate::Corr(cs) => format!("corr({})", cs.join(", ")),
            Aggregate::Cov(cs) => format!("cov({})", cs.join(", ")),
            Aggregate::Crosstab(a, b) => format!("crosstab({a}, {b})"),
            Aggregate::CountDistinct(c) => format!("count_distinct({c})"),
        }
    }
}

/// A WHERE condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Expr {
    /// Both.
    And(Box<Expr>, Box<Expr>),
    /// Either.
    Or(Box<Expr>, Box<Expr>),
    /// Not.
    Not(Box<Expr>),
    /// `column op literal`.
    Compare(String, CompareOp, Literal),
    /// `column IN (literal, ...)`.
    In(String, Vec<Literal>),
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum CompareOp {
    /// `=`
    Eq,
    /// `<>` or `!=`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
}

/// A constant in a condition.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Literal {
    /// A number.
    Number(f64),
    /// A quoted string.
    Text(String),
}

impl Literal {
    /// The literal as a categorical level's text.
    pub fn as_level(&self) -> String {
        match self {
            Literal::Number(v) => format!("{v}"),
            Literal::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// A `"quoted"` column name (never a keyword).
    Quoted(String),
    Number(f64),
    Text(String),
    Sym(&'static str),
    End,
}

impl Tok {
    fn shown(&self) -> String {
        match self {
            Tok::Ident(s) => format!("'{s}'"),
            Tok::Quoted(s) => format!("'\"{s}\"'"),
            Tok::Number(v) => format!("'{v}'"),
            Tok::Text(s) => format!("'{}'", s.replace('\'', "''")),
            Tok::Sym(s) => format!("'{s}'"),
            Tok::End => "the end of the query".into(),
        }
    }
}

const SYMBOLS: &[&str] = &["<=", ">=", "<>", "!=", "(", ")", ",", "*", "=", "<", ">"];

fn lex(text: &str) -> Result<Vec<(Tok, usize)>, AnalyticsError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let start = i + 1;
        if c.is_whitespace() {
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let mut s = String::new();
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                s.push(chars[i]);
                i += 1;
            }
            out.push((Tok::Ident(s), start));
        } else if c.is_ascii_digit() || c == '.' || c == '-' || c == '+' {
            let mut s = String::new();
            s.push(c);
            i += 1;
            while i < chars.len()
                && (chars[i].is_ascii_digit()
                    || chars[i] == '.'
                    || chars[i] == 'e'
                    || chars[i] == 'E'
                    || ((chars[i] == '-' || chars[i] == '+')
                        && matches!(s.chars().last(), Some('e' | 'E'))))
            {
                s.push(chars[i]);
                i += 1;
            }
            match s.parse::<f64>() {
                Ok(v) if v.is_finite() => out.push((Tok::Number(v), start)),
                _ => {
                    return Err(AnalyticsError::parse(
                        start,
                        &format!("'{s}'"),
                        "not a number",
                    ));
                }
            }
        } else if c == '"' {
            // A quoted column name: any characters but '"'.
            let end = chars[i + 1..].iter().position(|&ch| ch == '"');
            let Some(len) = end else {
                return Err(AnalyticsError::parse(
                    start,
                    "'\"'",
                    "a column name that is never closed (\"name\")",
                ));
            };
            let name: String = chars[i + 1..i + 1 + len].iter().collect();
            if name.is_empty() {
                return Err(AnalyticsError::parse(
                    start,
                    "'\"\"'",
                    "an empty column name",
                ));
            }
            out.push((Tok::Quoted(name), start));
            i += len + 2;
        } else if c == '\'' {
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => {
                        return Err(AnalyticsError::parse(
                            start,
                            "'''",
                            "a string that is never closed (strings end with ')",
                        ));
                    }
                    Some('\'') if chars.get(i + 1) == Some(&'\'') => {
                        s.push('\'');
                        i += 2;
                    }
                    Some('\'') => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push((Tok::Text(s), start));
        } else {
            let rest: String = chars[i..chars.len().min(i + 2)].iter().collect();
            match SYMBOLS.iter().find(|s| rest.starts_with(**s)) {
                Some(sym) => {
                    out.push((Tok::Sym(sym), start));
                    i += sym.len();
                }
                None => {
                    return Err(AnalyticsError::parse(
                        start,
                        &format!("'{c}'"),
                        "not part of the query language",
                    ));
                }
            }
        }
    }
    out.push((Tok::End, chars.len() + 1));
    Ok(out)
}

/// The longest query text, in bytes.
pub const MAX_QUERY_BYTES: usize = 64 * 1024;

/// The deepest nesting of parentheses and NOT in a WHERE filter.
pub const MAX_NESTING: usize = 64;

/// The most columns of one `corr` or `cov` (its slots grow as their
/// square).
pub const MAX_MATRIX_COLUMNS: usize = 64;

/// The most values of one IN list.
pub const MAX_IN_VALUES: usize = 1024;

/// The most comparisons and IN tests in a WHERE filter (each AND or OR
/// deepens the filter's tree by one).
pub const MAX_CONDITIONS: usize = 1024;

struct Parser {
    toks: Vec<(Tok, usize)>,
    at: usize,
    /// Parentheses and NOTs open around the current position.
    depth: usize,
    /// Comparisons and IN tests read so far.
    conditions: usize,
}

const KEYWORDS: &[&str] = &[
    "select", "from", "where", "group", "by", "per", "site", "clamp", "and", "or", "not", "in",
];

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.at.min(self.toks.len() - 1)].0
    }

    fn pos(&self) -> usize {
        self.toks[self.at.min(self.toks.len() - 1)].1
    }

    fn next(&mut self) -> Tok {
        let t = self.peek().clone();
        self.at += 1;
        t
    }

    fn error<T>(&self, expected: &str) -> Result<T, AnalyticsError> {
        Err(AnalyticsError::parse(
            self.pos(),
            &self.peek().shown(),
            &format!("expected {expected}"),
        ))
    }

    fn is_keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Ident(s) if s.eq_ignore_ascii_case(word))
    }

    fn keyword(&mut self, word: &str) -> Result<(), AnalyticsError> {
        if self.is_keyword(word) {
            self.at += 1;
            Ok(())
        } else {
            self.error(&word.to_uppercase())
        }
    }

    fn is_sym(&self, sym: &str) -> bool {
        matches!(self.peek(), Tok::Sym(s) if *s == sym)
    }

    fn sym(&mut self, sym: &str) -> Result<(), AnalyticsError> {
        if self.is_sym(sym) {
            self.at += 1;
            Ok(())
        } else {
            self.error(&format!("'{sym}'"))
        }
    }

    fn ident(&mut self, what: &str) -> Result<String, AnalyticsError> {
        match self.peek() {
            Tok::Ident(s) if !KEYWORDS.iter().any(|k| s.eq_ignore_ascii_case(k)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            Tok::Quoted(s) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => self.error(what),
        }
    }

    fn number(&mut self, what: &str) -> Result<f64, AnalyticsError> {
        match self.peek() {
            Tok::Number(v) => {
                let v = *v;
                self.at += 1;
                Ok(v)
            }
            _ => self.error(what),
        }
    }

    fn literal(&mut self) -> Result<Literal, AnalyticsError> {
        match self.next() {
            Tok::Number(v) => Ok(Literal::Number(v)),
            Tok::Text(s) => Ok(Literal::Text(s)),
            _ => {
                self.at -= 1;
                self.error("a number or a 'quoted' value")
            }
        }
    }

    fn query(&mut self) -> Result<Query, AnalyticsError> {
        self.keyword("select")?;
        let mut items = vec![self.item()?];
        while self.is_sym(",") {
            self.at += 1;
            items.push(self.item()?);
        }
        self.keyword("from")?;
        let from = self.ident("a table name (data)")?;
        let mut query = Query {
            items,
            from,
            filter: None,
            group_by: Vec::new(),
            per_site: false,
            clamps: Vec::new(),
        };
        loop {
            if self.is_keyword("where") && query.filter.is_none() {
                self.at += 1;
                query.filter = Some(self.or()?);
            } else if self.is_keyword("group") && query.group_by.is_empty() {
                self.at += 1;
                self.keyword("by")?;
                query.group_by.push(self.ident("a column to group by")?);
                while self.is_sym(",") {
                    self.at += 1;
                    query.group_by.push(self.ident("a column to group by")?);
                }
            } else if self.is_keyword("per") && !query.per_site {
                self.at += 1;
                self.keyword("site")?;
                query.per_site = true;
            } else if self.is_keyword("clamp") {
                self.at += 1;
                loop {
                    let column = self.ident("a column to clamp")?;
                    let low = self.number("the column's lower bound")?;
                    let high = self.number("the column's upper bound")?;
                    query.clamps.push((column, low, high));
                    if !self.is_sym(",") {
                        break;
                    }
                    self.at += 1;
                }
            } else if *self.peek() == Tok::End {
                return Ok(query);
            } else {
                return self.error("WHERE, GROUP BY, PER SITE, CLAMP or the end of the query");
            }
        }
    }

    fn item(&mut self) -> Result<Item, AnalyticsError> {
        let pos = self.pos();
        let name = self.ident("a column or an aggregate such as count(*)")?;
        if !self.is_sym("(") {
            return Ok(Item::Column(name));
        }
        self.at += 1;
        let mut args: Vec<(Tok, usize)> = Vec::new();
        if self.is_sym("*") {
            args.push((self.next(), pos));
        } else if !self.is_sym(")") {
            loop {
                let p = self.pos();
                match self.next() {
                    Tok::Quoted(c) => args.push((Tok::Ident(c), p)),
                    t @ (Tok::Ident(_) | Tok::Number(_) | Tok::Text(_)) => args.push((t, p)),
                    _ => {
                        self.at -= 1;
                        return self.error("a column, a number or a 'quoted' option");
                    }
                }
                if !self.is_sym(",") {
                    break;
                }
                self.at += 1;
            }
        }
        self.sym(")")?;
        aggregate(&name, pos, &args).map(Item::Aggregate)
    }

    fn or(&mut self) -> Result<Expr, AnalyticsError> {
        let mut e = self.and()?;
        while self.is_keyword("or") {
            self.at += 1;
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Ok(e)
    }

    fn and(&mut self) -> Result<Expr, AnalyticsError> {
        let mut e = self.not()?;
        while self.is_keyword("and") {
            self.at += 1;
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Ok(e)
    }

    /// One more level of NOT or '(' at the current token, refused past
    /// [`MAX_NESTING`].
    fn enter(&mut self) -> Result<(), AnalyticsError> {
        self.depth += 1;
        if self.depth > MAX_NESTING {
            return Err(AnalyticsError::parse(
                self.pos(),
                &self.peek().shown(),
                &format!("nests the filter more than {MAX_NESTING} deep (parentheses and NOT)"),
            ));
        }
        self.at += 1;
        Ok(())
    }

    fn not(&mut self) -> Result<Expr, AnalyticsError> {
        if self.is_keyword("not") {
            self.enter()?;
            let e = self.not()?;
            self.depth -= 1;
            return Ok(Expr::Not(Box::new(e)));
        }
        if self.is_sym("(") {
            self.enter()?;
            let e = self.or()?;
            self.sym(")")?;
            self.depth -= 1;
            return Ok(e);
        }
        self.conditions += 1;
        if self.conditions > MAX_CONDITIONS {
            return Err(AnalyticsError::parse(
                self.pos(),
                &self.peek().shown(),
                &format!("is past the {MAX_CONDITIONS} conditions a filter may have"),
            ));
        }
        let column = self.ident("a column, NOT or '('")?;
        let negated = self.is_keyword("not");
        if negated {
            self.at += 1;
        }
        if self.is_keyword("in") {
            self.at += 1;
            self.sym("(")?;
            let mut values = vec![self.literal()?];
            while self.is_sym(",") {
                self.at += 1;
                if values.len() == MAX_IN_VALUES {
                    return Err(AnalyticsError::parse(
                        self.pos(),
                        &self.peek().shown(),
                        &format!("is past the {MAX_IN_VALUES} values an IN list may have"),
                    ));
                }
                values.push(self.literal()?);
            }
            self.sym(")")?;
            let e = Expr::In(column, values);
            return Ok(if negated { Expr::Not(Box::new(e)) } else { e });
        }
        if negated {
            return self.error("IN after NOT");
        }
        let op = match self.peek() {
            Tok::Sym("=") => CompareOp::Eq,
            Tok::Sym("<>") | Tok::Sym("!=") => CompareOp::Ne,
            Tok::Sym("<") => CompareOp::Lt,
            Tok::Sym("<=") => CompareOp::Le,
            Tok::Sym(">") => CompareOp::Gt,
            Tok::Sym(">=") => CompareOp::Ge,
            _ => return self.error("a comparison (=, <>, <, <=, >, >=) or IN"),
        };
        self.at += 1;
        Ok(Expr::Compare(column, op, self.literal()?))
    }
}

fn aggregate(name: &str, pos: usize, args: &[(Tok, usize)]) -> Result<Aggregate, AnalyticsError> {
    let lower = name.to_ascii_lowercase();
    let bad = |why: &str| Err(AnalyticsError::parse(pos, &format!("'{name}'"), why));
    let column = |i: usize| -> Result<String, AnalyticsError> {
        match args.get(i) {
            Some((Tok::Ident(c), _)) => Ok(c.clone()),
            Some((t, p)) => Err(AnalyticsError::parse(*p, &t.shown(), "expected a column")),
            None => Err(AnalyticsError::parse(
                pos,
                &format!("'{name}'"),
                &format!("expects a column as argument {}", i + 1),
            )),
        }
    };
    let count = |n: usize| -> Result<(), AnalyticsError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(AnalyticsError::parse(
                pos,
                &format!("'{name}'"),
                &format!("takes {n} argument(s), got {}", args.len()),
            ))
        }
    };
    let one = |make: fn(String) -> Aggregate| -> Result<Aggregate, AnalyticsError> {
        count(1)?;
        Ok(make(column(0)?))
    };
    match lower.as_str() {
        "count" => match args {
            [(Tok::Sym("*"), _)] | [] => Ok(Aggregate::Count),
            _ => bad("is count(*) (every row of the group is complete)"),
        },
        "sum" => one(Aggregate::Sum),
        "mean" | "avg" => one(Aggregate::Mean),
        "variance" | "var" => one(Aggregate::Variance),
        "stddev" | "std" => one(Aggregate::Stddev),
        "min" => one(Aggregate::Min),
        "max" => one(Aggregate::Max),
        "count_distinct" => one(Aggregate::CountDistinct),
        "histogram" => {
            let column = column(0)?;
            let bins = match args.get(1) {
                Some((Tok::Number(v), _)) if v.fract() == 0.0 && *v >= 1.0 && *v <= 65536.0 => {
                    *v as usize
                }
                Some((t, p)) => {
                    return Err(AnalyticsError::parse(
                        *p,
                        &t.shown(),
                        "expected a number of bins (1 to 65536)",
                    ));
                }
                None => return bad("takes a column and a number of bins"),
            };
            let hierarchical = match args.get(2) {
                None => false,
                Some((Tok::Text(t), _)) if t == "hierarchical" => true,
                Some((t, p)) => {
                    return Err(AnalyticsError::parse(
                        *p,
                        &t.shown(),
                        "expected 'hierarchical'",
                    ));
                }
            };
            if args.len() > 3 {
                return bad("takes at most 3 arguments");
            }
            if hierarchical && !(bins.is_power_of_two() && bins >= 2) {
                return bad("with 'hierarchical' needs a power of two of bins, at least 2");
            }
            Ok(Aggregate::Histogram {
                column,
                bins,
                hierarchical,
            })
        }
        "quantile" => {
            count(2)?;
            let column = column(0)?;
            match &args[1] {
                (Tok::Number(q), _) if (0.0..=1.0).contains(q) => {
                    Ok(Aggregate::Quantile(column, *q))
                }
                (t, p) => Err(AnalyticsError::parse(
                    *p,
                    &t.shown(),
                    "expected a quantile in [0, 1]",
                )),
            }
        }
        "corr" | "cov" => {
            if args.len() < 2 {
                return bad("takes at least two columns");
            }
            if args.len() > MAX_MATRIX_COLUMNS {
                return bad(&format!(
                    "takes at most {MAX_MATRIX_COLUMNS} columns (it was given {}): ask for \
                     smaller matrices",
                    args.len()
                ));
            }
            let columns = (0..args.len()).map(column).collect::<Result<Vec<_>, _>>()?;
            for (i, c) in columns.iter().enumerate() {
                if columns[..i].contains(c) {
                    return bad(&format!(
                        "names column '{c}' twice (corr of a column with itself is 1, and its \
                         cov is variance({c}))"
                    ));
                }
            }
            Ok(if lower == "corr" {
                Aggregate::Corr(columns)
            } else {
                Aggregate::Cov(columns)
            })
        }
        "crosstab" => {
            count(2)?;
            Ok(Aggregate::Crosstab(column(0)?, column(1)?))
        }
        _ => bad(
            "is not an aggregate (count, sum, mean, variance, stddev, histogram, quantile, min, \
             max, corr, cov, crosstab, count_distinct)",
        ),
    }
}

/// Parses a query.
pub fn parse(text: &str) -> Result<Query, AnalyticsError> {
    if text.len() > MAX_QUERY_BYTES {
        let position = text
            .char_indices()
            .take_while(|(i, _)| *i < MAX_QUERY_BYTES)
            .count()
            + 1;
        return Err(AnalyticsError::parse(
            position,
            "(the rest)",
            &format!(
                "is past the {MAX_QUERY_BYTES} bytes a query may have (it has {})",
                text.len()
            ),
        ));
    }
    let mut parser = Parser {
        toks: lex(text)?,
        at: 0,
        depth: 0,
        conditions: 0,
    };
    parser.query()
}
