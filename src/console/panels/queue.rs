//! Queue: every message waiting for delivery, each recipient with its
//! state, attempts and last error; above them the queue's shape (queued
//! recipients by domain and age, as Postfix's qshape), a `/` filter, and
//! marks for acting on many messages at once.
//!
//! The panel owns its state ([`QueueView`]): what it shows, the selection,
//! the filter and the marks; the app routes keys to it and turns what it
//! chooses into effects. Listing 100,000 messages costs one filter pass
//! when the queue is read (about once a second), and a frame draws only
//! the messages on screen.

use super::Request;
use crate::console::action::{Command, Effect, QueueOp};
use crate::console::app::Pending;
use crate::console::form::{Field, FormPurpose};
use crate::console::render::age;
use crate::console::theme::Theme;
use crate::console::traffic::epoch_ms;
use crate::delivery::InFlightAttempt;
use crate::queue_admin::{AGE_BUCKETS, QueueAction, QueueFilter, QueueShape, messages};
use crate::spool::QueueEntry;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::time::SystemTime;

/// The Queue panel's state.
#[derive(Debug, Clone, Default)]
pub struct QueueView {
    entries: Vec<QueueEntry>,
    pub error: Option<String>,
    /// Indexes into `entries` of the messages the filter shows.
    shown: Vec<usize>,
    /// Index into `shown`.
    pub selected: usize,
    /// The first shown message on screen (moved by drawing, so that the
    /// selected message's whole block is in view).
    top: Cell<usize>,
    /// The filter as typed; empty shows every message.
    pub filter: String,
    parsed: QueueFilter,
    pub marked: BTreeSet<String>,
    pub shape: QueueShape,
}

impl QueueView {
    /// The queue as read, at `now`: the filter, the shape and the marks
    /// follow it; the selection stays on its message if it is still there.
    pub fn load(&mut self, result: Result<Vec<QueueEntry>, String>, now: SystemTime) {
        match result {
            Ok(entries) => {
                let was = self.selected_entry().map(|e| e.id.clone());
                self.entries = entries;
                self.error = None;
                self.shape = QueueShape::of(&self.entries, epoch_ms(now) / 1000);
                let ids: std::collections::HashSet<&str> =
                    self.entries.iter().map(|e| e.id.as_str()).collect();
                self.marked.retain(|id| ids.contains(id.as_str()));
                self.refilter(now);
                if let Some(was) = was
                    && let Some(at) = self.shown.iter().position(|&i| self.entries[i].id == was)
                {
                    self.selected = at;
                }
            }
            Err(e) => self.error = Some(e),
        }
        self.clamp();
    }

    /// Shows only the messages whose sender, recipients or errors contain
    /// `text` (any case); empty shows all.
    pub fn set_filter(&mut self, text: &str, now: SystemTime) {
        self.filter = text.trim().to_string();
        self.selected = 0;
        self.top.set(0);
        self.refilter(now);
    }

    fn refilter(&mut self, now: SystemTime) {
        self.parsed = QueueFilter {
            text: (!self.filter.is_empty()).then(|| self.filter.to_lowercase()),
            ..Default::default()
        };
        let now = epoch_ms(now) / 1000;
        self.shown = (0..self.entries.len())
            .filter(|&i| self.parsed.takes(&self.entries[i], now))
            .collect();
        self.clamp();
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.shown.len().saturating_sub(1));
    }

    /// Every queued message (not only those shown).
    pub fn entries(&self) -> &[QueueEntry] {
        &self.entries
    }

    /// How many messages the filter shows.
    pub fn shown_len(&self) -> usize {
        self.shown.len()
    }

    pub fn selected_entry(&self) -> Option<&QueueEntry> {
        self.shown
            .get(self.selected)
            .and_then(|&i| self.entries.get(i))
    }

    /// `t`: the selected message's story.
    pub fn trace_query(&self) -> Option<crate::trace::TraceQuery> {
        self.selected_entry().map(|e| crate::trace::TraceQuery {
            id: Some(e.id.clone()),
            ..Default::default()
        })
    }

    /// Space: marks the selected message, or unmarks it.
    pub fn toggle_mark(&mut self) {
        if let Some(id) = self.selected_entry().map(|e| e.id.clone())
            && !self.marked.remove(&id)
        {
            self.marked.insert(id);
        }
    }

    /// `*`: marks every message shown; if all are marked already, unmarks
    /// them. Returns how many are marked now.
    pub fn mark_all_shown(&mut self) -> usize {
        let ids: Vec<String> = self
            .shown
            .iter()
            .map(|&i| self.entries[i].id.clone())
            .collect();
        if ids.iter().all(|id| self.marked.contains(id)) {
            for id in &ids {
                self.marked.remove(id);
            }
        } else {
            self.marked.extend(ids);
        }
        self.marked.len()
    }

    /// What an action takes: the marked messages, else the selected one.
    /// `true` with marks.
    pub fn targets(&self) -> (Vec<String>, bool) {
        if self.marked.is_empty() {
            (
                self.selected_entry()
                    .map(|e| e.id.clone())
                    .into_iter()
                    .collect(),
                false,
            )
        } else {
            (self.marked.iter().cloned().collect(), true)
        }
    }
}

impl QueueView {
    /// The panel's keys: `/` filters, Space and `*` mark, `r`/`h`/`u`
    /// retry, hold or release the marked messages (after a question) or
    /// the selected one, `d` deletes (after a question), `t` traces.
    pub fn command(&mut self, c: Command) -> Request {
        match c {
            Command::Search => Request::form(
                FormPurpose::QueueFilter,
                "Filter the queue",
                vec![
                    Field::new(
                        "text",
                        "in the sender, a recipient or domain, or an error; empty shows all",
                    )
                    .with_value(self.filter.clone()),
                ],
            ),
            Command::Mark => {
                self.toggle_mark();
                Request::Nothing
            }
            Command::MarkAll => {
                let n = self.mark_all_shown();
                Request::say(true, format!("{} marked", messages(n)))
            }
            Command::Retry | Command::Hold | Command::Release => {
                let action = match c {
                    Command::Retry => QueueAction::Retry,
                    Command::Hold => QueueAction::Hold,
                    _ => QueueAction::Release,
                };
                let (ids, marked) = self.targets();
                if ids.is_empty() {
                    return Request::Nothing;
                }
                let op = QueueOp {
                    action,
                    ids,
                    named: !marked,
                    busy: Default::default(),
                };
                if !marked {
                    return Request::Effects(vec![Effect::Queue(op), Effect::LoadQueue]);
                }
                let verb = match action {
                    QueueAction::Retry => "Retry",
                    QueueAction::Hold => "Hold",
                    _ => "Release",
                };
                Request::ask(
                    format!("{verb} the {} marked? (y/n)", messages(op.ids.len())),
                    Pending::QueueAction(op),
                )
            }
            Command::Delete => {
                let (ids, marked) = self.targets();
                let question = if marked {
                    format!(
                        "Delete the {} marked? b: delete and bounce to each sender, s: delete silently",
                        messages(ids.len())
                    )
                } else if let Some(e) = self.selected_entry() {
                    let sender = if e.sender.is_empty() {
                        "<>".to_string()
                    } else {
                        format!("<{}>", e.sender)
                    };
                    format!(
                        "Delete message {} from {sender}? b: delete and bounce to the sender, s: delete silently",
                        e.id
                    )
                } else {
                    return Request::Nothing;
                };
                Request::ask(
                    question,
                    Pending::DeleteMessages {
                        ids,
                        named: !marked,
                    },
                )
            }
            Command::Trace => self
                .trace_query()
                .map_or(Request::Nothing, |q| Request::Trace(q.into())),
            _ => Request::Nothing,
        }
    }
}

/// Domains the shape shows at most, by the panel's height.
fn shape_rows(height: u16) -> usize {
    if height >= 40 { 6 } else { 3 }
}

pub fn render(
    frame: &mut Frame,
    area: Rect,
    view: &QueueView,
    in_flight: &HashMap<String, InFlightAttempt>,
    now: SystemTime,
    delivery_off: bool,
    theme: &Theme,
) {
    let now = epoch_ms(now) / 1000;
    let mut title = if view.filter.is_empty() {
        format!(" Queue: {} messages ", view.entries.len())
    } else {
        format!(
            " Queue: {} of {} messages match {:?} ",
            view.shown.len(),
            view.entries.len(),
            view.filter
        )
    };
    if !view.marked.is_empty() {
        title.push_str(&format!("· {} marked ", view.marked.len()));
    }
    let block = Block::bordered().title(title).title_style(theme.title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let mut top_lines: Vec<Line> = Vec::new();
    if let Some(e) = &view.error {
        top_lines.push(Line::styled(e.clone(), theme.error));
    }
    if delivery_off {
        // "next in 70s" would be a promise nobody keeps.
        top_lines.push(Line::styled(
            "delivery is off: nothing is sent, whatever the times below say, until `relaygate policy set delivery on`",
            theme.warning,
        ));
    }
    if view.entries.is_empty() {
        top_lines.push(Line::styled("the queue is empty", theme.dim));
    } else {
        top_lines.extend(shape_lines(
            &view.shape,
            shape_rows(area.height),
            inner.width,
            theme,
        ));
    }
    let [head, list] = Layout::vertical([
        Constraint::Length(top_lines.len() as u16),
        Constraint::Min(0),
    ])
    .areas(inner);
    frame.render_widget(Paragraph::new(top_lines), head);
    let height = list.height as usize;
    if view.shown.is_empty() {
        if !view.entries.is_empty() {
            frame.render_widget(
                Paragraph::new(Line::styled(
                    "no message matches the filter (/ changes it)",
                    theme.dim,
                )),
                list,
            );
        }
        return;
    }
    // Bring the selected message's whole block into view: keep the top
    // if it shows the selection, else put the selection at the bottom.
    let block_height = |at: usize| {
        let m = &view.entries[view.shown[at]];
        1 + m.recipients.len()
            + m.recipients
                .iter()
                .filter(|r| r.last_error.is_some())
                .count()
    };
    let mut top = view.top.get().min(view.selected);
    let mut used = 0;
    for at in top..=view.selected {
        used += block_height(at);
        if used > height {
            break;
        }
    }
    if used > height {
        top = view.selected;
        let mut used = block_height(top);
        while top > 0 && used + block_height(top - 1) <= height {
            top -= 1;
            used += block_height(top);
        }
    }
    view.top.set(top);
    let mut lines: Vec<Line> = Vec::new();
    for (at, &i) in view.shown.iter().enumerate().skip(top) {
        if lines.len() >= height {
            break;
        }
        let m = &view.entries[i];
        lines.extend(message_lines(
            m,
            at == view.selected,
            view.marked.contains(&m.id),
            in_flight.get(&m.id),
            now,
            theme,
        ));
    }
    lines.truncate(height);
    frame.render_widget(Paragraph::new(lines), list);
}

/// The shape as a small table: a header, the busiest `rows` domains and
/// the total, cut to `width`.
fn shape_lines(shape: &QueueShape, rows: usize, width: u16, theme: &Theme) -> Vec<Line<'static>> {
    let name_width = (width as usize)
        .saturating_sub(8 + 7 * AGE_BUCKETS.len())
        .clamp(6, 30);
    let row = |name: &str, total: usize, buckets: &[usize]| {
        let mut s = format!("{:<name_width$.name_width$} {:>7}", name, total);
        for b in buckets {
            s.push_str(&format!(" {b:>6}"));
        }
        s
    };
    let mut header = format!("{:<name_width$} {:>7}", "queued to", "total");
    for (limit, label) in AGE_BUCKETS {
        let label = if limit == i64::MAX {
            label.to_string()
        } else {
            format!("<{label}")
        };
        header.push_str(&format!(" {label:>6}"));
    }
    let mut lines = vec![Line::styled(header, theme.dim)];
    for (d, n, b) in shape.domains.iter().take(rows) {
        lines.push(Line::raw(row(d, *n, b)));
    }
    if shape.domains.len() > rows {
        lines.push(Line::styled(
            format!("... {} more domains", shape.domains.len() - rows),
            theme.dim,
        ));
    }
    lines.push(Line::styled(
        row("all domains", shape.total.0, &shape.total.1),
        theme.title,
    ));
    lines
}

/// One message's lines: its head, each recipient, each last error.
fn message_lines(
    m: &QueueEntry,
    selected: bool,
    marked: bool,
    flying: Option<&InFlightAttempt>,
    now: i64,
    theme: &Theme,
) -> Vec<Line<'static>> {
    let sender = if m.sender.is_empty() {
        "<>".to_string()
    } else {
        format!("<{}>", m.sender)
    };
    let mut head = vec![
        if marked {
            Span::styled("* ", theme.warning)
        } else {
            Span::raw("  ")
        },
        Span::raw(format!("{}  ", m.id)),
        Span::styled(format!("age {}  ", age(now - m.received_at)), theme.dim),
        Span::raw(format!("{} bytes  from {sender}", m.size)),
    ];
    if m.held {
        head.push(Span::styled("  HELD", theme.warning));
    }
    if let Some(a) = flying {
        head.push(Span::styled(in_flight_text(a, now), theme.warning));
    }
    let head = Line::from(head);
    let mut lines = vec![if selected {
        head.style(theme.selected)
    } else {
        head
    }];
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
            Span::styled(
                format!(
                    ", {}{when}",
                    crate::queue_admin::plural(r.attempts as usize, "attempt", "attempts")
                ),
                theme.dim,
            ),
            Span::styled(
                r.notify
                    .as_ref()
                    .map(|n| format!(", NOTIFY={n}"))
                    .unwrap_or_default(),
                theme.dim,
            ),
        ]));
        if let Some(err) = &r.last_error {
            lines.push(Line::styled(
                format!("      {}", crate::queue_admin::last_error_text(err)),
                theme.warning,
            ));
        }
    }
    lines
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
