//! Queue: every message waiting for delivery, each recipient with its
//! state, attempts and last error.

use crate::console::app::App;
use crate::console::render::{age, scroll_top};
use crate::console::theme::Theme;
use crate::console::traffic::epoch_ms;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

pub fn render(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let now = epoch_ms(app.now) / 1000;
    let mut lines: Vec<Line> = Vec::new();
    let mut selected_line = 0;
    // The last line of the selected message: its whole block is brought
    // into view, not only its first line.
    let mut selected_end = 0;
    if let Some(e) = &app.queue_error {
        lines.push(Line::styled(e.clone(), theme.error));
    }
    if app.queue.is_empty() {
        lines.push(Line::styled("the queue is empty", theme.dim));
    }
    for (i, m) in app.queue.iter().enumerate() {
        let selected = i == app.queue_selected;
        if selected {
            selected_line = lines.len();
        }
        let sender = if m.sender.is_empty() {
            "<>".to_string()
        } else {
            format!("<{}>", m.sender)
        };
        let mut head = vec![
            Span::raw(format!("{}  ", m.id)),
            Span::styled(format!("age {}  ", age(now - m.received_at)), theme.dim),
            Span::raw(format!("{} bytes  from {sender}", m.size)),
        ];
        if m.held {
            head.push(Span::styled("  HELD", theme.warning));
        }
        if let Some(a) = app.in_flight.get(&m.id) {
            head.push(Span::styled(in_flight_text(a, now), theme.warning));
        }
        let head = Line::from(head);
        lines.push(if selected {
            head.style(theme.selected)
        } else {
            head
        });
        for r in &m.recipients {
            let when = if r.state != "queued" {
                String::new()
            } else if m.held {
                // Held: no attempt is due until it is released.
                ", held".to_string()
            } else if r.next_attempt <= now {
                ", next attempt now".to_string()
            } else {
                format!(", next in {}", age(r.next_attempt - now))
            };
            let style = match r.state.as_str() {
                "delivered" => theme.allowed,
                "failed" => theme.denied,
                _ => theme.normal,
            };
            lines.push(Line::from(vec![
                Span::raw("    "),
                Span::styled(format!("<{}> {}", r.address, r.state), style),
                Span::styled(format!(", {} attempts{when}", r.attempts), theme.dim),
            ]));
            if let Some(err) = &r.last_error {
                lines.push(Line::styled(
                    format!("      last error: {err}"),
                    theme.warning,
                ));
            }
        }
        if selected {
            selected_end = lines.len().saturating_sub(1);
        }
    }
    let height = area.height.saturating_sub(2) as usize;
    let top = scroll_top(selected_end, height).min(selected_line);
    let shown: Vec<Line> = lines.into_iter().skip(top).take(height).collect();
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::bordered()
                .title(format!(" Queue: {} messages ", app.queue.len()))
                .title_style(theme.title),
        ),
        area,
    );
}

/// "in flight 12s to mx.example (192.0.2.1:25)": an attempt under way.
pub fn in_flight_text(a: &crate::delivery::InFlightAttempt, now_secs: i64) -> String {
    let since = epoch_ms(a.since) / 1000;
    let to = match a.hosts.last() {
        Some(h) => format!(" to {h}"),
        None => " (finding the next hop)".into(),
    };
    format!("  IN FLIGHT for {}{to}", age(now_secs - since))
}
