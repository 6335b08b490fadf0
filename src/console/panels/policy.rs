//! Auth & restrictions: the auth mode, every switch, plaintext AUTH, the
//! local domains and the sender/recipient rules.
//!
//! The panel owns its view ([`PolicyView`]): its rows and the selection;
//! what a row does when toggled goes through the app's questions and the
//! store's functions, as the CLI's do.

use crate::console::io::ConfigView;
use crate::console::render::scroll_top;
use crate::console::theme::Theme;
use crate::policy::settings::SWITCH_KEYS;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

/// One row of the Auth & restrictions panel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyRow {
    AuthMode,
    Switch {
        key: &'static str,
        help: &'static str,
    },
    PlaintextAuth,
    Domain(String),
    /// A rule, numbered from 1.
    Rule(usize),
}

/// The Auth & restrictions panel's state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyView {
    /// Index into [`PolicyView::rows`].
    pub selected: usize,
}

impl PolicyView {
    /// The rows, top to bottom: the auth mode, the switches, plaintext
    /// AUTH, the local domains, the rules.
    pub fn rows(config: &ConfigView) -> Vec<PolicyRow> {
        let mut rows = vec![PolicyRow::AuthMode];
        rows.extend(
            SWITCH_KEYS
                .iter()
                .map(|&(key, help)| PolicyRow::Switch { key, help }),
        );
        rows.push(PolicyRow::PlaintextAuth);
        rows.extend(config.domains.iter().cloned().map(PolicyRow::Domain));
        rows.extend((1..=config.rules.len()).map(PolicyRow::Rule));
        rows
    }

    /// The row under the selection.
    pub fn selected_row(&self, config: &ConfigView) -> Option<PolicyRow> {
        PolicyView::rows(config).into_iter().nth(self.selected)
    }

    /// Keeps the selection on a row.
    pub fn clamp(&mut self, config: &ConfigView) {
        let rows = PolicyView::rows(config).len();
        self.selected = self.selected.min(rows.saturating_sub(1));
    }
}

fn check(on: bool) -> &'static str {
    if on { "[x]" } else { "[ ]" }
}

/// Draws the settings on the left, the domains and rules on the right,
/// and what the selected row means under them.
pub fn render(
    frame: &mut Frame,
    area: Rect,
    view: &PolicyView,
    config: &ConfigView,
    theme: &Theme,
) {
    let [columns, help] = Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(columns);
    let rows = PolicyView::rows(config);
    let style_for = |i: usize| {
        if i == view.selected {
            theme.selected
        } else {
            theme.normal
        }
    };
    let mut settings = Vec::new();
    let mut domains = Vec::new();
    let mut rules = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        match row {
            PolicyRow::AuthMode => settings.push(Line::from(vec![
                Span::styled("auth mode ", theme.dim),
                Span::styled(format!("{:<10}", config.auth_mode.as_str()), style_for(i)),
            ])),
            PolicyRow::Switch { key, .. } => settings.push(Line::styled(
                format!("{} {key}", check(config.switches.get(key).unwrap_or(false))),
                style_for(i),
            )),
            PolicyRow::PlaintextAuth => settings.push(Line::styled(
                format!("{} plaintext-auth", check(config.plaintext_auth)),
                style_for(i),
            )),
            PolicyRow::Domain(d) => {
                let text = if config.unrouted_domains.contains(d) {
                    format!("{d}  (no route: its mail is held)")
                } else {
                    d.clone()
                };
                domains.push(Line::styled(text, style_for(i)))
            }
            PolicyRow::Rule(n) => {
                let text = config
                    .rules
                    .get(n - 1)
                    .map(|r| r.to_string())
                    .unwrap_or_default();
                rules.push(Line::styled(format!("#{n} {text}"), style_for(i)));
            }
        }
    }
    frame.render_widget(
        Paragraph::new(settings).block(
            Block::bordered()
                .title(" Auth and switches ")
                .title_style(theme.title),
        ),
        left,
    );
    // Right column: domains, then rules, scrolled to keep the selection in view.
    let domain_count = domains.len();
    let mut right_lines = vec![Line::styled(
        format!("Local domains ({domain_count}), a adds:"),
        theme.title,
    )];
    if domains.is_empty() {
        right_lines.push(Line::styled(
            "  none: every recipient is external",
            theme.warning,
        ));
    }
    right_lines.extend(domains);
    right_lines.push(Line::styled(
        format!("Rules ({}), r adds, in order:", rules.len()),
        theme.title,
    ));
    if rules.is_empty() {
        right_lines.push(Line::styled("  none", theme.dim));
    }
    right_lines.extend(rules);
    let first_right = 11usize;
    let selected_line = if view.selected >= first_right {
        let k = view.selected - first_right;
        if k < domain_count {
            1 + k
        } else {
            2 + usize::from(domain_count == 0) + k
        }
    } else {
        0
    };
    let height = right.height.saturating_sub(2) as usize;
    let top = scroll_top(selected_line, height);
    let shown: Vec<Line> = right_lines.into_iter().skip(top).collect();
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::bordered()
                .title(" Domains and rules ")
                .title_style(theme.title),
        ),
        right,
    );
    let what = match rows.get(view.selected) {
        Some(PolicyRow::AuthMode) => "Enter: none -> any-user -> specified (one login)".to_string(),
        Some(PolicyRow::Switch { help, .. }) => (*help).to_string(),
        Some(PolicyRow::PlaintextAuth) => {
            "offer AUTH without TLS to non-loopback clients (passwords in clear!)".to_string()
        }
        Some(PolicyRow::Domain(_)) => {
            "mail for a local domain is inbound/internal; x removes".to_string()
        }
        Some(PolicyRow::Rule(_)) => "rules run after the relay controls; x removes".to_string(),
        None => String::new(),
    };
    frame.render_widget(Paragraph::new(Line::styled(what, theme.dim)), help);
}
