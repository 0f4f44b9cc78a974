//! Keeps `examples/grafana/airamp-dashboard.json` in step with the code:
//! every `airamp_*` series its queries use must be one that `render()`
//! actually emits, and every label it groups by must exist. A tiny JSON
//! reader (no serde) pulls the query strings out of the dashboard.

use std::collections::BTreeSet;

use super::render::{render, render_with};
use super::InfoLabels;

const DASHBOARD: &str = include_str!("../../examples/grafana/airamp-dashboard.json");

/// Just enough JSON for the dashboard: objects, arrays, strings, scalars.
#[derive(Debug)]
enum Json {
    Obj(Vec<(String, Json)>),
    Arr(Vec<Json>),
    Str(String),
    Scalar,
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at byte {}", c as char, self.i))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.ws();
        match self.s.get(self.i).copied() {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b'}') {
                    self.i += 1;
                    return Ok(Json::Obj(members));
                }
                loop {
                    self.ws();
                    let Json::Str(k) = self.value()? else {
                        return Err(format!("object key is not a string at byte {}", self.i));
                    };
                    self.eat(b':')?;
                    members.push((k, self.value()?));
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b'}') => {
                            self.i += 1;
                            return Ok(Json::Obj(members));
                        }
                        _ => return Err(format!("expected , or }} at byte {}", self.i)),
                    }
                }
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.s.get(self.i) == Some(&b']') {
                    self.i += 1;
                    return Ok(Json::Arr(items));
                }
                loop {
                    items.push(self.value()?);
                    self.ws();
                    match self.s.get(self.i) {
                        Some(b',') => self.i += 1,
                        Some(b']') => {
                            self.i += 1;
                            return Ok(Json::Arr(items));
                        }
                        _ => return Err(format!("expected , or ] at byte {}", self.i)),
                    }
                }
            }
            Some(b'"') => {
                self.i += 1;
                let mut out = Vec::new();
                loop {
                    match *self.s.get(self.i).ok_or("unterminated string")? {
                        b'"' => break,
                        b'\\' => {
                            self.i += 1;
                            match *self.s.get(self.i).ok_or("dangling escape")? {
                                b'u' => {
                                    let hex =
                                        self.s.get(self.i + 1..self.i + 5).ok_or("short \\u")?;
                                    let hex =
                                        std::str::from_utf8(hex).map_err(|e| e.to_string())?;
                                    let cp =
                                        u32::from_str_radix(hex, 16).map_err(|e| e.to_string())?;
                                    let ch = char::from_u32(cp).unwrap_or('\u{fffd}');
                                    out.extend_from_slice(ch.to_string().as_bytes());
                                    self.i += 4;
                                }
                                c @ (b'"' | b'\\' | b'/') => out.push(c),
                                b'n' => out.push(b'\n'),
                                b't' => out.push(b'\t'),
                                b'r' => out.push(b'\r'),
                                b'b' => out.push(8),
                                b'f' => out.push(12),
                                c => return Err(format!("bad escape \\{}", c as char)),
                            }
                        }
                        c if c < 0x20 => return Err("control character in string".into()),
                        c => out.push(c),
                    }
                    self.i += 1;
                }
                self.i += 1;
                String::from_utf8(out)
                    .map(Json::Str)
                    .map_err(|e| e.to_string())
            }
            Some(_) => {
                let start = self.i;
                while self.i < self.s.len()
                    && (self.s[self.i].is_ascii_alphanumeric() || b"+-.".contains(&self.s[self.i]))
                {
                    self.i += 1;
                }
                let tok = std::str::from_utf8(&self.s[start..self.i]).unwrap();
                if matches!(tok, "true" | "false" | "null") || tok.parse::<f64>().is_ok() {
                    Ok(Json::Scalar)
                } else {
                    Err(format!("bad token {tok:?} at byte {start}"))
                }
            }
            None => Err("unexpected end of input".into()),
        }
    }
}

fn parse(s: &str) -> Result<Json, String> {
    let mut r = Reader {
        s: s.as_bytes(),
        i: 0,
    };
    let v = r.value()?;
    r.ws();
    if r.i != r.s.len() {
        return Err(format!("trailing data at byte {}", r.i));
    }
    Ok(v)
}

/// String values of the given keys, anywhere in the tree.
fn strings_under<'a>(v: &'a Json, keys: &[&str], out: &mut Vec<&'a str>) {
    match v {
        Json::Obj(m) => {
            for (k, v) in m {
                if let (true, Json::Str(s)) = (keys.contains(&k.as_str()), v) {
                    out.push(s);
                }
                strings_under(v, keys, out);
            }
        }
        Json::Arr(a) => a.iter().for_each(|v| strings_under(v, keys, out)),
        Json::Str(_) | Json::Scalar => {}
    }
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b':'
}

/// Every `airamp_[a-z0-9_]+` identifier (whole identifiers only) in `s`.
fn airamp_idents(s: &str) -> Vec<&str> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(p) = s[from..].find("airamp_") {
        let start = from + p;
        let mut end = start + "airamp_".len();
        while end < b.len()
            && (b[end].is_ascii_lowercase() || b[end].is_ascii_digit() || b[end] == b'_')
        {
            end += 1;
        }
        let whole = (start == 0 || !ident_byte(b[start - 1]))
            && (end == b.len() || !ident_byte(b[end]))
            && end > start + "airamp_".len();
        if whole {
            out.push(&s[start..end]);
        }
        from = end;
    }
    out
}

/// Label names in `by (...)` / `without (...)` clauses.
fn grouping_labels(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    for kw in ["by", "without"] {
        let mut from = 0;
        while let Some(p) = expr[from..].find(kw) {
            let start = from + p;
            from = start + kw.len();
            if start > 0 && ident_byte(expr.as_bytes()[start - 1]) {
                continue;
            }
            let Some(rest) = expr[from..].trim_start().strip_prefix('(') else {
                continue;
            };
            let list = &rest[..rest.find(')').expect("unclosed grouping")];
            out.extend(list.split(',').map(str::trim).filter(|l| !l.is_empty()));
        }
    }
    out
}

/// The exposition text the dashboard is checked against: `render()`, plus
/// `airamp_info` as `render()` shows it once `start()` has run (not
/// necessarily in this test process; the labels' values are irrelevant here).
fn exposition() -> String {
    let mut text = render();
    if !text.contains("# TYPE airamp_info ") {
        let info = InfoLabels {
            version: "0.0.0".into(),
            git_sha: "x".into(),
            transport: "tcp".into(),
            nccl_abi: "x".into(),
            fp8: false,
        };
        text.push_str(&render_with(Some(&info), &[]));
    }
    text
}

/// Series names and label names that appear on sample lines.
fn series_and_labels(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut series = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap();
        series.insert(line[..name_end].to_string());
        if let Some(body) = line[name_end..].strip_prefix('{') {
            // Label values here are plain (no `="` inside them, except the
            // escaped test fixtures we do not use).
            for pair in body.split("\",") {
                if let Some(eq) = pair.find("=\"") {
                    labels.insert(pair[..eq].to_string());
                }
            }
        }
    }
    (series, labels)
}

#[test]
fn mini_json_reader_accepts_and_rejects() {
    assert!(parse(r#"{"a": [1, -2.5e3, true, null, "x\"\u0041"], "b": {}}"#).is_ok());
    for bad in [
        r#"{"a": 1,}"#,
        r#"{"a" 1}"#,
        r#"[1 2]"#,
        r#"{"a": tru}"#,
        "{} x",
        r#""abc"#,
    ] {
        assert!(parse(bad).is_err(), "{bad}");
    }
    assert_eq!(
        airamp_idents("rate(airamp_x_total{a=\"b\"}[1m]) / xairamp_y + airamp_fp8_z2"),
        ["airamp_x_total", "airamp_fp8_z2"]
    );
    assert_eq!(
        grouping_labels("sum by (instance, le) (x) + sum without(cause) (y) + bytes"),
        ["instance", "le", "cause"]
    );
}

#[test]
fn dashboard_uses_only_metrics_that_render_emits() {
    let dash = parse(DASHBOARD).unwrap_or_else(|e| panic!("dashboard is not valid JSON: {e}"));
    // Panel queries (`expr`) and template-variable queries (`query`,
    // `definition`).
    let mut exprs = Vec::new();
    strings_under(&dash, &["expr", "query", "definition"], &mut exprs);
    assert!(exprs.len() >= 10, "found only {} queries", exprs.len());

    let (series, labels) = series_and_labels(&exposition());
    let mut used = BTreeSet::new();
    for e in &exprs {
        for id in airamp_idents(e) {
            assert!(
                series.contains(id),
                "dashboard query uses {id}, which render() does not emit \
                 (histograms exist only as _bucket/_sum/_count)\nquery: {e}\nseries: {series:?}"
            );
            used.insert(id);
        }
        for l in grouping_labels(e) {
            // `instance` and `job` are added by Prometheus at scrape time.
            assert!(
                labels.contains(l) || l == "instance" || l == "job",
                "dashboard query groups by {l:?}, a label no airamp series has\nquery: {e}"
            );
        }
    }

    // Every family the exporter has is shown somewhere (new metrics should
    // get a panel, or be added here deliberately).
    let families: BTreeSet<&str> = series
        .iter()
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| s.strip_suffix(suf))
                .unwrap_or(s)
        })
        .collect();
    let shown: BTreeSet<&str> = used
        .iter()
        .map(|s| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suf| s.strip_suffix(suf))
                .unwrap_or(s)
        })
        .collect();
    let missing: Vec<_> = families.difference(&shown).collect();
    assert!(missing.is_empty(), "metrics without a panel: {missing:?}");

    // The datasource is a variable, so the dashboard imports anywhere.
    for needle in [
        "\"${DS_PROMETHEUS}\"",
        "\"type\": \"datasource\"",
        "\"name\": \"job\"",
        "\"name\": \"instance\"",
    ] {
        assert!(DASHBOARD.contains(needle), "dashboard lacks {needle}");
    }
}
