//! Lists as text: what `list import` reads (CSV, TSV or one entry per line,
//! in any mix) and `list export` writes. The console's list editor
//! validates its lines with the same function.

use super::ip_pattern::{IpPattern, PatternError};
use std::collections::HashMap;

/// One entry found in imported text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedEntry {
    /// 1-based line the entry was found on.
    pub line: usize,
    pub text: String,
    pub pattern: IpPattern,
}

/// An entry that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedEntry {
    pub line: usize,
    pub error: PatternError,
}

/// Imported text, split into valid entries (first spelling of each address
/// set only), invalid ones, and in-text duplicates `(entry, kept spelling)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedList {
    pub entries: Vec<ParsedEntry>,
    pub invalid: Vec<SkippedEntry>,
    pub duplicates: Vec<(ParsedEntry, String)>,
}

/// Splits text on commas, semicolons, tabs, spaces and newlines; `#` starts
/// a comment to the end of the line; surrounding quotes are dropped.
pub fn parse_list_text(text: &str) -> ParsedList {
    let mut out = ParsedList::default();
    let mut seen: HashMap<IpPattern, String> = HashMap::new();
    for (i, raw_line) in text.lines().enumerate() {
        let line = raw_line.split('#').next().unwrap_or("");
        for field in line.split([',', ';', '\t', ' ']) {
            let field = field.trim().trim_matches(|c| c == '"' || c == '\'');
            if field.is_empty() {
                continue;
            }
            match IpPattern::parse(field) {
                Ok(pattern) => {
                    let entry = ParsedEntry {
                        line: i + 1,
                        text: field.to_string(),
                        pattern,
                    };
                    match seen.get(&entry.pattern) {
                        Some(first) => {
                            let first = first.clone();
                            out.duplicates.push((entry, first));
                        }
                        None => {
                            seen.insert(entry.pattern.clone(), entry.text.clone());
                            out.entries.push(entry);
                        }
                    }
                }
                Err(error) => out.invalid.push(SkippedEntry { line: i + 1, error }),
            }
        }
    }
    out
}

/// One entry per line, as `list export` writes.
pub fn format_list_text<S: AsRef<str>>(entries: &[S]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(e.as_ref());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_separators_duplicates_and_errors() {
        let text = "10.0.0.1,10.0.0.2\t192.168.*.*\n\"192.168.0.0/16\"; 300.1.1.1\n# comment\n\n::1 # loopback\n10.0.0.1";
        let p = parse_list_text(text);
        let texts: Vec<&str> = p.entries.iter().map(|e| e.text.as_str()).collect();
        assert_eq!(texts, ["10.0.0.1", "10.0.0.2", "192.168.*.*", "::1"]);
        assert_eq!(p.invalid.len(), 1);
        assert_eq!(p.invalid[0].line, 2);
        assert_eq!(p.invalid[0].error.entry, "300.1.1.1");
        assert_eq!(p.duplicates.len(), 2);
        assert_eq!(p.duplicates[0].0.text, "192.168.0.0/16");
        assert_eq!(p.duplicates[0].1, "192.168.*.*");
    }
}
