//! Users: the logins and the sender addresses each may use.

use crate::console::app::App;
use crate::console::render::scroll_top;
use crate::console::theme::Theme;
use crate::policy::settings::AuthMode;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

pub fn render(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let [info, table_area] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(3)]).areas(area);
    let mode = match app.config.auth_mode {
        AuthMode::None => "auth mode none: AUTH is not offered, no one can log in".to_string(),
        AuthMode::AnyUser => "auth mode any-user: every user below may log in".to_string(),
        AuthMode::Specified => format!(
            "auth mode specified: only {} may log in",
            app.config.specified_user.as_deref().unwrap_or("?")
        ),
    };
    frame.render_widget(
        Paragraph::new(vec![
            Line::styled(mode, theme.normal),
            Line::styled(
                "sender addresses: what a login may send as (with sender-login-match on)",
                theme.dim,
            ),
        ]),
        info,
    );
    let height = table_area.height.saturating_sub(3) as usize;
    let top = scroll_top(app.users_selected, height);
    let shown = app.user_rows();
    let rows: Vec<Row> = shown
        .iter()
        .skip(top)
        .take(height)
        .map(|u| {
            Row::new(vec![
                u.name.clone(),
                if u.addresses.is_empty() {
                    "-".to_string()
                } else {
                    u.addresses.join(", ")
                },
            ])
        })
        .collect();
    let table = Table::new(rows, [Constraint::Length(24), Constraint::Fill(1)])
        .header(Row::new(["user", "sender addresses"]).style(theme.title))
        .row_highlight_style(theme.selected)
        .block(
            Block::bordered()
                .title(format!(
                    " Users: {}{} ",
                    app.config.users.len(),
                    super::filtered(&app.filters.users, shown.len())
                ))
                .title_style(theme.title),
        );
    let mut state = TableState::default();
    if !shown.is_empty() {
        state.select(Some(app.users_selected.saturating_sub(top)));
    }
    frame.render_stateful_widget(table, table_area, &mut state);
}
