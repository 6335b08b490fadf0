//! Bindings: the stored listen addresses and how each listener stands
//! (the address it got, or the OS error that kept it from opening).
//!
//! The panel owns its view ([`BindingsView`]): the `/` filter and the
//! selection, and its keys, which ask the app for a form or a question;
//! what is typed is saved through the store's functions, as the CLI's.

use super::Request;
use crate::bindings::Binding;
use crate::console::action::{Command, Panel};
use crate::console::app::Pending;
use crate::console::form::{Field, FormPurpose};
use crate::console::render::scroll_top;
use crate::console::theme::Theme;
use crate::engine::ListenerStatus;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState, Wrap};

/// The Bindings panel's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingsView {
    /// What `/` filters by (lowercase; empty: every binding).
    pub filter: String,
    /// Index into [`BindingsView::rows`].
    pub selected: usize,
}

impl BindingsView {
    /// The bindings shown, in stored order.
    pub fn rows<'a>(&self, bindings: &'a [Binding]) -> Vec<&'a Binding> {
        bindings
            .iter()
            .filter(|b| {
                super::row_matches(
                    &self.filter,
                    [b.addr.to_string().as_str(), b.kind.to_string().as_str()],
                )
            })
            .collect()
    }

    /// The binding under the selection.
    pub fn selected_binding(&self, bindings: &[Binding]) -> Option<Binding> {
        self.rows(bindings).get(self.selected).copied().copied()
    }

    /// The panel's keys: `a` adds, `e`/Enter edits, `x` removes (after a
    /// question), `/` filters.
    pub fn command(&self, c: Command, bindings: &[Binding]) -> Request {
        let selected = self.selected_binding(bindings);
        match (c, selected) {
            (Command::Add, _) => Request::form(
                FormPurpose::AddBinding,
                "Add a listen address",
                binding_fields("", "smtp"),
            ),
            (Command::Edit, Some(b)) => Request::form(
                FormPurpose::EditBinding(b.addr),
                format!("Edit binding {}", b.addr),
                binding_fields(&b.addr.to_string(), b.kind.as_str()),
            ),
            (Command::Remove, Some(b)) => Request::ask(
                format!(
                    "Stop listening on {} ({}) and remove the binding?",
                    b.addr, b.kind
                ),
                Pending::RemoveBinding(b.addr),
            ),
            (Command::Search, _) => super::filter_form(Panel::Bindings, &self.filter),
            _ => Request::Nothing,
        }
    }

    /// `/`: shows the bindings containing `text` (lowercased here).
    pub fn set_filter(&mut self, text: &str) {
        self.filter = text.trim().to_lowercase();
        self.selected = 0;
    }

    /// Keeps the selection on a row that is shown.
    pub fn clamp(&mut self, bindings: &[Binding]) {
        let shown = self.rows(bindings).len();
        self.selected = self.selected.min(shown.saturating_sub(1));
    }
}

/// Draws the stored bindings with their listeners' state.
pub fn render(
    frame: &mut Frame,
    area: Rect,
    view: &BindingsView,
    bindings: &[Binding],
    // `None`: the engine cannot be asked now (gone, or refusing us).
    listeners: Option<&[ListenerStatus]>,
    theme: &Theme,
) {
    let [table_area, help] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(4)]).areas(area);
    let height = table_area.height.saturating_sub(3) as usize;
    let top = scroll_top(view.selected, height);
    let shown = view.rows(bindings);
    let rows: Vec<Row> = shown
        .iter()
        .skip(top)
        .take(height)
        .map(|b| {
            let Some(listeners) = listeners else {
                return Row::new(vec![
                    ratatui::text::Text::raw(b.addr.to_string()),
                    ratatui::text::Text::raw(b.kind.to_string()),
                    ratatui::text::Text::styled(
                        "unknown: the engine is not reachable",
                        theme.warning,
                    ),
                ]);
            };
            let (state, style) = match listeners.iter().find(|l| l.binding.addr == b.addr) {
                Some(l) => match &l.bound {
                    Ok(addr) if l.binding.kind == b.kind => {
                        (format!("listening on {addr}"), theme.allowed)
                    }
                    Ok(_) => ("changing kind...".to_string(), theme.warning),
                    Err(e) => (format!("cannot listen: {e}"), theme.error),
                },
                None => ("not open (yet)".to_string(), theme.warning),
            };
            Row::new(vec![
                ratatui::text::Text::raw(b.addr.to_string()),
                ratatui::text::Text::raw(b.kind.to_string()),
                ratatui::text::Text::styled(state, style),
            ])
        })
        .collect();
    let table = Table::new(
        rows,
        [
            Constraint::Length(28),
            Constraint::Length(11),
            Constraint::Fill(1),
        ],
    )
    .header(Row::new(["address", "kind", "state"]).style(theme.title))
    .row_highlight_style(theme.selected)
    .block(
        Block::bordered()
            .title(format!(
                " Listen addresses: {}{} ",
                bindings.len(),
                super::filtered(&view.filter, shown.len())
            ))
            .title_style(theme.title),
    );
    let mut state = TableState::default();
    if !shown.is_empty() {
        state.select(Some(view.selected.saturating_sub(top)));
    }
    frame.render_stateful_widget(table, table_area, &mut state);
    frame.render_widget(
        Paragraph::new(vec![
            Line::styled(
                "smtp: STARTTLS offered · submission: AUTH before MAIL · smtps: implicit TLS",
                theme.dim,
            ),
            Line::styled(
                "A change is saved at once; the engine opens or closes the listener within a second.",
                theme.dim,
            ),
        ])
        // Wrapped, not cut mid-word on a narrow screen.
        .wrap(Wrap { trim: true }),
        help,
    );
}

fn binding_fields(addr: &str, kind: &str) -> Vec<Field> {
    vec![
        Field::new(
            "address",
            "ADDR:PORT, like 0.0.0.0:25 or [::1]:2525; port 0 picks a free port",
        )
        .with_value(addr),
        Field::new(
            "kind",
            "smtp (STARTTLS), submission (AUTH first) or smtps (TLS)",
        )
        .with_value(kind),
    ]
}
