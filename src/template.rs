//! `target.template`: rendering a tenant's minijinja templates over secret
//! values, inside limits no template can get around.
//!
//! A template is written by whoever may create a RotatedSecret, and it runs
//! inside rotor next to every other tenant's work. So:
//! - the environment starts empty and gets only filters that cannot grow a
//!   string beyond a bound (no `range`, `namespace`, `center`, `indent` ...),
//!   and `replace`/`join` check the size of their result before building it;
//! - the `*` operator is refused before rendering: on strings and lists it
//!   repeats (`"x" * 100000000` is 100 MB per use), and nothing else a
//!   secret template needs uses it;
//! - fuel bounds the instructions a render may run (loops over a value's
//!   characters, however nested), and output is capped per key and in total,
//!   so the Secret always fits under Kubernetes' 1 MiB object limit;
//! - errors say which key, which kind of error and which line, never the
//!   detail: minijinja's details quote operands (`{{ pin // 0 }}` prints the
//!   number), and an encoded secret would get past any scrubber.
//!
//! The controller runs [`render`] on a blocking thread under [`TIME_LIMIT`].

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::time::Duration;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind, UndefinedBehavior};

/// Longest template source per key.
pub const MAX_SOURCE: usize = 16 * 1024;
/// Largest rendered value per key, and all keys together (raw bytes; base64
/// in the stored object adds a third, which still fits under 1 MiB).
pub const MAX_OUTPUT_PER_KEY: usize = 256 * 1024;
pub const MAX_OUTPUT_TOTAL: usize = 512 * 1024;
/// Instructions one key's render may run; real templates use a few dozen.
const FUEL: u64 = 100_000;
/// How long the controller waits for all keys of one object.
pub const TIME_LIMIT: Duration = Duration::from_secs(2);

/// A template problem, as shown in conditions, Events and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    pub key: String,
    /// A fixed description of the kind of problem; never holds values.
    pub what: String,
    pub line: Option<usize>,
}

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target.template[{}]: {}", self.key, self.what)?;
        if let Some(line) = self.line {
            write!(f, " at line {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for TemplateError {}

fn problem(key: &str, what: impl Into<String>) -> TemplateError {
    TemplateError {
        key: key.to_owned(),
        what: what.into(),
        line: None,
    }
}

/// Checks one template's source without any value: size, the `*` operator,
/// syntax. Syntax errors keep minijinja's detail, which can only quote the
/// template itself (the tenant's own spec), never a secret.
pub fn check(key: &str, source: &str) -> Result<(), TemplateError> {
    check_unsafe(key, source)?;
    sandbox()
        .template_from_str(source)
        .map(drop)
        .map_err(|e| syntax_error(key, &e))
}

/// The checks that need no parsing: size and the `*` operator.
fn check_unsafe(key: &str, source: &str) -> Result<(), TemplateError> {
    if source.len() > MAX_SOURCE {
        return Err(problem(
            key,
            format!("the template is longer than {MAX_SOURCE} bytes"),
        ));
    }
    if let Some(line) = star_operator_line(source) {
        return Err(TemplateError {
            line: Some(line),
            ..problem(
                key,
                "the * operator is not allowed in templates (it repeats strings to any size)",
            )
        });
    }
    Ok(())
}

/// A syntax error: minijinja's detail can only quote the template itself.
fn syntax_error(key: &str, e: &minijinja::Error) -> TemplateError {
    let mut what = e.kind().to_string();
    if let Some(detail) = e.detail() {
        what.push_str(": ");
        what.push_str(detail);
    }
    crate::api::conditions::truncate(&mut what, 200);
    TemplateError {
        line: e.line(),
        ..problem(key, what)
    }
}

/// Renders every template over the secret's top-level fields.
pub fn render(
    templates: &BTreeMap<String, String>,
    fields: &BTreeMap<String, serde_json::Value>,
) -> Result<BTreeMap<String, String>, TemplateError> {
    let env = sandbox();
    let ctx = Value::from_serialize(fields);
    let mut out = BTreeMap::new();
    let mut total = 0usize;
    for (key, source) in templates {
        // Parsed once: here, before any value is involved.
        check_unsafe(key, source)?;
        let template = env.template_from_str(source).map_err(|e| syntax_error(key, &e))?;
        let mut writer = Capped {
            buf: Vec::new(),
            limit: MAX_OUTPUT_PER_KEY.min(MAX_OUTPUT_TOTAL - total),
            over: false,
        };
        if let Err(e) = template.render_captured_to(&ctx, &mut writer) {
            return Err(render_error(key, &e, writer.over));
        }
        total += writer.buf.len();
        let text = String::from_utf8(writer.buf).map_err(|_| problem(key, "the output is not UTF-8"))?;
        out.insert(key.clone(), text);
    }
    Ok(out)
}

/// Kind and line only: the detail may quote values.
fn render_error(key: &str, e: &minijinja::Error, over: bool) -> TemplateError {
    let what = if over {
        format!(
            "the output is larger than {} KiB per key or {} KiB in all",
            MAX_OUTPUT_PER_KEY / 1024,
            MAX_OUTPUT_TOTAL / 1024
        )
    } else if e.kind() == ErrorKind::OutOfFuel {
        "the template runs too long (too many loop iterations)".to_owned()
    } else {
        e.kind().to_string()
    };
    TemplateError {
        line: e.line(),
        ..problem(key, what)
    }
}

/// A writer that fails once `limit` bytes would be exceeded.
struct Capped {
    buf: Vec<u8>,
    limit: usize,
    over: bool,
}

impl io::Write for Capped {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.over = true;
            return Err(io::Error::other("output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// An environment with only bounded filters and tests, strict undefined
/// (an undefined variable is an error, never an empty password) and fuel.
fn sandbox() -> Environment<'static> {
    use minijinja::{filters as f, tests as t};
    let mut env = Environment::empty();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.add_filter("default", f::default);
    env.add_filter("d", f::default);
    env.add_filter("upper", f::upper);
    env.add_filter("lower", f::lower);
    env.add_filter("capitalize", f::capitalize);
    env.add_filter("title", f::title);
    env.add_filter("trim", f::trim);
    env.add_filter("length", f::length);
    env.add_filter("first", f::first);
    env.add_filter("last", f::last);
    env.add_filter("string", f::string);
    env.add_filter("int", f::int);
    env.add_filter("items", f::items);
    env.add_filter("replace", replace);
    env.add_filter("join", join);
    env.add_test("defined", t::is_defined);
    env.add_test("undefined", t::is_undefined);
    env.add_test("none", t::is_none);
    env.add_test("string", t::is_string);
    env.add_test("number", t::is_number);
    env
}

fn too_large() -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, "result too large")
}

/// `replace` that refuses results over the per-key cap before building them
/// (an empty pattern inserts between every character).
fn replace(value: String, from: String, to: String) -> Result<String, minijinja::Error> {
    let hits = if from.is_empty() {
        value.chars().count() + 1
    } else {
        value.matches(from.as_str()).count()
    };
    let size = value.len().saturating_add(hits.saturating_mul(to.len()));
    if size > MAX_OUTPUT_PER_KEY {
        return Err(too_large());
    }
    Ok(value.replace(&from, &to))
}

/// `join` that stops as soon as the result passes the per-key cap.
fn join(value: Value, sep: Option<String>) -> Result<String, minijinja::Error> {
    let sep = sep.unwrap_or_default();
    let mut out = String::new();
    for (i, item) in value.try_iter()?.enumerate() {
        if i > 0 {
            out.push_str(&sep);
        }
        match item.as_str() {
            Some(s) => out.push_str(s),
            None => out.push_str(&item.to_string()),
        }
        if out.len() > MAX_OUTPUT_PER_KEY {
            return Err(too_large());
        }
    }
    Ok(out)
}

/// The line of the first `*` outside string literals inside `{{ }}` or
/// `{% %}`, if any. Conservative: a `*` in a raw block's tags counts too.
fn star_operator_line(source: &str) -> Option<usize> {
    let b = source.as_bytes();
    let line = |i: usize| source[..i].bytes().filter(|&c| c == b'\n').count() + 1;
    let (mut i, mut in_tag, mut quote) = (0, false, None::<u8>);
    while i < b.len() {
        let next = b.get(i + 1).copied();
        if !in_tag {
            match (b[i], next) {
                (b'{', Some(b'{' | b'%')) => {
                    in_tag = true;
                    i += 2;
                }
                (b'{', Some(b'#')) => {
                    // Comments hold no code.
                    i = source[i..].find("#}").map_or(b.len(), |end| i + end + 2);
                }
                _ => i += 1,
            }
            continue;
        }
        match (quote, b[i]) {
            (Some(_), b'\\') => i += 1,
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, c @ (b'\'' | b'"')) => quote = Some(c),
            (None, b'*') => return Some(line(i)),
            (None, b'}' | b'%') if next == Some(b'}') => {
                in_tag = false;
                i += 1;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields() -> BTreeMap<String, serde_json::Value> {
        serde_json::from_value(json!({
            "username": "app", "password": "Sup3r-Secret-Pw!", "port": 5432, "pin": 4711,
            "nested": {"inner": "Nested-Secret-77"}
        }))
        .unwrap()
    }

    fn one(source: &str) -> Result<String, TemplateError> {
        one_with(source, &fields())
    }

    fn one_with(source: &str, fields: &BTreeMap<String, serde_json::Value>) -> Result<String, TemplateError> {
        let templates = BTreeMap::from([("K".to_owned(), source.to_owned())]);
        render(&templates, fields).map(|mut m| m.remove("K").unwrap())
    }

    /// The error of a render that must fail; a success panics without
    /// printing the output (it may be huge, and is made of test secrets).
    fn failed(result: Result<impl Sized, TemplateError>, what: &str) -> String {
        match result {
            Ok(_) => panic!("{what}: rendered, expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn renders_ordinary_templates() {
        assert_eq!(
            one("postgres://{{ username }}:{{ password }}@db:{{ port }}").unwrap(),
            "postgres://app:Sup3r-Secret-Pw!@db:5432"
        );
        assert_eq!(one("{{ username | upper }}").unwrap(), "APP");
        assert_eq!(one("{{ missing | default('x') }}").unwrap(), "x");
        assert_eq!(one("{{ nested.inner | length }}").unwrap(), "16");
        assert_eq!(
            one("{{ password | replace('!', '') }}").unwrap(),
            "Sup3r-Secret-Pw"
        );
        assert_eq!(one("{% if password is defined %}y{% endif %}").unwrap(), "y");
        assert_eq!(one("{# a * b #}{{ 'a*b' }}").unwrap(), "a*b");
    }

    #[test]
    fn errors_never_carry_values() {
        let secrets = ["Sup3r-Secret-Pw!", "4711", "Nested-Secret-77", "5432"];
        for source in [
            "{{ pin // 0 }}",
            "{{ pin % 0 }}",
            "{{ password // 0 }}",
            "{{ password + 1 }}",
            "{{ nested.inner.x.y }}",
            "{{ nested + 1 }}",
            "{% for c in password %}{{ c // 0 }}{% endfor %}",
            "{% for c in password %}{% if c == 'S' %}{{ c ~ nested.inner ~ (c // 0) }}{% endif %}{% endfor %}",
            "{{ password | int }}",
            "{{ undefined_thing }}",
            "{{ password.foo }}",
            "{{ password[99] }}",
        ] {
            let err = failed(one(source), source);
            assert!(err.starts_with("target.template[K]: "), "{err}");
            for s in secrets {
                assert!(!err.contains(s), "{source}: {err}");
            }
            // Only the line number may be a number.
            let shown = err.split(" at line ").next().unwrap();
            assert!(!shown.contains(|c: char| c.is_ascii_digit()), "{source}: {err}");
        }
    }

    #[test]
    fn amplification_is_refused() {
        for (source, needle) in [
            ("{{ 'x' * 100000000 }}", "* operator"),
            ("{{ [password] * 100000000 | join }}", "* operator"),
            ("{{ 2 ** 64 }}", "* operator"),
            (
                "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}",
                "unknown function",
            ),
            ("{% set ns = namespace(s='x') %}{{ ns.s }}", "unknown function"),
            ("{{ password | center(100000000) }}", "unknown filter"),
            ("{{ password | indent(100000000) }}", "unknown filter"),
        ] {
            let err = failed(one(source), source);
            assert!(err.contains(needle), "{source}: {err}");
        }
    }

    #[test]
    fn replace_and_join_are_capped() {
        // Each level multiplies the length by ~17: the fourth passes the cap.
        let source = "{{ password | replace('', password | replace('', password | replace('', password | replace('', password)))) }}";
        let err = failed(one(source), "replace");
        assert!(err.contains("invalid operation"), "{err}");
        let mut fields = fields();
        fields.insert("parts".into(), json!(vec!["y".repeat(1000); 300]));
        let err = failed(one_with("{{ parts | join(password) }}", &fields), "join");
        assert!(err.contains("invalid operation"), "{err}");
    }

    #[test]
    fn loops_run_out_of_fuel() {
        let mut fields = fields();
        fields.insert("big".into(), json!("y".repeat(60_000)));
        let templates = BTreeMap::from([(
            "K".to_owned(),
            "{% for a in big %}{% for b in big %}{% endfor %}{% endfor %}".to_owned(),
        )]);
        let start = std::time::Instant::now();
        let err = failed(render(&templates, &fields), "fuel");
        assert!(err.contains("runs too long"), "{err}");
        assert!(start.elapsed() < TIME_LIMIT, "{:?}", start.elapsed());
    }

    #[test]
    fn output_is_capped_per_key_and_in_total() {
        let mut fields = fields();
        fields.insert("big".into(), json!("y".repeat(60_000)));
        let err = failed(
            one_with("{{ big }}{{ big }}{{ big }}{{ big }}{{ big }}", &fields),
            "per key",
        );
        assert!(err.contains("larger than"), "{err}");
        let templates: BTreeMap<String, String> = (0..3)
            .map(|i| (format!("k{i}"), "{{ big }}{{ big }}{{ big }}".to_owned()))
            .collect();
        let err = failed(render(&templates, &fields), "in total");
        assert!(err.contains("k2") && err.contains("larger than"), "{err}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Templates assembled from pieces of the language, over a secret:
        /// every render ends in output within the caps or a typed error that
        /// quotes no value, quickly; never a panic.
        #[test]
        fn any_template_stays_within_limits(pieces in proptest::collection::vec(proptest::sample::select(vec![
            "{{ ", " }}", "{% ", " %}", "for c in password", "for k, v in nested|items", "endfor", "if ", "else",
            "endif", "set x = ", "password", "pin", "nested.inner", "username", " ~ ", " // ", " % ", " + ", "0",
            "7", "'a'", "''", " | replace(", " | join(", " | upper", " | length", " | default(", ")", "(", ",",
            " * ", "range(9)", "namespace()", "{# ", " #}", "x", "
    ", "[", "]", "loop.index", " is defined",
        ]), 0..40)) {
            let source: String = pieces.concat();
            let start = std::time::Instant::now();
            match one(&source) {
                Ok(out) => proptest::prop_assert!(out.len() <= MAX_OUTPUT_PER_KEY),
                Err(e) => {
                    let shown = e.to_string();
                    for secret in ["Sup3r-Secret-Pw!", "Nested-Secret-77"] {
                        proptest::prop_assert!(!shown.contains(secret), "{}", shown);
                    }
                }
            }
            proptest::prop_assert!(start.elapsed() < TIME_LIMIT);
        }
    }

    #[test]
    fn star_scanner() {
        assert_eq!(star_operator_line("a * b"), None);
        assert_eq!(star_operator_line("{{ '*' ~ \"*\" }}"), None);
        assert_eq!(star_operator_line("{{ 'it\\'s *' }}"), None);
        assert_eq!(star_operator_line("x\n{{ a\n* 2 }}"), Some(3));
        assert_eq!(star_operator_line("{%- set a = b*2 -%}"), Some(1));
        assert_eq!(star_operator_line("{{ a }} * {{ b }}"), None);
    }

    #[test]
    fn syntax_errors_are_reported_before_any_value() {
        let err = check("K", "{{ password ").unwrap_err().to_string();
        assert!(err.starts_with("target.template[K]: syntax error"), "{err}");
        assert!(check("K", &"x".repeat(MAX_SOURCE + 1)).is_err());
    }
}
