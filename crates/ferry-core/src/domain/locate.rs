//! Where in the file a problem is, and what it is in words: the line, column and field path
//! of every error (from the span toml gives, or by walking the path a validation problem
//! names), and the messages that say what is allowed instead of what serde expected.

use super::*;

/// The largest char boundary at or below `offset`, so slicing never panics on any input.
fn floor_boundary(text: &str, offset: usize) -> usize {
    let mut at = offset.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..floor_boundary(text, offset)];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn at_offset(text: &str, field: String, offset: usize, message: String) -> ConfigError {
    let (l, c) = line_col(text, offset);
    ConfigError { field, line: Some(l), column: Some(c), message }
}

/// Fills in line and column for each problem by walking its field path in the document; a
/// field the file leaves out (a default) gets the position of its nearest enclosing table.
pub(super) fn locate(text: &str, problems: &mut [ConfigError]) {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return;
    };
    for p in problems.iter_mut() {
        let (l, c) = line_col(text, span_of(&doc, &p.field).unwrap_or(0));
        p.line = Some(l);
        p.column = Some(c);
    }
}

/// Where `path` (`servers[1].services[0].health`) starts, or where the deepest part of it that
/// the text holds starts.
fn span_of(doc: &toml_edit::ImDocument<String>, path: &str) -> Option<usize> {
    use toml_edit::{Item, TableLike, Value};
    let mut table: &dyn TableLike = doc.as_table();
    let mut best = None;
    let mut segs = path.split('.').peekable();
    while let Some(seg) = segs.next() {
        let (key, index) = match seg.split_once('[') {
            Some((k, rest)) => (k, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (seg, None),
        };
        let Some((k, item)) = table.get_key_value(key) else {
            return best;
        };
        best = k.span().map(|s| s.start).or(best);
        let item: &Item = match index {
            None => item,
            Some(i) => match item {
                Item::ArrayOfTables(a) => {
                    let Some(t) = a.get(i) else {
                        return best;
                    };
                    best = t.span().map(|s| s.start).or(best);
                    table = t;
                    continue;
                }
                Item::Value(Value::Array(a)) => {
                    return a.get(i).and_then(|v| v.span()).map(|s| s.start).or(best);
                }
                _ => return best,
            },
        };
        if segs.peek().is_none() {
            return item.span().map(|s| s.start).or(best);
        }
        match item.as_table_like() {
            Some(t) => table = t,
            None => return best,
        }
    }
    best
}

/// `path.key`, with a key that is not a bare TOML key quoted.
fn join(path: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare { key.to_string() } else { format!("{key:?}") };
    if path.is_empty() {
        key
    } else {
        format!("{path}.{key}")
    }
}

/// toml's message on one line: its parser puts the context on a line of its own.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(": ")
}

/// A problem toml found: a syntax error, or a value serde refused.
pub(super) fn toml_problem(text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span().map(|s| floor_boundary(text, s.start)..floor_boundary(text, s.end.max(s.start)));
    let message = one_line(e.message());
    match text.parse::<toml_edit::ImDocument<String>>() {
        Ok(doc) => value_problem(text, &doc, span, &message),
        Err(_) => {
            let at = span.map_or(0, |s| s.start);
            at_offset(text, statement_field(text, at), at, explain_syntax(&message))
        }
    }
}

/// What a node of the document is, for saying what the file holds where a value was refused.
enum Kind<'a> {
    Key,
    Value(&'a toml_edit::Value),
    Table,
    Tables,
}

struct Node<'a> {
    path: String,
    span: std::ops::Range<usize>,
    kind: Kind<'a>,
}

/// Every key, value and table of the document with its path, parents before children.
fn walk<'a>(table: &'a dyn toml_edit::TableLike, path: &str, out: &mut Vec<Node<'a>>) {
    use toml_edit::Item;
    for (name, _) in table.iter() {
        let Some((key, item)) = table.get_key_value(name) else {
            continue;
        };
        let path = join(path, name);
        if let Some(span) = key.span() {
            out.push(Node { path: path.clone(), span, kind: Kind::Key });
        }
        match item {
            Item::None => {}
            Item::Value(v) => walk_value(v, &path, out),
            Item::Table(t) => {
                if let Some(span) = t.span() {
                    out.push(Node { path: path.clone(), span, kind: Kind::Table });
                }
                walk(t, &path, out);
            }
            Item::ArrayOfTables(a) => {
                if let Some(span) = a.span() {
                    out.push(Node { path: path.clone(), span, kind: Kind::Tables });
                }
                for (i, t) in a.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    if let Some(span) = t.span() {
                        out.push(Node { path: path.clone(), span, kind: Kind::Table });
                    }
                    walk(t, &path, out);
                }
            }
        }
    }
}

fn walk_value<'a>(v: &'a toml_edit::Value, path: &str, out: &mut Vec<Node<'a>>) {
    use toml_edit::Value;
    if let Some(span) = v.span() {
        out.push(Node { path: path.to_string(), span, kind: Kind::Value(v) });
    }
    match v {
        Value::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                walk_value(e, &format!("{path}[{i}]"), out);
            }
        }
        Value::InlineTable(t) => walk(t, path, out),
        _ => {}
    }
}

/// The node serde's error is about: the deepest one with exactly its span (serde reports the
/// span of the value, key or table it refused), else the deepest one holding its start.
fn node_at<'a>(nodes: &'a [Node<'a>], span: &std::ops::Range<usize>) -> Option<&'a Node<'a>> {
    nodes.iter().rev().find(|n| n.span == *span).or_else(|| {
        if span.is_empty() {
            return None; // an empty span no node has: the document as a whole
        }
        nodes.iter().rev().find(|n| n.span.start <= span.start && span.start < n.span.end)
    })
}

/// A value, key or table that serde refused, at its field path.
fn value_problem(
    text: &str,
    doc: &toml_edit::ImDocument<String>,
    span: Option<std::ops::Range<usize>>,
    message: &str,
) -> ConfigError {
    // The root table first: serde gives a key missing at the top the root's span.
    let mut nodes: Vec<Node<'_>> =
        doc.as_table().span().map(|span| Node { path: String::new(), span, kind: Kind::Table }).into_iter().collect();
    walk(doc.as_table(), "", &mut nodes);
    let span = span.unwrap_or(0..0);
    let node = node_at(&nodes, &span);
    let (mut path, mut offset) = node.map_or((String::new(), span.start), |n| (n.path.clone(), n.span.start));

    // A name refused inside an array (`candidate_machines = ["m1", "a b"]`) comes with the
    // array's span; the element is the one whose text the message quotes.
    if let Some(Node { kind: Kind::Value(toml_edit::Value::Array(a)), .. }) = node {
        let quoted = a.iter().enumerate().find_map(|(i, e)| match e {
            toml_edit::Value::String(s) if message.contains(&format!("{:?}", s.value())) => Some((i, e.span())),
            _ => None,
        });
        if let Some((i, elem_span)) = quoted {
            path = format!("{path}[{i}]");
            offset = elem_span.map_or(offset, |s| s.start);
        }
    }

    // serde's message formats (serde::de::Error's provided methods, toml_edit's enum access).
    let ticked = |s: &str| -> Vec<String> { s.split('`').skip(1).step_by(2).map(String::from).collect() };
    if let Some(rest) = message.strip_prefix("missing field `") {
        let key = rest.split('`').next().unwrap_or_default();
        let (field, message) = if path.is_empty() {
            (join("", key), "required key is missing: add it at the top level of the file".to_string())
        } else {
            (join(&path, key), "required key is missing: add it to this table".to_string())
        };
        return at_offset(text, field, offset, message);
    }
    if message.starts_with("unknown field `") {
        let allowed: Vec<String> = ticked(message).into_iter().skip(1).collect();
        let message = match allowed.len() {
            0 => "unknown key: no keys are allowed here".to_string(),
            1 => format!("unknown key: the only key allowed here is {}", allowed[0]),
            _ => format!("unknown key: the keys allowed here are {}", allowed.join(", ")),
        };
        return at_offset(text, path, offset, message);
    }
    if message.starts_with("unknown variant `") {
        let mut names = ticked(message);
        let got = if names.is_empty() { String::new() } else { names.remove(0) };
        let message = match names.len() {
            0 => format!("{got:?} is not allowed here"),
            1 => format!("{got:?} is not allowed here: use {}", names[0]),
            _ => format!("{got:?} is not allowed here: use one of {}", names.join(", ")),
        };
        return at_offset(text, path, offset, message);
    }
    let leaf = path.rsplit('.').next().unwrap_or_default().split('[').next().unwrap_or_default().to_string();
    let got = |serde_says: &str| match node.map(|n| &n.kind) {
        Some(Kind::Value(v)) => describe_value(v),
        Some(Kind::Table) => "a table".to_string(),
        Some(Kind::Tables) => "an array of tables".to_string(),
        Some(Kind::Key) | None => describe_unexpected(serde_says),
    };
    let expected_got = |expected: &str, unexpected: &str| {
        let mut m = format!(
            "expected {}, got {}",
            field_expects(&leaf).unwrap_or(&describe_expected(expected)),
            got(unexpected)
        );
        if matches!(node.map(|n| &n.kind), Some(Kind::Table)) && expected == "a sequence" {
            m.push_str(&format!(": write [[{leaf}]] above each entry"));
        }
        m
    };
    // toml's enum access: a choice is a string (`basis = "database"`), a choice with a value
    // a one-key table (`health = { tcp = "..." }`). Its messages do not name the choices.
    let choices = || {
        let names = choices_at(text, &span);
        if names.is_empty() {
            "a table with exactly one key naming the kind".to_string()
        } else {
            format!("a table with one of the keys {}", names.join(", "))
        }
    };
    let enum_message = match message {
        "wanted exactly 1 element, found 0 elements" => Some(format!("expected {}, got an empty table", choices())),
        "wanted exactly 1 element, more than 1 element" => {
            Some(format!("expected {}, got more than one key", choices()))
        }
        "invalid type: unit variant, expected newtype variant" => {
            Some(format!("expected {}, got {}", choices(), got("")))
        }
        "wanted string or table" => Some(match choices_at(text, &span) {
            names if names.is_empty() => format!("expected a string or a table, got {}", got("")),
            names => format!("expected one of {}, got {}", names.join(", "), got("")),
        }),
        _ => None,
    };
    if let Some(m) = enum_message {
        return at_offset(text, path, offset, m);
    }
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((unexpected, expected)) = message.strip_prefix(prefix).and_then(|r| r.rsplit_once(", expected ")) {
            return at_offset(text, path, offset, expected_got(expected, unexpected));
        }
    }
    // What the standard library says when a string does not parse as an address.
    let parsed = [
        ("invalid socket address syntax", "socket address"),
        ("invalid IPv4 address syntax", "IPv4 address"),
        ("invalid IPv6 address syntax", "IPv6 address"),
        ("invalid IP address syntax", "IP address"),
    ];
    if let Some((_, expected)) = parsed.iter().find(|(m, _)| message == *m) {
        return at_offset(text, path, offset, expected_got(expected, ""));
    }
    let message = match message {
        "" => "not a value this field accepts".to_string(),
        m => m.to_string(),
    };
    at_offset(text, path, offset, message)
}

/// The names a choice (an enum) at `span` allows: serde lists them only for a name it does
/// not know, so the file is read again with a name no choice has at that place.
fn choices_at(text: &str, span: &std::ops::Range<usize>) -> Vec<String> {
    if span.is_empty() {
        return Vec::new();
    }
    let probe = format!("{}\"\\u0000\"{}", &text[..span.start], &text[span.end..]);
    match toml::from_str::<Domain>(&probe) {
        Err(e) if e.message().starts_with("unknown variant `") => {
            e.message().split('`').skip(1).step_by(2).skip(1).map(String::from).collect()
        }
        _ => Vec::new(),
    }
}

/// What a field allows, where its type alone does not say it (the bound validation adds).
fn field_expects(leaf: &str) -> Option<&'static str> {
    match leaf {
        "health_check_periods_until_fencing" => Some("a whole number of periods, at least 2 (3 is the default)"),
        "netmask" => Some("a netmask, like \"255.255.255.0\""),
        _ => None,
    }
}

/// serde's name of the type it wanted, as an operator would write it.
fn describe_expected(expected: &str) -> String {
    let s = match expected {
        "u8" => "a whole number from 0 to 255",
        "u16" => "a whole number from 0 to 65535",
        "u32" => "a whole number from 0 to 4294967295",
        "u64" | "usize" => "a whole number, 0 or more",
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a string" | "a borrowed string" => "a string in quotes",
        "a boolean" => "true or false",
        "a sequence" => "an array",
        "a map" => "a table",
        "socket address" => "IP:PORT, like \"127.0.0.1:5556\"",
        "IPv4 address" => "an IPv4 address, like \"192.0.2.10\"",
        "IPv6 address" => "an IPv6 address, like \"2001:db8::10\"",
        "IP address" => "an IP address, like \"192.0.2.10\"",
        "newtype variant" | "unit variant" | "struct variant" | "tuple variant" => {
            "a table with exactly one key naming the kind"
        }
        e if e.starts_with("struct ") => "a table",
        e if e.starts_with("enum ") => "one of the names this field allows",
        e => e,
    };
    s.to_string()
}

/// What the file holds at a refused value.
fn describe_value(v: &toml_edit::Value) -> String {
    use toml_edit::Value;
    match v {
        Value::String(s) => format!("the string {:?}", s.value()),
        Value::Integer(i) => format!("the number {}", i.value()),
        Value::Float(f) => format!("the number {}", f.value()),
        Value::Boolean(b) => b.value().to_string(),
        Value::Datetime(d) => format!("the date-time {}", d.value()),
        Value::Array(_) => "an array".to_string(),
        Value::InlineTable(_) => "a table".to_string(),
    }
}

/// serde's own description of what it got (`string "x"`, ``integer `3` ``), when the document
/// has no node for it.
fn describe_unexpected(unexpected: &str) -> String {
    let untick = |s: &str| s.trim_matches('`').to_string();
    match unexpected.split_once(' ') {
        Some(("string", s)) => format!("the string {s}"),
        Some(("integer" | "floating", s)) => format!("the number {}", untick(s.trim_start_matches("point "))),
        Some(("boolean", s)) => untick(s),
        _ if unexpected == "map" => "a table".to_string(),
        _ if unexpected == "sequence" => "an array".to_string(),
        _ if unexpected.is_empty() => "something else".to_string(),
        _ => unexpected.to_string(),
    }
}

/// The field a syntax error is in: the table of the text before its statement, and the key
/// (or table header) its statement starts with.
fn statement_field(text: &str, at: usize) -> String {
    let at = floor_boundary(text, at);
    let mut start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    // A statement may span lines (an array); its start is the nearest line before which the
    // text still parses. Bounded, so a hostile file cannot make this quadratic for long.
    for _ in 0..32 {
        if let Ok(doc) = text[..start].parse::<toml_edit::ImDocument<String>>() {
            let table = current_table(&doc);
            let line = text[start..].lines().next().unwrap_or("").trim();
            let key_path = |k: &str| {
                let k = k.trim();
                let ok = !k.is_empty()
                    && k.split('.').all(|seg| {
                        !seg.is_empty() && seg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    });
                ok.then(|| k.to_string())
            };
            if let Some(header) = line.strip_prefix('[') {
                let name = header.trim_start_matches('[').split(']').next().unwrap_or("");
                return key_path(name).unwrap_or(table);
            }
            return match line.split_once('=').and_then(|(k, _)| key_path(k)) {
                Some(k) => k.split('.').fold(table, |p, seg| join(&p, seg)),
                None => table,
            };
        }
        if start == 0 {
            break;
        }
        start = text[..start - 1].rfind('\n').map_or(0, |i| i + 1);
    }
    String::new()
}

/// The path of the table the end of `doc` is in: the last table header, by position.
fn current_table(doc: &toml_edit::ImDocument<String>) -> String {
    let mut nodes = Vec::new();
    walk(doc.as_table(), "", &mut nodes);
    nodes
        .iter()
        .filter(|n| matches!(n.kind, Kind::Table))
        .max_by_key(|n| n.span.start)
        .map(|n| n.path.clone())
        .unwrap_or_default()
}

/// toml's syntax messages, with what to write instead where the message alone does not say.
fn explain_syntax(message: &str) -> String {
    if let Some(dup) = message.split(": ").find(|m| m.starts_with("duplicate key `")) {
        // "duplicate key `name` in table `servers`"
        return format!("{dup}: each key may be set once, remove one of them");
    }
    let hint = |m: &str, hint: &str| format!("{m}: {hint}");
    match message {
        "" => "not valid TOML here (a stray character or line ending?)".to_string(),
        m if m.starts_with("invalid basic string") => {
            hint(m, "a string ends with `\"` on the same line and holds no control characters")
        }
        m if m.starts_with("invalid literal string") => {
            hint(m, "a string ends with `'` on the same line and holds no control characters")
        }
        m if m.starts_with("invalid escape sequence") => hint(m, "write \\\\ for a backslash"),
        m if m.starts_with("invalid inline table") => hint(m, "an inline table ends with `}` on the same line"),
        m if m.starts_with("invalid string") => {
            hint(m, "a value must follow `=`, and a string needs quotes, like \"text\"")
        }
        "invalid key" => hint(message, "a line holds a key and a value (name = \"x\") or a table header ([[servers]])"),
        "expected `.`, `=`" => hint(message, "a key is followed by `=` (quote a key that holds spaces)"),
        "expected newline, `#`" => hint(message, "one key = value per line"),
        "number too large to fit in target type" => hint(message, "integers are at most 9223372036854775807"),
        m => m.to_string(),
    }
}
