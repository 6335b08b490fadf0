//! Log: every event (history from the decision log first), filtered and
//! searched, following new lines unless scrolled up.
//!
//! The panel owns its view ([`LogView`]): the filter, the search and its
//! matches from the older history, the cursor and whether it follows; the
//! app routes keys to it and runs the history search it asks for.

use super::Request;
use crate::console::action::{Command, TraceAsk};
use crate::console::app::ViewerSource;
use crate::console::form::{Field, FormPurpose};
use crate::console::theme::Theme;
use crate::console::traffic::{EventLog, LogFilter, LogLine};
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

/// The Log panel's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogView {
    pub filter: LogFilter,
    /// Lowercased; lines must contain it.
    pub search: Option<String>,
    /// The selected line, counted from the newest matching one.
    pub cursor: usize,
    pub follow: bool,
    /// Matches of `search` in the whole event log older than the lines
    /// held here, oldest first; `None` while the search runs.
    pub history: Option<Vec<LogLine>>,
}

impl Default for LogView {
    fn default() -> LogView {
        LogView {
            filter: LogFilter::All,
            search: None,
            cursor: 0,
            follow: true,
            history: Some(Vec::new()),
        }
    }
}

impl LogView {
    pub fn admits(&self, line: &LogLine) -> bool {
        self.filter.admits(line)
            && self.search.as_ref().is_none_or(|s| {
                line.text.to_lowercase().contains(s)
                    || line
                        .detail
                        .as_ref()
                        .is_some_and(|d| d.to_lowercase().contains(s))
            })
    }

    /// The lines shown, newest first: those held here that pass the
    /// filter and the search, then a search's matches from the older
    /// history.
    pub fn shown<'a>(&'a self, log: &'a EventLog) -> impl Iterator<Item = &'a LogLine> {
        let older: &[LogLine] = match (&self.search, &self.history) {
            (Some(_), Some(h)) => h,
            _ => &[],
        };
        log.lines
            .iter()
            .rev()
            .filter(|l| self.admits(l))
            .chain(older.iter().rev())
    }

    /// How many lines are shown.
    pub fn matching(&self, log: &EventLog) -> usize {
        self.shown(log).count()
    }

    pub fn selected_line<'a>(&'a self, log: &'a EventLog) -> Option<&'a LogLine> {
        self.shown(log).nth(self.cursor)
    }

    /// `t`: the story of the selected line's session or message, if it
    /// belongs to one.
    pub fn trace_query(&self, log: &EventLog) -> Option<TraceAsk> {
        let line = self.selected_line(log)?;
        // A close (or TLS) line names only its session: its story is the
        // one its opening line finds.
        let query = line.trace.clone().or_else(|| {
            let session = line.session?;
            log.lines
                .iter()
                .rev()
                .filter(|l| l.at_ms <= line.at_ms && l.session == Some(session))
                .find_map(|l| l.trace.clone())
        })?;
        Some(TraceAsk {
            query,
            shown_ms: Some(line.at_ms),
        })
    }

    /// Enter: the selected line whole, with its detail: a title and lines
    /// for the reader.
    pub fn detail(&self, log: &EventLog) -> Option<(String, Vec<String>)> {
        let line = self.selected_line(log)?;
        let mut lines = vec![line.text.clone()];
        if let Some(d) = &line.detail {
            lines.push(String::new());
            lines.push(d.clone());
        }
        let title = format!(
            "{} {}",
            line.kind.map(|k| k.as_str()).unwrap_or("event"),
            line.verdict.map(|v| v.as_str()).unwrap_or_default()
        );
        Some((title, lines))
    }

    /// A line came in (`added`: the log grew or dropped its oldest): a
    /// paused view keeps its line under the cursor.
    pub fn line_added(&mut self, log: &EventLog, added: bool) {
        if added && !self.follow && log.lines.back().is_some_and(|l| self.admits(l)) {
            self.cursor += 1;
        }
    }

    /// Moves the cursor (it counts from the newest line: "up" is older);
    /// at the newest line the view follows again.
    pub fn move_cursor(&mut self, c: Command, page: usize, log: &EventLog) {
        let count = self.matching(log);
        let up = match c {
            Command::Up => Some(1),
            Command::ScrollUp => Some(3),
            Command::PageUp => Some(page),
            _ => None,
        };
        let down = match c {
            Command::Down => Some(1),
            Command::ScrollDown => Some(3),
            Command::PageDown => Some(page),
            _ => None,
        };
        let cursor = match (c, up, down) {
            (Command::Top, _, _) => count.saturating_sub(1),
            (Command::Bottom, _, _) => 0,
            (_, Some(n), _) => (self.cursor + n).min(count.saturating_sub(1)),
            (_, _, Some(n)) => self.cursor.saturating_sub(n),
            _ => self.cursor,
        };
        self.cursor = cursor;
        self.follow = cursor == 0;
    }

    /// The panel's keys: `f` cycles the filter, `/` searches, `n`/`N`
    /// step through a search's matches, `F` follows, Enter shows a line
    /// whole, `t` its story.
    pub fn command(&mut self, c: Command, log: &EventLog) -> Request {
        match c {
            Command::Search => {
                return Request::form(
                    FormPurpose::LogSearch,
                    "Search the log",
                    vec![
                        Field::new("text", "lines containing this text; empty shows all")
                            .with_value(self.search.clone().unwrap_or_default()),
                    ],
                );
            }
            Command::Trace => {
                return match self.trace_query(log) {
                    Some(q) => Request::Trace(q),
                    None => Request::say(false, "this line belongs to no session or message"),
                };
            }
            Command::Open => {
                return self.detail(log).map_or(Request::Nothing, |(title, lines)| {
                    Request::View(ViewerSource::Text { title, lines })
                });
            }
            Command::CycleFilter => {
                self.filter = self.filter.next();
                self.cursor = 0;
                self.follow = true;
            }
            Command::NextMatch | Command::PrevMatch if self.search.is_some() => {
                let n = self.matching(log);
                if c == Command::NextMatch {
                    if self.follow {
                        self.follow = false;
                    } else {
                        self.cursor = (self.cursor + 1).min(n.saturating_sub(1));
                    }
                } else {
                    self.follow = false;
                    self.cursor = self.cursor.saturating_sub(1);
                }
            }
            Command::Follow => {
                self.cursor = 0;
                self.follow = true;
            }
            _ => {}
        }
        Request::Nothing
    }

    /// `/`: searches for `text` (lowercased here; empty clears). Returns
    /// the text to look for in the whole event log as well.
    pub fn set_search(&mut self, text: &str) -> Option<String> {
        let text = text.trim().to_lowercase();
        self.search = (!text.is_empty()).then(|| text.clone());
        self.cursor = 0;
        self.follow = true;
        if text.is_empty() {
            self.history = Some(Vec::new());
            return None;
        }
        // The lines here are searched at once; the whole log too.
        self.history = None;
        Some(text)
    }

    /// The whole event log's matches for `search` came: keeps those
    /// older than the lines held here that pass the filter. An error is
    /// handed back to be said.
    pub fn history_found(
        &mut self,
        search: &str,
        found: Result<Vec<LogLine>, String>,
        log: &EventLog,
    ) -> Result<(), String> {
        if self.search.as_deref() != Some(search) {
            return Ok(());
        }
        match found {
            Ok(lines) => {
                let oldest_here = log.lines.front().map_or(i64::MAX, |l| l.at_ms);
                let older: Vec<LogLine> = lines
                    .into_iter()
                    .filter(|l| l.at_ms < oldest_here && self.filter.admits(l))
                    .collect();
                self.history = Some(older);
                Ok(())
            }
            Err(e) => {
                self.history = Some(Vec::new());
                Err(e)
            }
        }
    }
}

/// Draws the panel from its view and the lines held.
pub fn render(frame: &mut Frame, area: Rect, view: &LogView, log: &EventLog, theme: &Theme) {
    let height = area.height.saturating_sub(2) as usize;
    let cursor = view.cursor;
    // Lines are counted from the newest; skip enough to show the cursor.
    let skip = cursor.saturating_sub(height.saturating_sub(1));
    // With a search or a filter the title counts every match: one pass
    // does both (the window alone would stop early only to be scanned
    // again).
    let counted = view.search.is_some() || view.filter != LogFilter::All;
    let mut matching = 0;
    let mut visible = Vec::with_capacity(height);
    for (i, line) in view.shown(log).enumerate() {
        if i >= skip && visible.len() < height {
            visible.push(line);
        } else if !counted && visible.len() == height {
            break;
        }
        matching = i + 1;
    }
    let shown = visible.len();
    let lines: Vec<Line> = visible
        .into_iter()
        .enumerate()
        .rev()
        .map(|(i, l)| {
            let line = super::log_line(l, theme);
            let line = match &view.search {
                Some(s) => highlight(line, s, theme),
                None => line,
            };
            if i + skip == cursor && !view.follow {
                line.style(theme.selected)
            } else {
                line
            }
        })
        .collect();
    let mut title = match &view.search {
        None if view.filter == LogFilter::All => format!(" Log: all, {} lines ", log.lines.len()),
        None => format!(
            " Log: {}, {matching} of {} lines ",
            view.filter.name(),
            log.lines.len()
        ),
        Some(s) => format!(
            " Log: {}, search {s:?}: {} of {} lines here match{} ",
            view.filter.name(),
            matching - view.history.as_ref().map_or(0, Vec::len),
            log.lines.len(),
            match &view.history {
                None => ", searching the whole history...".to_string(),
                Some(h) => format!(
                    ", {} more in the older history (n/N: next/previous)",
                    h.len()
                ),
            }
        ),
    };
    title.push_str(if view.follow {
        "· following "
    } else {
        "· paused (F follows) "
    });
    let mut padded = Vec::new();
    if shown < height {
        padded.extend(std::iter::repeat_n(Line::raw(""), height - shown));
    }
    padded.extend(lines);
    frame.render_widget(
        Paragraph::new(padded).block(Block::bordered().title(title).title_style(theme.title)),
        area,
    );
}

/// A line with each occurrence of `needle` (lowercase) picked out.
fn highlight<'a>(line: Line<'a>, needle: &str, theme: &Theme) -> Line<'a> {
    if needle.is_empty() {
        return line;
    }
    let style = line.style;
    let mut spans = Vec::new();
    for span in line.spans {
        let text = span.content.to_string();
        let lower = text.to_lowercase();
        // Lowercasing can change lengths outside ASCII: keep such a span.
        if lower.len() != text.len() {
            spans.push(span);
            continue;
        }
        let mut at = 0;
        while let Some(found) = lower[at..].find(needle) {
            let start = at + found;
            let end = start + needle.len();
            if !text.is_char_boundary(start) || !text.is_char_boundary(end) {
                break;
            }
            if start > at {
                spans.push(Span::styled(text[at..start].to_string(), span.style));
            }
            spans.push(Span::styled(text[start..end].to_string(), theme.highlight));
            at = end;
        }
        if at < text.len() {
            spans.push(Span::styled(text[at..].to_string(), span.style));
        }
    }
    Line::from(spans).style(style)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bindings::BindKind;
    use crate::events::{Event, Stamped};
    use std::sync::Arc;
    use std::time::{Duration, UNIX_EPOCH};

    fn line(ms: u64, event: Event) -> LogLine {
        crate::console::traffic::log_line(&Stamped {
            at: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_millis(ms),
            event: Arc::new(event),
        })
        .expect("a log line")
    }

    /// `t` on a session's close line finds the story its opening finds.
    #[test]
    fn a_close_line_is_traced_by_its_sessions_opening() {
        let mut log = EventLog::default();
        for (session, ip) in [(7u64, "192.0.2.7"), (8, "192.0.2.8")] {
            log.push(line(
                session,
                Event::SessionOpened {
                    session,
                    peer: format!("{ip}:4000").parse().unwrap(),
                    local: "127.0.0.1:25".parse().unwrap(),
                    kind: BindKind::Smtp,
                    tls: false,
                    via: None,
                },
            ));
        }
        log.push(line(
            20,
            Event::SessionClosed {
                session: 7,
                why: "the client said QUIT".into(),
            },
        ));
        let view = LogView::default();
        let asked = view.trace_query(&log).expect("a story for the close line");
        assert_eq!(asked.query.ip, Some("192.0.2.7".parse().unwrap()));
    }
}
