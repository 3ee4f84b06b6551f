//! Chat templates: the Jinja templates models ship (rendered the way HF transformers
//! renders them) and a built-in Llama 3 format, on minijinja.

use std::fmt::Write as _;

use indexmap::IndexMap;
use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, State, Value};

use crate::error::{Error, Result};

const TEMPLATE_NAME: &str = "chat_template";
/// Context key carrying the render-time clock to `strftime_now`.
const CLOCK_KEY: &str = "__lljx_clock__";

/// Meta's Llama 3 chat format: BOS, then per message a role header, the stripped
/// content and `<|eot_id|>`, then the assistant header when a reply is wanted.
pub const LLAMA3_TEMPLATE: &str = r#"{{- '<|begin_of_text|>' }}
{%- for message in messages %}
    {%- if message['content'] is string %}
        {%- set content = message['content'] %}
    {%- else %}
        {%- set ns = namespace(text='') %}
        {%- for part in message['content'] %}
            {%- if part['type'] == 'text' %}{% set ns.text = ns.text + part['text'] %}{% endif %}
        {%- endfor %}
        {%- set content = ns.text %}
    {%- endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + (content | trim) + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}"#;

/// Plain data a template can see: what JSON holds, with map order kept.
#[derive(Clone, Debug, PartialEq)]
pub enum Data {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Data>),
    Map(Vec<(String, Data)>),
}

impl From<Data> for Value {
    fn from(data: Data) -> Value {
        match data {
            Data::None => Value::from(()),
            Data::Bool(b) => Value::from(b),
            Data::Int(i) => Value::from(i),
            Data::Float(f) => Value::from(f),
            Data::Str(s) => Value::from(s),
            Data::List(items) => {
                Value::from(items.into_iter().map(Value::from).collect::<Vec<_>>())
            }
            Data::Map(pairs) => Value::from(
                pairs
                    .into_iter()
                    .map(|(k, v)| (Value::from(k), Value::from(v)))
                    .collect::<IndexMap<_, _>>(),
            ),
        }
    }
}

/// The moment `strftime_now` reports, in local time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    pub unix_seconds: i64,
    pub utc_offset_seconds: i64,
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

/// The message a template passed to `raise_exception`, kept apart from engine errors.
#[derive(Debug)]
struct Raised(String);

impl std::fmt::Display for Raised {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Raised {}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn template_error(err: minijinja::Error) -> Error {
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        if let Some(raised) = s.downcast_ref::<Raised>() {
            return Error::Template(format!(
                "chat template raised an exception: {}",
                one_line(&raised.0)
            ));
        }
        source = s.source();
    }
    Error::Template(format!(
        "chat template error: {}",
        one_line(&err.to_string())
    ))
}

impl ChatTemplate {
    /// Compiles `source`, or the built-in Llama 3 format when it is None.
    pub fn new(source: Option<&str>, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        // As transformers configures Jinja for chat templates.
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .map_err(template_error)?,
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.unwrap_or(LLAMA3_TEMPLATE).to_owned())
            .map_err(template_error)?;
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders `messages` (a list of maps). `extra` adds or overrides template variables.
    pub fn render(
        &self,
        messages: Data,
        add_generation_prompt: bool,
        extra: Vec<(String, Data)>,
        clock: Clock,
    ) -> Result<String> {
        let mut ctx: IndexMap<Value, Value> = IndexMap::new();
        // transformers always defines tools and documents, as None when not given.
        ctx.insert("tools".into(), Value::from(()));
        ctx.insert("documents".into(), Value::from(()));
        ctx.insert("bos_token".into(), Value::from(self.bos_token.as_str()));
        ctx.insert("eos_token".into(), Value::from(self.eos_token.as_str()));
        for (k, v) in extra {
            ctx.insert(Value::from(k), Value::from(v));
        }
        ctx.insert("messages".into(), Value::from(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        ctx.insert(
            CLOCK_KEY.into(),
            Value::from(vec![clock.unix_seconds, clock.utc_offset_seconds]),
        );
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(template_error)?;
        template.render(Value::from(ctx)).map_err(template_error)
    }
}

fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(
        minijinja::Error::new(ErrorKind::InvalidOperation, message.clone())
            .with_source(Raised(message)),
    )
}

fn strftime_now(state: &State, format: &str) -> std::result::Result<Value, minijinja::Error> {
    let clock = state
        .lookup(CLOCK_KEY)
        .and_then(|v| {
            Some((
                i64::try_from(v.get_item_by_index(0).ok()?).ok()?,
                i64::try_from(v.get_item_by_index(1).ok()?).ok()?,
            ))
        })
        .ok_or_else(|| {
            minijinja::Error::new(ErrorKind::InvalidOperation, "strftime_now has no clock")
        })?;
    Ok(Value::from(strftime(format, clock.0 + clock.1, clock.1)))
}

/// Gregorian date of a day count since 1970-01-01 (works for any i64 range we meet).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

const WEEKDAYS: [&str; 7] = [
    "Sunday",
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
];
const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// C-locale strftime of a local time given as seconds since the epoch.
pub fn strftime(format: &str, local_seconds: i64, utc_offset_seconds: i64) -> String {
    let days = local_seconds.div_euclid(86_400);
    let secs = local_seconds.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (secs / 3600, secs / 60 % 60, secs % 60);
    let weekday = (days + 4).rem_euclid(7) as usize;
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let before: [i64; 12] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334];
    let yday = before[month as usize - 1] + i64::from(day) + i64::from(leap && month > 2);
    let hour12 = if hour % 12 == 0 { 12 } else { hour % 12 };

    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // glibc's "-" flag drops the zero padding.
        let unpadded = chars.peek() == Some(&'-');
        if unpadded {
            chars.next();
        }
        let num = |n: i64, width: usize| {
            if unpadded {
                n.to_string()
            } else {
                format!("{n:0width$}")
            }
        };
        let Some(d) = chars.next() else {
            out.push('%');
            break;
        };
        let piece = match d {
            'a' => WEEKDAYS[weekday][..3].to_owned(),
            'A' => WEEKDAYS[weekday].to_owned(),
            'b' | 'h' => MONTHS[month as usize - 1][..3].to_owned(),
            'B' => MONTHS[month as usize - 1].to_owned(),
            'd' => num(i64::from(day), 2),
            'e' => {
                if unpadded {
                    day.to_string()
                } else {
                    format!("{day:>2}")
                }
            }
            'm' => num(i64::from(month), 2),
            'y' => num(year.rem_euclid(100), 2),
            'Y' => year.to_string(),
            'H' => num(hour, 2),
            'I' => num(hour12, 2),
            'M' => num(minute, 2),
            'S' => num(second, 2),
            'j' => num(yday, 3),
            'p' => (if hour < 12 { "AM" } else { "PM" }).to_owned(),
            'w' => weekday.to_string(),
            'u' => (if weekday == 0 { 7 } else { weekday }).to_string(),
            'z' => {
                let sign = if utc_offset_seconds < 0 { '-' } else { '+' };
                let off = utc_offset_seconds.abs();
                format!("{sign}{:02}{:02}", off / 3600, off / 60 % 60)
            }
            'F' => format!("{year}-{month:02}-{day:02}"),
            'D' | 'x' => format!("{month:02}/{day:02}/{:02}", year.rem_euclid(100)),
            'T' | 'X' => format!("{hour:02}:{minute:02}:{second:02}"),
            'R' => format!("{hour:02}:{minute:02}"),
            'c' => format!(
                "{} {} {day:>2} {hour:02}:{minute:02}:{second:02} {year}",
                &WEEKDAYS[weekday][..3],
                &MONTHS[month as usize - 1][..3]
            ),
            'n' => "\n".to_owned(),
            't' => "\t".to_owned(),
            '%' => "%".to_owned(),
            other => format!("%{}{other}", if unpadded { "-" } else { "" }),
        };
        out.push_str(&piece);
    }
    out
}

/// How `tojson` lays out JSON, with Python's `json.dumps` options.
struct JsonStyle {
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
    ensure_ascii: bool,
}

/// `tojson` as transformers defines it: `json.dumps` without HTML escaping.
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match (v.as_str(), i64::try_from(v.clone())) {
            (Some(s), _) => Some(s.to_owned()),
            // Bounded so a template cannot make us allocate without limit.
            (None, Ok(n)) if n <= 1024 => Some(" ".repeat(n.max(0) as usize)),
            _ => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be a str or an int up to 1024",
                ))
            }
        },
    };
    let separators: Option<Value> = kwargs.get("separators")?;
    let (item_sep, key_sep) = match separators.filter(|v| !v.is_none()) {
        Some(v) => {
            let part = |i| {
                v.get_item_by_index(i)
                    .ok()
                    .and_then(|s| s.as_str().map(str::to_owned))
            };
            match (part(0), part(1)) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(minijinja::Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be two strings",
                    ))
                }
            }
        }
        None => (
            (if indent.is_some() { "," } else { ", " }).to_owned(),
            ": ".to_owned(),
        ),
    };
    let style = JsonStyle {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_json(&mut out, value, &style, 0)?;
    Ok(Value::from_safe_string(out))
}

fn not_json(what: impl std::fmt::Display) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("tojson: {what} is not JSON serializable"),
    )
}

fn newline(out: &mut String, style: &JsonStyle, depth: usize) {
    if let Some(indent) = &style.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json(
    out: &mut String,
    value: &Value,
    style: &JsonStyle,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    match value.kind() {
        ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number if value.is_integer() => write!(out, "{value}").unwrap_or(()),
        ValueKind::Number => out.push_str(&py_float_repr(f64::try_from(value.clone())?)),
        ValueKind::String => {
            write_json_str(out, value.as_str().unwrap_or_default(), style.ensure_ascii)
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_container(out, style, depth, '[', ']', &items, |out, item| {
                write_json(out, item, style, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut pairs = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                let name = match key.kind() {
                    ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
                    ValueKind::None => "null".to_owned(),
                    ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
                    ValueKind::Number if key.is_integer() => key.to_string(),
                    ValueKind::Number => py_float_repr(f64::try_from(key.clone())?),
                    _ => return Err(not_json(format_args!("a map key of kind {}", key.kind()))),
                };
                pairs.push((name, item));
            }
            if style.sort_keys {
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
            }
            write_container(out, style, depth, '{', '}', &pairs, |out, (name, item)| {
                write_json_str(out, name, style.ensure_ascii);
                out.push_str(&style.key_sep);
                write_json(out, item, style, depth + 1)
            })?;
        }
        kind => return Err(not_json(format_args!("a value of kind {kind}"))),
    }
    Ok(())
}

fn write_container<T>(
    out: &mut String,
    style: &JsonStyle,
    depth: usize,
    open: char,
    close: char,
    items: &[T],
    mut write_item: impl FnMut(&mut String, &T) -> std::result::Result<(), minijinja::Error>,
) -> std::result::Result<(), minijinja::Error> {
    out.push(open);
    if !items.is_empty() {
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.push_str(&style.item_sep);
            }
            newline(out, style, depth + 1);
            write_item(out, item)?;
        }
        newline(out, style, depth);
    }
    out.push(close);
    Ok(())
}

fn write_json_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !(' '..='~').contains(&c)) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: shortest round-trip digits, exponent form outside 1e-4..1e16.
pub fn py_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return (if f > 0.0 { "Infinity" } else { "-Infinity" }).into();
    }
    let sci = format!("{f:e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let (sign, mantissa) = mantissa
        .strip_prefix('-')
        .map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if (-4..16).contains(&exp) {
        let point = exp + 1;
        if point <= 0 {
            format!("{sign}0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!(
                "{sign}{digits}{}.0",
                "0".repeat(point as usize - digits.len())
            )
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{sign}{int}.{frac}")
        }
    } else {
        let (first, rest) = digits.split_at(1);
        let frac = if rest.is_empty() {
            String::new()
        } else {
            format!(".{rest}")
        };
        let esign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{first}{frac}e{esign}{:02}", exp.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOON: Clock = Clock {
        unix_seconds: 1_721_822_400,
        utc_offset_seconds: 0,
    }; // 2024-07-24 12:00 UTC

    fn msg(role: &str, content: &str) -> Data {
        Data::Map(vec![
            ("role".into(), Data::Str(role.into())),
            ("content".into(), Data::Str(content.into())),
        ])
    }

    fn render(source: Option<&str>, messages: Vec<Data>, gen: bool) -> Result<String> {
        ChatTemplate::new(source, "<s>", "</s>")?.render(Data::List(messages), gen, vec![], NOON)
    }

    #[test]
    fn builtin_llama3_format() {
        let out = render(
            None,
            vec![msg("system", "Be brief. "), msg("user", "\nHi")],
            true,
        )
        .unwrap();
        assert_eq!(
            out,
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>\
             <|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>\
             <|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let out = render(None, vec![msg("user", "Hi")], false).unwrap();
        assert!(out.ends_with("Hi<|eot_id|>"));
    }

    #[test]
    fn python_methods_and_transformers_whitespace() {
        let src = "{% for m in messages %}\n  {% if m.content.strip().startswith('x') %}{{ m['role'].upper() }}{% endif %}\n{% endfor %}{{ bos_token }}";
        let out = render(
            Some(src),
            vec![msg("user", "  xy "), msg("bot", "no")],
            true,
        )
        .unwrap();
        assert_eq!(out, "USER<s>");
    }

    #[test]
    fn errors_are_one_line() {
        let err = render(Some("{% for x in %}"), vec![], true)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("chat template error: syntax error"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let err = render(
            Some("{{ raise_exception('Roles must\nalternate') }}"),
            vec![],
            true,
        )
        .unwrap_err();
        assert_eq!(
            err,
            Error::Template("chat template raised an exception: Roles must alternate".into())
        );
    }

    #[test]
    fn extra_variables_and_clock() {
        let t = ChatTemplate::new(
            Some("{{ name }} {{ strftime_now('%d %b %Y %H:%M %j %a') }} {{ tools is none }}"),
            "",
            "",
        )
        .unwrap();
        let out = t
            .render(
                Data::List(vec![]),
                true,
                vec![("name".into(), Data::Str("x".into()))],
                NOON,
            )
            .unwrap();
        assert_eq!(out, "x 24 Jul 2024 12:00 206 Wed True");
    }

    #[test]
    fn strftime_matches_known_dates() {
        // 2000-02-29 23:59:59 (a leap day) and 1969-12-31 (before the epoch).
        assert_eq!(
            strftime("%Y-%m-%d %H:%M:%S %j %A %-d %e", 951_868_799, 0),
            "2000-02-29 23:59:59 060 Tuesday 29 29"
        );
        assert_eq!(
            strftime("%F %I %p %y %B %%", -1, 0),
            "1969-12-31 11 PM 69 December %"
        );
        assert_eq!(strftime("%z", 0, -5 * 3600 - 1800), "-0530");
    }

    #[test]
    fn tojson_follows_python_json_dumps() {
        let data = Data::Map(vec![
            (
                "b".into(),
                Data::List(vec![
                    Data::Int(1),
                    Data::Float(2.5),
                    Data::None,
                    Data::Bool(true),
                ]),
            ),
            ("a".into(), Data::Str("é\"\n<".into())),
            ("c".into(), Data::Map(vec![])),
        ]);
        let t = |src: &str| {
            ChatTemplate::new(Some(src), "", "")
                .unwrap()
                .render(
                    Data::List(vec![]),
                    false,
                    vec![("d".into(), data.clone())],
                    NOON,
                )
                .unwrap()
        };
        assert_eq!(
            t("{{ d | tojson }}"),
            r#"{"b": [1, 2.5, null, true], "a": "é\"\n<", "c": {}}"#
        );
        assert_eq!(
            t("{{ d | tojson(sort_keys=true, ensure_ascii=true) }}"),
            r#"{"a": "\u00e9\"\n<", "b": [1, 2.5, null, true], "c": {}}"#
        );
        assert_eq!(
            t("{{ d.b | tojson(indent=2) }}"),
            "[\n  1,\n  2.5,\n  null,\n  true\n]"
        );
    }

    #[test]
    fn float_repr_is_pythons() {
        for (f, s) in [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (-0.0, "-0.0"),
            (1.5e300, "1.5e+300"),
            (123.456, "123.456"),
        ] {
            assert_eq!(py_float_repr(f), s);
        }
    }
}
