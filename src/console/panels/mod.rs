//! One file per panel: each owns its state (what it shows, its filter,
//! its selection) and draws it; the app routes keys and effects.

pub mod bindings;
pub mod limits;
pub mod lists;
pub mod live;
pub mod log;
pub mod policy;
pub mod queue;
pub mod users;

use super::action::{Effect, Panel};
use super::app::{Pending, ViewerSource};
use super::form::{Field, Form, FormPurpose};
use super::theme::Theme;
use super::traffic::LogLine;
use ratatui::text::{Line, Span};

/// What a panel's key asks of the app, which owns the popups, the status
/// line and the effects.
#[derive(Debug, Clone)]
pub enum Request {
    /// Nothing more: the key changed the panel's own state, or there was
    /// nothing to act on.
    Nothing,
    /// Open this form.
    Form(Form),
    /// Ask this first; a yes runs `pending`.
    Ask { question: String, pending: Pending },
    /// Say this on the status line.
    Say { ok: bool, text: String },
    /// Run these.
    Effects(Vec<Effect>),
    /// Open this in the reader.
    View(ViewerSource),
    /// Look for this story in the event log and show it.
    Trace(crate::console::action::TraceAsk),
}

impl Request {
    pub(crate) fn form(
        purpose: FormPurpose,
        title: impl Into<String>,
        fields: Vec<Field>,
    ) -> Request {
        Request::Form(Form::new(purpose, title, fields))
    }

    pub(crate) fn ask(question: impl Into<String>, pending: Pending) -> Request {
        Request::Ask {
            question: question.into(),
            pending,
        }
    }

    pub(crate) fn say(ok: bool, text: impl Into<String>) -> Request {
        Request::Say {
            ok,
            text: text.into(),
        }
    }
}

/// `/` on a list panel: the form that sets its filter.
pub fn filter_form(panel: Panel, current: &str) -> Request {
    Request::form(
        FormPurpose::PanelFilter(panel),
        "Filter the list",
        vec![Field::new("text", "rows containing this text; empty shows all").with_value(current)],
    )
}

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
