//! One file per panel: each owns its state (what it shows, its filter,
//! its selection) and draws it; the app routes keys and effects.

pub mod bindings;
pub mod lists;
pub mod live;
pub mod log;
pub mod policy;
pub mod queue;
pub mod users;

use super::theme::Theme;
use super::traffic::LogLine;
use ratatui::text::{Line, Span};

/// Whether any of `fields` contains `filter` (lowercase), in any case.
pub fn row_matches<'a>(filter: &str, fields: impl IntoIterator<Item = &'a str>) -> bool {
    filter.is_empty()
        || fields
            .into_iter()
            .any(|f| f.to_lowercase().contains(filter))
}

/// ", 2 match \"x\"" after a list's count while `/` filters it.
pub fn filtered(filter: &str, shown: usize) -> String {
    if filter.is_empty() {
        String::new()
    } else {
        format!(", {shown} match {filter:?}")
    }
}

/// A log line as the Live tail and the Log panel show it.
pub fn log_line<'a>(line: &'a LogLine, theme: &Theme) -> Line<'a> {
    let error = line.kind == Some(crate::events::EventKind::Error);
    let style = if error {
        theme.error
    } else {
        theme.verdict(line.verdict)
    };
    Line::from(vec![
        Span::styled(super::render::clock(line.at_ms), theme.dim),
        Span::raw(" "),
        Span::styled(
            format!(
                "{:<8}",
                line.verdict
                    .map(|v| v.as_str())
                    .or(line.kind.map(|k| k.as_str()))
                    .unwrap_or("")
            ),
            style,
        ),
        Span::raw(" "),
        Span::styled(
            line.text.as_str(),
            if error { theme.error } else { theme.normal },
        ),
    ])
}
