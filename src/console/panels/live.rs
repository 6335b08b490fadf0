//! Live: who is connected, what was allowed or denied and why, the rates
//! over the last minutes, and the newest log lines.
//!
//! The panel owns its view ([`LiveView`]): which connections it shows, in
//! which order, the `/` filter and the selection; the app routes keys to
//! it and turns what it picks (a dialogue, a trace) into effects.

use super::Request;
use crate::console::action::{Command, Panel};
use crate::console::app::ViewerSource;
use crate::console::render::{age, scroll_top};
use crate::console::theme::Theme;
use crate::console::traffic::{Traffic, epoch_ms};
use crate::engine::ListenerStatus;
use crate::live::Connection;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Row, Sparkline, Table, TableState};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Seconds the rate chart covers.
const CHART_SECONDS: usize = 300;

/// Which connections the Live panel shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveShow {
    #[default]
    All,
    Open,
    Denied,
}

impl LiveShow {
    fn next(self) -> LiveShow {
        match self {
            LiveShow::All => LiveShow::Open,
            LiveShow::Open => LiveShow::Denied,
            LiveShow::Denied => LiveShow::All,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LiveShow::All => "all",
            LiveShow::Open => "open",
            LiveShow::Denied => "with a denied recipient",
        }
    }
}

/// The column the Live panel sorts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LiveSort {
    /// In the order they opened.
    #[default]
    Opened,
    Peer,
    User,
    State,
    Helo,
    Sender,
    Rcpt,
    Bytes,
}

impl LiveSort {
    fn next(self) -> LiveSort {
        use LiveSort::*;
        match self {
            Opened => Peer,
            Peer => User,
            User => State,
            State => Helo,
            Helo => Sender,
            Sender => Rcpt,
            Rcpt => Bytes,
            Bytes => Opened,
        }
    }

    pub fn as_str(self) -> &'static str {
        use LiveSort::*;
        match self {
            Opened => "opened",
            Peer => "peer",
            User => "user",
            State => "state",
            Helo => "helo",
            Sender => "sender",
            Rcpt => "rcpt",
            Bytes => "bytes",
        }
    }
}

/// The Live panel's state: what it shows, in which order, and the
/// selection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveView {
    pub show: LiveShow,
    pub sort: LiveSort,
    pub reversed: bool,
    /// What `/` filters by (lowercase; empty: every connection).
    pub filter: String,
    /// Index into [`LiveView::rows`].
    pub selected: usize,
}

impl LiveView {
    /// The connections this view shows, in its order (the table may hold
    /// 10,000: sorting them takes about a millisecond, and only when
    /// asked for).
    pub fn rows<'a>(&self, traffic: &'a Traffic) -> Vec<&'a Connection> {
        let mut rows: Vec<&Connection> = traffic
            .connections
            .values()
            .filter(|c| match self.show {
                LiveShow::All => true,
                LiveShow::Open => c.closed.is_none(),
                LiveShow::Denied => c.rcpt_denied > 0,
            })
            .filter(|c| {
                super::row_matches(
                    &self.filter,
                    [
                        c.peer.to_string().as_str(),
                        c.login.as_deref().unwrap_or(""),
                        c.state.as_str(),
                        c.helo.as_deref().unwrap_or(""),
                        c.mail_from.as_deref().unwrap_or(""),
                    ],
                )
            })
            .collect();
        match self.sort {
            LiveSort::Opened => {}
            LiveSort::Peer => rows.sort_by_key(|c| c.peer),
            LiveSort::User => rows.sort_by(|a, b| a.login.cmp(&b.login)),
            LiveSort::State => rows.sort_by(|a, b| a.state.cmp(&b.state)),
            LiveSort::Helo => rows.sort_by(|a, b| a.helo.cmp(&b.helo)),
            LiveSort::Sender => rows.sort_by(|a, b| a.mail_from.cmp(&b.mail_from)),
            LiveSort::Rcpt => rows.sort_by_key(|c| (c.rcpt_allowed + c.rcpt_denied, c.rcpt_denied)),
            LiveSort::Bytes => rows.sort_by_key(|c| c.bytes),
        }
        if self.reversed {
            rows.reverse();
        }
        rows
    }

    /// The connection under the selection.
    pub fn selected_connection<'a>(&self, traffic: &'a Traffic) -> Option<&'a Connection> {
        self.rows(traffic).get(self.selected).copied()
    }

    /// `t`: the selected client's stories (by its address and sender).
    pub fn trace_query(&self, traffic: &Traffic) -> Option<crate::trace::TraceQuery> {
        self.selected_connection(traffic)
            .map(|c| crate::trace::TraceQuery {
                ip: Some(c.peer.ip().to_string()),
                from: c.mail_from.clone().filter(|m| !m.is_empty()),
                ..Default::default()
            })
    }

    /// The panel's keys: `f` cycles what is shown, `s` the sort column,
    /// `S` the order; Enter opens the selected connection's dialogue, `t`
    /// its client's stories, `/` filters.
    pub fn command(&mut self, c: Command, traffic: &Traffic) -> Request {
        match c {
            Command::CycleFilter => self.show = self.show.next(),
            Command::CycleSort => self.sort = self.sort.next(),
            Command::ReverseSort => self.reversed = !self.reversed,
            Command::Open => {
                return self
                    .selected_connection(traffic)
                    .map_or(Request::Nothing, |c| {
                        Request::View(ViewerSource::Connection(c.session))
                    });
            }
            Command::Trace => {
                return self
                    .trace_query(traffic)
                    .map_or(Request::Nothing, |q| Request::Trace(q.into()));
            }
            Command::Search => return super::filter_form(Panel::Live, &self.filter),
            _ => return Request::Nothing,
        }
        self.selected = 0;
        Request::Nothing
    }

    /// `/`: shows the connections containing `text` (lowercased here).
    pub fn set_filter(&mut self, text: &str) {
        self.filter = text.trim().to_lowercase();
        self.selected = 0;
    }

    /// Keeps the selection on a row that is shown.
    pub fn clamp(&mut self, traffic: &Traffic) {
        let shown = self.rows(traffic).len();
        self.selected = self.selected.min(shown.saturating_sub(1));
    }
}

/// The engine's listeners, and whether they are only as last seen (the
/// engine gone).
#[derive(Clone, Copy)]
pub struct Listeners<'a> {
    pub listeners: &'a [ListenerStatus],
    pub stale: bool,
}

/// Draws the panel from its view and the engine's picture.
pub fn render(
    frame: &mut Frame,
    area: Rect,
    view: &LiveView,
    traffic: &Traffic,
    listeners: Listeners<'_>,
    now: SystemTime,
    theme: &Theme,
) {
    let Listeners { listeners, stale } = listeners;
    let tail_height = if area.height >= 30 { 8 } else { 5 };
    let [header, top, table, tail] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(4),
        Constraint::Min(4),
        Constraint::Length(tail_height),
    ])
    .areas(area);
    frame.render_widget(
        Paragraph::new(header_line(listeners, traffic, stale, theme)),
        header,
    );
    let counters = counter_lines(traffic, theme);
    let need = counters.first().map_or(0, |l| l.width()) as u16;
    let (counters_area, chart) = split_top(top, need);
    frame.render_widget(Paragraph::new(counters), counters_area);
    if let Some(chart) = chart {
        render_chart(frame, chart, traffic, now, theme);
    }
    render_connections(frame, table, view, traffic, now, theme);
    render_tail(frame, tail, traffic, theme);
}

/// Where the engine listens (the bound address, so port 0 shows its real
/// port) and how many are connected; `stale` (the engine gone), as last
/// seen, not as it is.
pub fn header_line<'a>(
    listeners: &'a [ListenerStatus],
    traffic: &Traffic,
    stale: bool,
    theme: &Theme,
) -> Line<'a> {
    let mut spans = Vec::new();
    if stale {
        spans.push(Span::styled("as last seen, not now: ", theme.warning));
    }
    if listeners.is_empty() {
        spans.push(Span::styled("not listening anywhere", theme.warning));
    }
    for l in listeners {
        match &l.bound {
            Ok(addr) => spans.push(Span::styled(
                format!("listening {addr} ({}) ", l.binding.kind),
                theme.allowed,
            )),
            Err(_) => spans.push(Span::styled(
                format!("FAILED {} ", l.binding.addr),
                theme.error,
            )),
        }
    }
    spans.push(Span::raw(format!("· {} open", traffic.open)));
    Line::from(spans)
}

fn joined(map: &BTreeMap<std::borrow::Cow<'static, str>, u64>) -> String {
    if map.is_empty() {
        return "-".into();
    }
    map.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(" · ")
}

/// The least the rate chart needs: its label and a few bars.
const CHART_MIN: u16 = 9 + 10;

/// Splits the top rows between the counters and the rate chart. The
/// counters get at least 55% and never less than `need` (their first line,
/// which must show whole) and a blank column; another blank column keeps
/// them apart from the chart, which gives way when what is left is too
/// narrow for it.
pub fn split_top(area: Rect, need: u16) -> (Rect, Option<Rect>) {
    let left = (need + 1).max(area.width.saturating_sub(1) * 55 / 100);
    if left + 1 + CHART_MIN > area.width {
        return (area, None);
    }
    let chart = Rect {
        x: area.x + left + 1,
        width: area.width - left - 1,
        ..area
    };
    (
        Rect {
            width: left,
            ..area
        },
        Some(chart),
    )
}

fn counter_lines(traffic: &Traffic, theme: &Theme) -> Vec<Line<'static>> {
    let c = &traffic.counters;
    vec![
        Line::from(vec![
            Span::styled("sessions ", theme.dim),
            Span::raw(format!("{}  ", c.sessions)),
            Span::styled("msgs ", theme.dim),
            Span::raw(format!("{}  ", c.messages)),
            Span::styled("AUTH fail ", theme.dim),
            Span::raw(format!("{}  ", c.auth_failures)),
            Span::styled("refused ", theme.dim),
            Span::raw(c.refused_sessions.to_string()),
        ]),
        Line::from(vec![
            Span::styled("allowed ", theme.allowed),
            Span::raw(joined(&c.allowed_by_class)),
        ]),
        Line::from(vec![
            Span::styled("denied  ", theme.denied),
            Span::raw(joined(&c.denied_by_class)),
        ]),
        Line::from(vec![
            Span::styled("why     ", theme.denied),
            Span::raw(joined(&c.denied_by_reason)),
        ]),
    ]
}

fn render_chart(frame: &mut Frame, area: Rect, traffic: &Traffic, now: SystemTime, theme: &Theme) {
    let label = 9u16;
    let bars = area.width.saturating_sub(label).max(1) as usize;
    let per_bar = CHART_SECONDS.div_ceil(bars).max(1);
    let (allowed, denied) = traffic.rate_series(now, bars * per_bar);
    let sum = |v: &[u64]| -> Vec<u64> { v.chunks(per_bar).map(|c| c.iter().sum()).collect() };
    let [a_row, d_row] =
        Layout::vertical([Constraint::Length(2), Constraint::Length(2)]).areas(area);
    for (row, name, data, style) in [
        (a_row, "allowed", sum(&allowed), theme.allowed),
        (d_row, "denied", sum(&denied), theme.denied),
    ] {
        let [l, s] = Layout::horizontal([Constraint::Length(label), Constraint::Min(1)]).areas(row);
        let total: u64 = data.iter().sum();
        frame.render_widget(
            Paragraph::new(vec![
                Line::styled(name, style),
                Line::styled(format!("{total}/5m"), theme.dim),
            ]),
            l,
        );
        frame.render_widget(Sparkline::default().data(&data).style(style), s);
    }
}

/// The clients with the most open connections, when one has more than
/// one: ` · most open: 127.0.0.1 ×5, 10.0.0.7 ×2`.
pub fn busiest_clients(traffic: &Traffic, n: usize) -> String {
    let mut per_ip: std::collections::HashMap<std::net::IpAddr, usize> = Default::default();
    for c in traffic.connections.values().filter(|c| c.closed.is_none()) {
        *per_ip.entry(c.peer.ip()).or_default() += 1;
    }
    let mut top: Vec<(std::net::IpAddr, usize)> =
        per_ip.into_iter().filter(|(_, k)| *k > 1).collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    if top.is_empty() {
        return String::new();
    }
    let listed: Vec<String> = top
        .iter()
        .take(n)
        .map(|(ip, k)| format!("{ip} ×{k}"))
        .collect();
    format!(" · most open: {}", listed.join(", "))
}

fn render_connections(
    frame: &mut Frame,
    area: Rect,
    v: &LiveView,
    traffic: &Traffic,
    now: SystemTime,
    theme: &Theme,
) {
    let shown = v.rows(traffic);
    let view = match (v.show, v.sort) {
        (LiveShow::All, LiveSort::Opened) if !v.reversed => String::new(),
        _ => format!(
            ", {} by {}{}",
            v.show.as_str(),
            v.sort.as_str(),
            if v.reversed { ", reversed" } else { "" }
        ),
    };
    let busiest = busiest_clients(traffic, 3);
    let block = Block::bordered()
        .title(format!(
            " Connections: {} open, {} shown{view}{}{busiest} (Enter: dialogue) ",
            traffic.open,
            shown.len(),
            if v.filter.is_empty() {
                String::new()
            } else {
                format!(", matching {:?}", v.filter)
            }
        ))
        .title_style(theme.title);
    let rows_height = area.height.saturating_sub(3) as usize;
    // The listening port and the byte count give way on narrow screens.
    let wide = area.width >= 110;
    let selected = v.selected.min(shown.len().saturating_sub(1));
    let top = scroll_top(selected, rows_height);
    let now_ms = epoch_ms(now);
    // Only the visible rows are built: the table may hold 10,000 connections.
    let rows: Vec<Row> = shown
        .iter()
        .skip(top)
        .take(rows_height)
        .map(|c| {
            let style = if c.closed.is_some() {
                theme.dim
            } else if c.rcpt_denied > 0 {
                theme.warning
            } else {
                theme.normal
            };
            let mut cells = vec![c.peer.to_string()];
            if wide {
                cells.push(format!(":{}", c.local.port()));
            }
            cells.extend([
                if c.tls { "yes" } else { "-" }.to_string(),
                c.login.clone().unwrap_or_else(|| "-".into()),
                c.state.clone(),
                c.helo.clone().unwrap_or_default(),
                c.mail_from.clone().unwrap_or_default(),
                format!("{}/{}", c.rcpt_allowed, c.rcpt_denied),
            ]);
            if wide {
                cells.push(c.bytes.to_string());
            }
            cells.push(age((now_ms - epoch_ms(c.opened_at)) / 1000));
            Row::new(cells).style(style)
        })
        .collect();
    let mut widths = vec![Constraint::Length(21)];
    let mut titles = vec!["peer"];
    if wide {
        widths.push(Constraint::Length(6));
        titles.push("bind");
    }
    widths.extend([
        Constraint::Length(3),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Fill(1),
        Constraint::Fill(2),
        Constraint::Length(5),
    ]);
    titles.extend(["tls", "user", "state", "helo", "mail from", "rcpt"]);
    if wide {
        widths.push(Constraint::Length(7));
        titles.push("bytes");
    }
    widths.push(Constraint::Length(4));
    titles.push("age");
    let header = Row::new(titles).style(theme.title);
    let table = Table::new(rows, widths)
        .header(header)
        .block(block)
        .column_spacing(1)
        .row_highlight_style(theme.selected);
    let mut state = TableState::default();
    if !shown.is_empty() {
        state.select(Some(selected - top));
    }
    frame.render_stateful_widget(table, area, &mut state);
}

fn render_tail(frame: &mut Frame, area: Rect, traffic: &Traffic, theme: &Theme) {
    let height = area.height.saturating_sub(2) as usize;
    let lines: Vec<Line> = traffic
        .log
        .lines
        .iter()
        .rev()
        .take(height)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .map(|l| super::log_line(l, theme))
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::bordered()
                .title(" Latest events (2: full log) ")
                .title_style(theme.title),
        ),
        area,
    );
}
