//! Auth & restrictions: the auth mode, every switch, plaintext AUTH, the
//! local domains and the sender/recipient rules.
//!
//! The panel owns its view ([`PolicyView`]): its rows and the selection,
//! and its keys, which ask the app for a form, a question or a change,
//! saved through the store's functions, as the CLI's.

use super::Request;
use crate::console::action::{Command, Effect};
use crate::console::app::Pending;
use crate::console::form::{Field, FormPurpose};
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
    VerifyRecipients,
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
    /// AUTH, recipient verification, the local domains, the rules.
    pub fn rows(config: &ConfigView) -> Vec<PolicyRow> {
        let mut rows = vec![PolicyRow::AuthMode];
        rows.extend(
            SWITCH_KEYS
                .iter()
                .map(|&(key, help)| PolicyRow::Switch { key, help }),
        );
        rows.push(PolicyRow::PlaintextAuth);
        rows.push(PolicyRow::VerifyRecipients);
        rows.extend(config.domains.iter().cloned().map(PolicyRow::Domain));
        rows.extend((1..=config.rules.len()).map(PolicyRow::Rule));
        rows
    }

    /// The row under the selection.
    pub fn selected_row(&self, config: &ConfigView) -> Option<PolicyRow> {
        PolicyView::rows(config).into_iter().nth(self.selected)
    }

    /// The panel's keys: Enter/Space toggles a switch or picks the auth
    /// mode, `a` adds a local domain, `r` a rule, `x` removes either
    /// (after a question).
    pub fn command(&self, c: Command, config: &ConfigView) -> Request {
        match c {
            Command::Toggle => self.toggle(config),
            Command::Add => Request::form(
                FormPurpose::AddDomain,
                "Add a local domain",
                vec![Field::new(
                    "domain",
                    "mail for it is inbound/internal, e.g. example.com",
                )],
            ),
            Command::AddRule => Request::form(
                FormPurpose::AddRule,
                "Add a sender/recipient rule",
                vec![
                    Field::new(
                        "sender",
                        "pattern with * and a leading ! to negate, e.g. !*@example.com",
                    ),
                    Field::new("recipient", "pattern; * for any").with_value("*"),
                    Field::new("destination", "internal, external or any").with_value("any"),
                    Field::new("reject text", "the 550 reply text; empty: accept-and-stop"),
                    Field::new("position", "1 is evaluated first; empty: at the end"),
                ],
            ),
            Command::Remove => match self.selected_row(config) {
                Some(PolicyRow::Domain(d)) => Request::ask(
                    format!("Remove the local domain {d}?"),
                    Pending::RemoveDomain(d),
                ),
                Some(PolicyRow::Rule(n)) => {
                    let text = config
                        .rules
                        .get(n - 1)
                        .map(|r| r.to_string())
                        .unwrap_or_default();
                    Request::ask(format!("Remove rule #{n}: {text}?"), Pending::RemoveRule(n))
                }
                _ => Request::Say {
                    ok: false,
                    text: "select a local domain or a rule to remove it".into(),
                },
            },
            _ => Request::Nothing,
        }
    }

    fn toggle(&self, config: &ConfigView) -> Request {
        match self.selected_row(config) {
            Some(PolicyRow::AuthMode) => Request::ask(
                format!(
                    "Auth mode, now {}: n none (AUTH not offered) · a any user · s one specified login",
                    config.auth_mode.as_str()
                ),
                Pending::AuthMode,
            ),
            Some(PolicyRow::Switch { key, .. }) => {
                let on = !config.switches.get(key).unwrap_or(false);
                let mut after = config.switches;
                let _ = after.set(key, on);
                let before = config.switches.open_to_anyone();
                // One key press must not open the gateway to anyone
                // without a question.
                match after
                    .open_to_anyone()
                    .into_iter()
                    .find(|class| !before.contains(class))
                {
                    Some(class) => Request::ask(
                        format!(
                            "Turn {key} {}? Then {}",
                            if on { "on" } else { "off" },
                            crate::policy::settings::open_warning(class)
                        ),
                        Pending::SetSwitch {
                            key: key.to_string(),
                            on,
                        },
                    ),
                    None => Request::Effects(vec![Effect::SetSwitch {
                        key: key.to_string(),
                        on,
                    }]),
                }
            }
            Some(PolicyRow::PlaintextAuth) => Request::Effects(vec![Effect::SetServerSetting {
                key: "plaintext-auth".into(),
                value: if config.plaintext_auth { "off" } else { "on" }.into(),
            }]),
            Some(PolicyRow::VerifyRecipients) => Request::Effects(vec![Effect::SetServerSetting {
                key: "verify-recipients".into(),
                value: if config.verify_recipients {
                    "off"
                } else {
                    "on"
                }
                .into(),
            }]),
            Some(PolicyRow::Domain(_) | PolicyRow::Rule(_)) => Request::Say {
                ok: false,
                text: "a: add a domain, r: add a rule, x: remove the selected one".into(),
            },
            None => Request::Nothing,
        }
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
            PolicyRow::AuthMode => {
                let mut spans = vec![
                    Span::styled("auth mode ", theme.dim),
                    Span::styled(format!("{:<10}", config.auth_mode.as_str()), style_for(i)),
                ];
                if config.auth_mode == crate::policy::settings::AuthMode::Specified {
                    spans.push(Span::styled(
                        format!(
                            " login {}",
                            config.specified_user.as_deref().unwrap_or("(none stored)")
                        ),
                        theme.normal,
                    ));
                }
                settings.push(Line::from(spans))
            }
            PolicyRow::Switch { key, .. } => settings.push(Line::styled(
                format!("{} {key}", check(config.switches.get(key).unwrap_or(false))),
                style_for(i),
            )),
            PolicyRow::PlaintextAuth => settings.push(Line::styled(
                format!("{} plaintext-auth", check(config.plaintext_auth)),
                style_for(i),
            )),
            PolicyRow::VerifyRecipients => settings.push(Line::styled(
                format!("{} verify-recipients", check(config.verify_recipients)),
                style_for(i),
            )),
            PolicyRow::Domain(d) => {
                let text = if config.unrouted_domains.contains(d) && config.verify_recipients {
                    format!("{d}  (no route: its mail is held, unverified)")
                } else if config.unrouted_domains.contains(d) {
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
    // The same notes as `policy show`.
    for note in config.switches.notes() {
        settings.push(Line::styled(format!("note: {note}"), theme.warning));
    }
    for class in config.switches.open_to_anyone() {
        let text = crate::policy::settings::open_warning(class);
        settings.push(Line::styled(format!("warning: {text}"), theme.error));
    }
    frame.render_widget(
        Paragraph::new(settings)
            .wrap(ratatui::widgets::Wrap { trim: false })
            .block(
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
    // The auth mode, the switches, plaintext-auth, verify-recipients.
    let first_right = SWITCH_KEYS.len() + 3;
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
        Some(PolicyRow::AuthMode) => {
            "Enter: pick the auth mode: none, any-user or specified (one login)".to_string()
        }
        Some(PolicyRow::Switch { help, .. }) => (*help).to_string(),
        Some(PolicyRow::PlaintextAuth) => {
            "offer AUTH without TLS to non-loopback clients (passwords in clear!)".to_string()
        }
        Some(PolicyRow::VerifyRecipients) => {
            "ask a local domain's route whether it knows each recipient before taking its mail (550 5.1.1 if not)"
                .to_string()
        }
        Some(PolicyRow::Domain(_)) => {
            "mail for a local domain is inbound/internal; x removes".to_string()
        }
        Some(PolicyRow::Rule(_)) => "rules run after the relay controls; x removes".to_string(),
        None => String::new(),
    };
    frame.render_widget(Paragraph::new(Line::styled(what, theme.dim)), help);
}
