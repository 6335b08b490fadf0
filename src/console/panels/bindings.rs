//! Bindings: the stored listen addresses and how each listener stands
//! (the address it got, or the OS error that kept it from opening).

use crate::console::app::App;
use crate::console::render::scroll_top;
use crate::console::theme::Theme;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

pub fn render(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let [table_area, help] =
        Layout::vertical([Constraint::Min(3), Constraint::Length(4)]).areas(area);
    let height = table_area.height.saturating_sub(3) as usize;
    let top = scroll_top(app.bindings_selected, height);
    let shown = app.binding_rows();
    let rows: Vec<Row> = shown
        .iter()
        .skip(top)
        .take(height)
        .map(|b| {
            let (state, style) = match app.listeners.iter().find(|l| l.binding.addr == b.addr) {
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
                app.config.bindings.len(),
                super::filtered(&app.filters.bindings, shown.len())
            ))
            .title_style(theme.title),
    );
    let mut state = TableState::default();
    if !shown.is_empty() {
        state.select(Some(app.bindings_selected.saturating_sub(top)));
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
        ]),
        help,
    );
}
