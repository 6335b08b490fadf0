//! One file per panel; each draws from the app state only.

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

/// A log line as the Live tail and the Log panel show it.
pub fn log_line<'a>(line: &'a LogLine, theme: &Theme) -> Line<'a> {
    let verdict = line.verdict.as_deref();
    let style = if line.kind == "error" {
        theme.error
    } else {
        theme.verdict(verdict)
    };
    Line::from(vec![
        Span::styled(super::render::clock(line.at_ms), theme.dim),
        Span::raw(" "),
        Span::styled(
            format!("{:<8}", verdict.unwrap_or(line.kind.as_str())),
            style,
        ),
        Span::raw(" "),
        Span::styled(
            line.text.as_str(),
            if line.kind == "error" {
                theme.error
            } else {
                theme.normal
            },
        ),
    ])
}
