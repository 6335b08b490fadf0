//! Users: the logins and the sender addresses each may use.
//!
//! The panel owns its view ([`UsersView`]): the `/` filter and the
//! selection, and its keys, which ask the app for a form or a question;
//! what is typed is saved through the store's functions, as the CLI's.

use super::Request;
use crate::console::action::{Command, Panel};
use crate::console::app::Pending;
use crate::console::form::{Field, FormPurpose};
use crate::console::io::ConfigView;
use crate::console::render::scroll_top;
use crate::console::theme::Theme;
use crate::policy::settings::AuthMode;
use crate::store::UserInfo;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table, TableState};

/// The Users panel's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsersView {
    /// What `/` filters by (lowercase; empty: every user).
    pub filter: String,
    /// Index into [`UsersView::rows`].
    pub selected: usize,
}

impl UsersView {
    /// The users shown: those whose name or a sender address contains
    /// the filter.
    pub fn rows<'a>(&self, users: &'a [UserInfo]) -> Vec<&'a UserInfo> {
        users
            .iter()
            .filter(|u| {
                super::row_matches(
                    &self.filter,
                    std::iter::once(u.name.as_str()).chain(u.addresses.iter().map(String::as_str)),
                )
            })
            .collect()
    }

    /// The user under the selection.
    pub fn selected_user<'a>(&self, users: &'a [UserInfo]) -> Option<&'a UserInfo> {
        self.rows(users).get(self.selected).copied()
    }

    /// The panel's keys: `a` adds a user, `p` sets a new password, `s`
    /// the sender addresses, `x` removes (after a question), `/` filters.
    pub fn command(&self, c: Command, users: &[UserInfo]) -> Request {
        let selected = self.selected_user(users);
        match (c, selected) {
            (Command::Add, _) => Request::form(
                FormPurpose::AddUser,
                "Add a user",
                vec![
                    Field::new("name", "the login, 1-128 printable characters, no spaces"),
                    Field::new("password", "stored only as an argon2id hash").masked(),
                    Field::new("again", "the same password once more").masked(),
                ],
            ),
            (Command::ResetPassword, Some(u)) => Request::form(
                FormPurpose::ResetPassword(u.name.clone()),
                format!("New password for {}", u.name),
                password_fields(),
            ),
            (Command::SenderAddresses, Some(u)) => Request::form(
                FormPurpose::SenderAddresses(u.name.clone(), u.addresses.clone()),
                format!("Sender addresses of {}", u.name),
                vec![
                    Field::new(
                        "addresses",
                        "user@domain or @domain, separated by spaces; empty: none",
                    )
                    .with_value(u.addresses.join(" ")),
                ],
            ),
            (Command::Remove, Some(u)) => Request::ask(
                format!("Remove user {} and its sender addresses?", u.name),
                Pending::RemoveUser(u.name.clone()),
            ),
            (Command::Search, _) => super::filter_form(Panel::Users, &self.filter),
            _ => Request::Nothing,
        }
    }

    /// `/`: shows the users containing `text` (lowercased here).
    pub fn set_filter(&mut self, text: &str) {
        self.filter = text.trim().to_lowercase();
        self.selected = 0;
    }

    /// Keeps the selection on a row that is shown.
    pub fn clamp(&mut self, users: &[UserInfo]) {
        let shown = self.rows(users).len();
        self.selected = self.selected.min(shown.saturating_sub(1));
    }
}

/// Draws the auth mode's meaning and the users.
pub fn render(frame: &mut Frame, area: Rect, view: &UsersView, config: &ConfigView, theme: &Theme) {
    let [info, table_area] =
        Layout::vertical([Constraint::Length(2), Constraint::Min(3)]).areas(area);
    let mode = match config.auth_mode {
        AuthMode::None => "auth mode none: AUTH is not offered, no one can log in".to_string(),
        AuthMode::AnyUser => "auth mode any-user: every user below may log in".to_string(),
        AuthMode::Specified => format!(
            "auth mode specified: only {} may log in",
            config.specified_user.as_deref().unwrap_or("?")
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
    let top = scroll_top(view.selected, height);
    let shown = view.rows(&config.users);
    let rows: Vec<Row> = shown
        .iter()
        .skip(top)
        .take(height)
        .map(|u| {
            let addresses = if u.addresses.is_empty() {
                "-".to_string()
            } else {
                u.addresses.join(", ")
            };
            match &u.suspended {
                // Shown first, in the error colour: it cannot log in.
                Some(why) => Row::new(vec![
                    u.name.clone(),
                    format!("SUSPENDED ({why}); {addresses}"),
                ])
                .style(theme.error),
                None => Row::new(vec![u.name.clone(), addresses]),
            }
        })
        .collect();
    let table = Table::new(rows, [Constraint::Length(24), Constraint::Fill(1)])
        .header(Row::new(["user", "sender addresses"]).style(theme.title))
        .row_highlight_style(theme.selected)
        .block(
            Block::bordered()
                .title(format!(
                    " Users: {}{} ",
                    config.users.len(),
                    super::filtered(&view.filter, shown.len())
                ))
                .title_style(theme.title),
        );
    let mut state = TableState::default();
    if !shown.is_empty() {
        state.select(Some(view.selected.saturating_sub(top)));
    }
    frame.render_stateful_widget(table, table_area, &mut state);
}

/// A new password, twice.
pub fn password_fields() -> Vec<Field> {
    vec![
        Field::new("password", "stored only as an argon2id hash").masked(),
        Field::new("again", "the same password once more").masked(),
    ]
}
