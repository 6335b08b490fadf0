//! Quotas & bans: the sending quotas with the keys nearest their limit,
//! the bans in force and the suspended logins, with keys to add a quota
//! or a ban and to remove a quota, lift a ban or a suspension.
//!
//! The panel owns its view ([`LimitsView`]); what it asks for is saved
//! through the same functions as `relaygate quota`, `ban` and `user
//! unsuspend`.

use super::Request;
use crate::abuse::bans::until_text;
use crate::console::action::Command;
use crate::console::app::Pending;
use crate::console::form::{Field, FormPurpose};
use crate::console::io::ConfigView;
use crate::console::render::scroll_top;
use crate::console::theme::Theme;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Wrap};

/// One selectable row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitsRow {
    /// A quota, by its number.
    Quota(i64),
    /// A ban in force, by its range.
    Ban(ipnet::IpNet),
    /// A suspended login.
    Suspended(String),
}

/// The panel's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LimitsView {
    /// Index into [`LimitsView::rows`].
    pub selected: usize,
}

impl LimitsView {
    /// Quotas, then bans, then suspended logins.
    pub fn rows(config: &ConfigView) -> Vec<LimitsRow> {
        let mut rows: Vec<LimitsRow> = config
            .quotas
            .iter()
            .map(|q| LimitsRow::Quota(q.id))
            .collect();
        rows.extend(config.bans.iter().map(|b| LimitsRow::Ban(b.net)));
        rows.extend(
            config
                .users
                .iter()
                .filter(|u| u.suspended.is_some())
                .map(|u| LimitsRow::Suspended(u.name.clone())),
        );
        rows
    }

    pub fn selected_row(&self, config: &ConfigView) -> Option<LimitsRow> {
        LimitsView::rows(config).into_iter().nth(self.selected)
    }

    /// `a` adds a quota, `b` bans an address, `x` removes the selected
    /// quota, lifts the selected ban or suspension (after a question).
    pub fn command(&self, c: Command, config: &ConfigView) -> Request {
        match c {
            Command::Add => Request::form(
                FormPurpose::AddQuota,
                "Add a sending quota",
                vec![
                    Field::new(
                        "per",
                        "login, sender-domain, ip (per address), ip/24 (per IPv4 /24) or ip/24/48",
                    )
                    .with_value("login"),
                    Field::new("at most", "N/PERIOD: 200/hour, 1000/day, 30/10m"),
                    Field::new("counting", "messages or recipients").with_value("messages"),
                    Field::new(
                        "suspend",
                        "yes: reaching it also suspends the login (login quotas); no: 452 only",
                    )
                    .with_value("no"),
                ],
            ),
            Command::AddBan => Request::form(
                FormPurpose::AddBan,
                "Ban an address or a range",
                vec![
                    Field::new("address", "203.0.113.7, 198.51.100.0/24 or 2001:db8::/48"),
                    Field::new("for", "90m, 12h, 7d or forever").with_value("7d"),
                    Field::new("note", "why (shown in the refusal and the list)"),
                ],
            ),
            Command::Remove => match self.selected_row(config) {
                Some(LimitsRow::Quota(id)) => {
                    let text = config
                        .quotas
                        .iter()
                        .find(|q| q.id == id)
                        .map(|q| q.to_string())
                        .unwrap_or_default();
                    Request::ask(format!("Remove quota {text}?"), Pending::RemoveQuota(id))
                }
                Some(LimitsRow::Ban(net)) => Request::ask(
                    format!("Lift the ban of {net}? (it also loses its strikes)"),
                    Pending::LiftBan(net),
                ),
                Some(LimitsRow::Suspended(name)) => Request::ask(
                    format!("Lift the suspension of {name}? (its quota counts start from zero)"),
                    Pending::Unsuspend(name),
                ),
                None => Request::Say {
                    ok: false,
                    text: "nothing selected: a adds a quota, b bans an address".into(),
                },
            },
            _ => Request::Nothing,
        }
    }

    pub fn clamp(&mut self, config: &ConfigView) {
        let n = LimitsView::rows(config).len();
        self.selected = self.selected.min(n.saturating_sub(1));
    }
}

/// Draws the three lists, one under the other, and the busiest keys.
pub fn render(
    frame: &mut Frame,
    area: Rect,
    view: &LimitsView,
    config: &ConfigView,
    theme: &Theme,
) {
    let now = crate::abuse::now_ms();
    let rows = LimitsView::rows(config);
    let style = |i: usize| {
        if i == view.selected {
            theme.selected
        } else {
            theme.normal
        }
    };
    let mut lines: Vec<Line> = Vec::new();
    // Which line each selectable row is on, to keep it in view.
    let mut row_line = Vec::new();
    lines.push(Line::styled(
        format!(
            "Sending quotas ({}): past one, 452 4.7.1 at RCPT",
            config.quotas.len()
        ),
        theme.title,
    ));
    if config.quotas.is_empty() {
        lines.push(Line::styled(
            "  none: a adds one (e.g. 200/hour per login)",
            theme.dim,
        ));
    }
    let mut i = 0;
    for q in &config.quotas {
        row_line.push(lines.len());
        lines.push(Line::styled(format!("  {q}"), style(i)));
        i += 1;
        for u in config
            .quota_usage
            .iter()
            .filter(|u| u.quota == q.id)
            .take(3)
        {
            let near = u.used * 10 >= u.limit * 9;
            lines.push(Line::styled(
                format!("      {:<40} {}/{}", u.key, u.used, u.limit),
                if near { theme.error } else { theme.dim },
            ));
        }
    }
    lines.push(Line::raw(""));
    lines.push(Line::styled(
        format!(
            "Bans in force ({}): refused at connect with 554 5.7.1",
            config.bans.len()
        ),
        theme.title,
    ));
    if config.bans.is_empty() {
        lines.push(Line::styled(
            "  none (automatic bans: policy set ban-auth-failures / ban-relay-denials; b bans by hand)",
            theme.dim,
        ));
    }
    for b in &config.bans {
        row_line.push(lines.len());
        lines.push(Line::styled(
            format!(
                "  {:<22} until {}  strike {}  {}",
                b.net.to_string(),
                until_text(b.until, now),
                b.strikes,
                b.reason
            ),
            style(i),
        ));
        i += 1;
    }
    lines.push(Line::raw(""));
    let suspended: Vec<_> = config
        .users
        .iter()
        .filter(|u| u.suspended.is_some())
        .collect();
    lines.push(Line::styled(
        format!("Suspended logins ({}): 525 5.7.13 at AUTH", suspended.len()),
        theme.title,
    ));
    if suspended.is_empty() {
        lines.push(Line::styled("  none", theme.dim));
    }
    for u in suspended {
        row_line.push(lines.len());
        let s = if i == view.selected {
            theme.selected
        } else {
            theme.error
        };
        lines.push(Line::styled(
            format!("  {:<22} {}", u.name, u.suspended.as_deref().unwrap_or("")),
            s,
        ));
        i += 1;
    }
    let [body] = Layout::vertical([Constraint::Min(3)]).areas(area);
    let height = body.height.saturating_sub(2) as usize;
    let at = row_line.get(view.selected).copied().unwrap_or(0);
    let top = if rows.is_empty() {
        0
    } else {
        scroll_top(at, height)
    };
    frame.render_widget(
        Paragraph::new(lines)
            .scroll((top as u16, 0))
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(" Quotas & bans ")),
        body,
    );
}
