//! Channel-name templates (`unit:{unit}`) and SQL with named `{param}` placeholders.
//!
//! A channel name is parsed back into the parameters its template binds; SQL placeholders become the driver's
//! bind markers (`$1` on PostgreSQL, `?` on MySQL/MariaDB and SQLite). Values are always bound, never spliced.

use std::collections::BTreeMap;

/// A parsed template or SQL piece.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text kept as is.
    Text(String),
    /// A named parameter.
    Param(String),
}

/// Parameter values by name, as parsed from a channel name or a query string.
pub type Params = BTreeMap<String, String>;

/// Why a template or a SQL text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `{` without a matching `}`, or a name that is not an identifier.
    #[error(
        "bad placeholder {0:?}: placeholders are {{name}} with name made of letters, digits and _"
    )]
    BadPlaceholder(String),
    /// Two placeholders with nothing between them cannot be told apart in a channel name.
    #[error("placeholders {{{0}}} and {{{1}}} must be separated by text")]
    Adjacent(String, String),
    /// A name appears twice in a channel template.
    #[error("placeholder {{{0}}} appears twice")]
    Repeated(String),
    /// The fixed text holds a character channel names may not contain.
    #[error("text {0:?} cannot appear in a channel name")]
    BadText(String),
}

fn is_ident(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A channel-name template: fixed text and `{name}` placeholders. A placeholder matches a non-empty run of
/// characters other than `:`, so `{unit}` and `hourly:{unit}` never claim the same channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelTemplate {
    source: String,
    pieces: Vec<Piece>,
}

impl ChannelTemplate {
    /// Parses and checks a template.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError::BadPlaceholder(rest[open..].to_owned()))?;
            let name = &after[..close];
            if !is_ident(name) {
                return Err(TemplateError::BadPlaceholder(format!("{{{name}}}")));
            }
            if let Some(Piece::Param(prev)) = pieces.last() {
                return Err(TemplateError::Adjacent(prev.clone(), name.to_owned()));
            }
            if pieces.contains(&Piece::Param(name.to_owned())) {
                return Err(TemplateError::Repeated(name.to_owned()));
            }
            pieces.push(Piece::Param(name.to_owned()));
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_owned()));
        }
        for p in &pieces {
            if let Piece::Text(t) = p
                && (t.contains('}')
                    || t.chars()
                        .any(|c| !(c.is_alphanumeric() || " _-.:@#+=,~!".contains(c))))
            {
                return Err(TemplateError::BadText(t.clone()));
            }
        }
        Ok(Self {
            source: template.to_owned(),
            pieces,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Placeholder names, in order.
    pub fn params(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Param(n) => Some(n.as_str()),
            Piece::Text(_) => None,
        })
    }

    /// The channel pattern (`*` for each placeholder) covering every channel this template can name.
    pub fn glob(&self) -> String {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Param(_) => "*",
            })
            .collect()
    }

    /// The parameters `channel` binds, or `None` if the template does not name it.
    pub fn bind(&self, channel: &str) -> Option<Params> {
        let mut params = Params::new();
        matches(&self.pieces, channel, &mut params).then_some(params)
    }
}

/// Backtracking match: a placeholder takes a non-empty, `:`-free run, shortest first.
fn matches(pieces: &[Piece], text: &str, params: &mut Params) -> bool {
    match pieces.split_first() {
        None => text.is_empty(),
        Some((Piece::Text(t), rest)) => text
            .strip_prefix(t.as_str())
            .is_some_and(|tail| matches(rest, tail, params)),
        Some((Piece::Param(name), rest)) => {
            let run = text.find(':').unwrap_or(text.len());
            let ends = text[..run]
                .char_indices()
                .map(|(i, c)| i + c.len_utf8())
                .collect::<Vec<_>>();
            for end in ends {
                if matches(rest, &text[end..], params) {
                    // A value with surrounding spaces cannot come from a valid name part; keep it as given.
                    params.insert(name.clone(), text[..end].to_owned());
                    return true;
                }
            }
            false
        }
    }
}

/// Bind-marker style of a database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Markers {
    /// `($1::text)`, `($2::text)`…; a repeated name reuses its number.
    Numbered,
    /// `?` for each occurrence, values repeated in order.
    Question,
}

/// SQL with `{name}` placeholders, found outside string literals, quoted identifiers and comments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlTemplate {
    pieces: Vec<Piece>,
}

impl SqlTemplate {
    /// Splits `sql` into text and placeholders; a trailing `;` is dropped (the query is wrapped or prepared alone).
    pub fn parse(sql: &str) -> Result<Self, TemplateError> {
        let sql = sql.trim_end().trim_end_matches(';').trim_end();
        let b = sql.as_bytes();
        let mut pieces = Vec::new();
        let mut text_start = 0;
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                q @ (b'\'' | b'"' | b'`') => i = skip_quoted(b, i, q),
                b'-' if b.get(i + 1) == Some(&b'-') => {
                    i = b[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(b.len(), |p| i + p)
                }
                b'/' if b.get(i + 1) == Some(&b'*') => {
                    i = find(b, i + 2, b"*/").map_or(b.len(), |p| p + 2)
                }
                b'$' => i = skip_dollar(sql, i),
                b'{' => {
                    let close = sql[i..]
                        .find('}')
                        .map(|p| i + p)
                        .ok_or_else(|| TemplateError::BadPlaceholder(sql[i..].to_owned()))?;
                    let name = &sql[i + 1..close];
                    if !is_ident(name) {
                        return Err(TemplateError::BadPlaceholder(format!("{{{name}}}")));
                    }
                    if text_start < i {
                        pieces.push(Piece::Text(sql[text_start..i].to_owned()));
                    }
                    pieces.push(Piece::Param(name.to_owned()));
                    i = close + 1;
                    text_start = i;
                }
                _ => i += 1,
            }
        }
        if text_start < sql.len() {
            pieces.push(Piece::Text(sql[text_start..].to_owned()));
        }
        Ok(Self { pieces })
    }

    /// Distinct parameter names, in order of first use.
    pub fn params(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            if let Piece::Param(n) = p
                && !out.contains(&n.as_str())
            {
                out.push(n);
            }
        }
        out
    }

    /// The SQL with bind markers, and the parameter names in binding order.
    pub fn render(&self, markers: Markers) -> (String, Vec<String>) {
        let mut sql = String::new();
        let mut order: Vec<String> = Vec::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => sql.push_str(t),
                Piece::Param(n) => match markers {
                    Markers::Numbered => {
                        let idx = match order.iter().position(|o| o == n) {
                            Some(i) => i + 1,
                            None => {
                                order.push(n.clone());
                                order.len()
                            }
                        };
                        // Typed text explicitly: otherwise PostgreSQL infers the type from the context
                        // (`{day}::date`) and rejects the text value sent for it. Casts in the SQL convert.
                        sql.push_str(&format!("(${idx}::text)"));
                    }
                    Markers::Question => {
                        order.push(n.clone());
                        sql.push('?');
                    }
                },
            }
        }
        (sql, order)
    }
}

fn find(b: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    b.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// Index after a quoted run starting at `start`; a doubled quote or a backslash escape stays inside.
fn skip_quoted(b: &[u8], start: usize, q: u8) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if b[i] == b'\\' && q != b'"' {
            i += 2;
        } else if b[i] == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Index after a PostgreSQL dollar-quoted string (`$tag$…$tag$`) starting at `start`, or after the `$` alone.
fn skip_dollar(sql: &str, start: usize) -> usize {
    let b = sql.as_bytes();
    let tag_end = b[start + 1..]
        .iter()
        .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
        .map(|p| start + 1 + p);
    match tag_end {
        Some(e) if b[e] == b'$' && !b[start + 1..e].first().is_some_and(u8::is_ascii_digit) => {
            let tag = &b[start..=e];
            find(b, e + 1, tag).map_or(b.len(), |p| p + tag.len())
        }
        _ => start + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_templates_bind_parameters() {
        let t = ChannelTemplate::parse("unit:{unit}").unwrap();
        assert_eq!(t.glob(), "unit:*");
        assert_eq!(t.bind("unit:Final 1A").unwrap()["unit"], "Final 1A");
        assert!(t.bind("unit:").is_none());
        assert!(t.bind("other:x").is_none());
        let bare = ChannelTemplate::parse("{unit}").unwrap();
        assert_eq!(bare.bind("Final 1A").unwrap()["unit"], "Final 1A");
        assert!(bare.bind("hourly:Final 1A").is_none());
        let two = ChannelTemplate::parse("line:{line}:{unit}").unwrap();
        let p = two.bind("line:L1:U-2").unwrap();
        assert_eq!((p["line"].as_str(), p["unit"].as_str()), ("L1", "U-2"));
        let dash = ChannelTemplate::parse("{a}-{b}").unwrap();
        let p = dash.bind("x-y-z").unwrap();
        assert_eq!((p["a"].as_str(), p["b"].as_str()), ("x", "y-z"));
        assert!(matches!(
            ChannelTemplate::parse("{a}{b}"),
            Err(TemplateError::Adjacent(..))
        ));
        assert!(matches!(
            ChannelTemplate::parse("{a"),
            Err(TemplateError::BadPlaceholder(_))
        ));
        assert!(matches!(
            ChannelTemplate::parse("a/{b}"),
            Err(TemplateError::BadText(_))
        ));
        assert!(matches!(
            ChannelTemplate::parse("{a}:{a}"),
            Err(TemplateError::Repeated(_))
        ));
    }

    #[test]
    fn sql_placeholders_skip_literals_and_comments() {
        let t = SqlTemplate::parse(
            "select '{x}', \"{y}\", $t${z}$t$, $1::text /* {c} */ from t -- {d}\n where a = {unit} and b = {day}::date and c = {unit};",
        )
        .unwrap();
        assert_eq!(t.params(), vec!["unit", "day"]);
        let (pg, order) = t.render(Markers::Numbered);
        assert!(
            pg.ends_with("where a = ($1::text) and b = ($2::text)::date and c = ($1::text)"),
            "{pg}"
        );
        assert_eq!(order, vec!["unit", "day"]);
        let (my, order) = t.render(Markers::Question);
        assert!(
            my.ends_with("where a = ? and b = ?::date and c = ?"),
            "{my}"
        );
        assert_eq!(order, vec!["unit", "day", "unit"]);
        assert!(SqlTemplate::parse("select {bad name}").is_err());
        assert!(
            SqlTemplate::parse("select 'it''s {no}'")
                .unwrap()
                .params()
                .is_empty()
        );
    }
}
