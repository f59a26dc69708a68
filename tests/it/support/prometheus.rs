//! The Prometheus text exposition format, read the way Prometheus reads it (families with their
//! HELP, TYPE and samples; a histogram's series in its family), and `promtool`, Prometheus' own
//! checker, when it is installed (`.ci/run` installs it; without it the checks skip locally and
//! fail in CI).

use std::{
    collections::{BTreeMap, BTreeSet},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use super::skip_unless_ci;

/// `promtool`, when installed.
pub fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("promtool"))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip_unless_ci(
            "promtool checks (promtool is not on PATH)",
            "install it: apt-get install -y --no-install-recommends prometheus",
        );
    }
    found
}

/// Runs `promtool check metrics` on a scraped page; panics with its findings unless clean.
pub fn assert_promtool_clean(promtool: &Path, page: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(page.as_bytes())
        .expect("page written to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "promtool check metrics is not clean:\n{findings}\n--- page ---\n{page}"
    );
}

/// One metric family of a scraped page.
#[derive(Debug, Default)]
pub struct Family {
    /// The HELP text.
    pub help: Option<String>,
    /// The TYPE.
    pub kind: Option<String>,
    /// (sample name, labels as written between the braces, value)
    pub samples: Vec<(String, String, f64)>,
}

/// Parses the text exposition format into families (samples of a histogram go to its family).
pub fn parse(page: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in page.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.into()).or_default().help = Some(help.into());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line has a type");
            families.entry(name.into()).or_default().kind = Some(kind.into());
        } else if !line.starts_with('#') {
            let (series, value) = line.rsplit_once(' ').expect("sample has a value");
            let (name, labels) = match series.split_once('{') {
                Some((name, labels)) => (name, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| {
                    name.strip_suffix(suffix)
                        .filter(|base| families.get(*base).is_some_and(|f| f.kind.is_some()))
                })
                .unwrap_or(name);
            let value = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().expect("numeric sample value"),
            };
            families.entry(family.into()).or_default().samples.push((
                name.into(),
                labels.into(),
                value,
            ));
        }
    }
    families
}

/// The label names of one sample's label text, `le` left out.
pub fn label_names(labels: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = labels;
    while let Some((name, after)) = rest.split_once("=\"") {
        let name = name.trim_start_matches(',').trim();
        if name != "le" {
            names.insert(name.to_owned());
        }
        // Skip the quoted value, honouring escapes.
        let mut chars = after.char_indices();
        let mut end = after.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    chars.next();
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    names
}

/// The value of label `name` in one sample's label text.
pub fn label_value<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels
        .split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
        .map(|v| v.trim_end_matches('"'))
}
