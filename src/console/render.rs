//! Draws the whole screen from the app state: tabs, the panel, the status
//! line, the footer generated from the keymap, and any popup. Nothing here
//! changes state or decides anything.

use super::action::Panel;
use super::app::Link;
use super::app::{App, Mode, ViewerSource};
use super::form::Form;
use super::keymap::{self, Context};
use super::panels;
use super::theme::Theme;
use crate::control::protocol::Access;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Tabs, Wrap};

/// Draws one frame.
pub fn draw(frame: &mut Frame, app: &App, theme: &Theme) {
    let [tabs, body, status, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    draw_tabs(frame, tabs, app, theme);
    match app.panel {
        Panel::Live => panels::live::render(
            frame,
            body,
            &app.live,
            &app.traffic,
            panels::live::Listeners {
                listeners: &app.listeners,
                stale: matches!(app.link, crate::console::app::Link::Detached { .. }),
            },
            app.now,
            theme,
        ),
        Panel::Log => panels::log::render(frame, body, &app.log, &app.traffic.log, theme),
        Panel::Bindings => {
            // A watcher cannot read the database: the engine's listeners
            // say what is bound.
            let from_engine: Vec<crate::bindings::Binding>;
            let bindings = if app.config.bindings.is_empty() && !app.listeners.is_empty() {
                from_engine = app.listeners.iter().map(|l| l.binding).collect();
                &from_engine
            } else {
                &app.config.bindings
            };
            let listeners = match app.link {
                // The engine's last word about its listeners is no word
                // about them now.
                crate::console::app::Link::Detached { .. } => None,
                _ => Some(app.listeners.as_slice()),
            };
            panels::bindings::render(frame, body, &app.bindings, bindings, listeners, theme)
        }
        Panel::Lists => panels::lists::render(frame, body, app, theme),
        Panel::Policy => panels::policy::render(frame, body, &app.policy, &app.config, theme),
        Panel::Users => panels::users::render(frame, body, &app.users, &app.config, theme),
        Panel::Limits => panels::limits::render(frame, body, &app.limits, &app.config, theme),
        Panel::Queue => panels::queue::render(
            frame,
            body,
            &app.queue,
            &app.in_flight,
            app.now,
            app.config.delivery_off,
            theme,
        ),
    }
    draw_status(frame, status, app, theme);
    draw_footer(frame, footer, app, theme);
    match &app.mode {
        Mode::Normal => {}
        Mode::Help { scroll } => draw_help(frame, app, *scroll, theme),
        Mode::Viewer { source, scroll } => draw_viewer(frame, app, source, *scroll, theme),
        Mode::Form(form) => draw_form(frame, form, theme),
        Mode::Confirm(c) => {
            // The auth mode is picked from three, not confirmed.
            let title = match c.pending {
                crate::console::app::Pending::AuthMode => " Choose ",
                _ => " Are you sure? ",
            };
            draw_confirm(frame, &c.question, title, app, theme)
        }
    }
}

/// Where the console's picture comes from: this process, an attached
/// engine (and whether we may edit), or an engine that went away.
/// Long and short forms, and whether all is well.
pub fn link_label(link: &Link) -> (String, String, bool) {
    match link {
        Link::OneProcess => ("one process".into(), "local".into(), true),
        Link::Attached {
            pid,
            access: Access::Admin,
        } => (format!("attached to pid {pid}"), format!("pid {pid}"), true),
        Link::Attached {
            pid,
            access: Access::Watch,
        } => (
            format!("attached to pid {pid}, watching"),
            format!("{pid} ro"),
            true,
        ),
        Link::Detached { refused: true, .. } => (
            "refused by the engine, retrying".into(),
            "REFUSED".into(),
            false,
        ),
        Link::Detached { .. } => ("engine gone, reconnecting".into(), "GONE".into(), false),
    }
}

/// What the header says while the switches leave the gateway open to
/// anyone (see [`crate::policy::settings::Switches::open_to_anyone`]).
pub fn open_label(switches: &crate::policy::settings::Switches) -> Option<&'static str> {
    let open = switches.open_to_anyone();
    if open.contains(&crate::policy::decision::RelayClass::Relay) {
        Some("OPEN RELAY")
    } else if open.is_empty() {
        None
    } else {
        Some("OPEN TO ANYONE")
    }
}

/// How the tab bar is drawn: the titles, the padding around each, and
/// whether the key and the name are written together (`3Bind`).
#[derive(Clone, Copy)]
struct TabForm {
    title: fn(Panel) -> &'static str,
    pad: &'static str,
    tight: bool,
}

/// The widest form in which the tabs and the link's long label fit, else
/// the widest in which the short label does: long titles, short ones,
/// without padding, and on a very narrow screen (60 columns) tiny ones
/// written tight, so that every tab shows whole.
fn tab_form(width: u16, long_label: usize, short_label: usize) -> TabForm {
    let forms = [
        TabForm {
            title: Panel::title,
            pad: " ",
            tight: false,
        },
        TabForm {
            title: Panel::title,
            pad: "",
            tight: false,
        },
        TabForm {
            title: Panel::short_title,
            pad: " ",
            tight: false,
        },
        TabForm {
            title: Panel::short_title,
            pad: "",
            tight: false,
        },
        TabForm {
            title: Panel::tiny_title,
            pad: "",
            tight: true,
        },
    ];
    let fits = |f: &TabForm, label: usize| tabs_width(*f) + 2 + label <= width as usize;
    forms
        .iter()
        .find(|f| fits(f, long_label))
        .or_else(|| forms.iter().find(|f| fits(f, short_label)))
        .copied()
        .unwrap_or(forms[4])
}

/// A tab's label: `3 Bindings`, or `3Bind` when tight.
fn tab_label(i: usize, panel: Panel, form: TabForm) -> String {
    if form.tight {
        format!("{}{}", i + 1, (form.title)(panel))
    } else {
        format!("{} {}", i + 1, (form.title)(panel))
    }
}

/// Columns the tab bar takes in this form.
fn tabs_width(form: TabForm) -> usize {
    Panel::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| tab_label(i, *p, form).chars().count() + 2 * form.pad.len())
        .sum::<usize>()
        + Panel::ALL.len()
        - 1
}

fn draw_tabs(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let (mut long, mut short, mut ok) = link_label(&app.link);
    // Open to anyone: said on every panel for as long as it lasts, not
    // only in the Policy panel and one log line.
    if let Some(open) = open_label(&app.config.switches) {
        long = format!("{open} · {long}");
        short = open.to_string();
        ok = false;
    }
    // The tabs first, whole; the link takes what is left of the line.
    let form = tab_form(area.width, long.chars().count(), short.chars().count());
    // A blank column between the tabs and the link.
    let room = (area.width as usize).saturating_sub(tabs_width(form) + 2);
    let label: String = if long.chars().count() <= room {
        long
    } else if short.chars().count() <= room {
        short
    } else {
        short.chars().take(room).collect()
    };
    let width = label.chars().count() as u16;
    let [area, link_area] =
        Layout::horizontal([Constraint::Min(10), Constraint::Length(width)]).areas(area);
    frame.render_widget(
        Paragraph::new(Line::styled(
            label,
            if ok { theme.dim } else { theme.error },
        ))
        .alignment(ratatui::layout::Alignment::Right),
        link_area,
    );
    let titles: Vec<Line> = Panel::ALL
        .iter()
        .enumerate()
        .map(|(i, p)| Line::from(tab_label(i, *p, form)))
        .collect();
    let tabs = Tabs::new(titles)
        .select(app.panel.index())
        .style(theme.dim)
        .highlight_style(theme.focus)
        .divider("│")
        .padding(form.pad, form.pad);
    frame.render_widget(tabs, area);
}

fn draw_status(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let mut spans = Vec::new();
    if app.skipped > 0 {
        spans.push(Span::styled(
            format!(
                "{} events not listed here (busy: the log panel shows a sample; the event log has all) ",
                app.skipped
            ),
            theme.dim,
        ));
    }
    if let Some(room) = app.spool.filter(|r| r.is_short()) {
        use crate::spool_space::size_text;
        spans.push(Span::styled(
            format!(
                "SPOOL DISK SHORT OF ROOM: {} free, {} needed; MAIL refused (452 4.3.1) ",
                size_text(room.free),
                size_text(room.needed)
            ),
            theme.error,
        ));
    }
    if app.dropped > 0 {
        spans.push(Span::styled(
            format!("{} events dropped (the console fell behind) ", app.dropped),
            theme.warning,
        ));
    }
    if app.editing_lists() {
        let dirty = app.lists.is_dirty();
        spans.push(Span::styled(
            if dirty {
                "EDITING, unsaved "
            } else {
                "EDITING "
            },
            theme.focus,
        ));
    }
    if let Some(s) = app.status.as_ref().filter(|s| s.shown_at(app.now)) {
        spans.push(Span::styled(
            s.text.clone(),
            if s.ok { theme.allowed } else { theme.error },
        ));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_footer(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let mut spans = Vec::new();
    // Attached, `q` leaves the engine running: "quit" would make an admin
    // fear for the mail.
    let attached = !matches!(app.link, crate::console::app::Link::OneProcess);
    for (keys, hint) in footer_fit(keymap::footer(&app.contexts()), area.width as usize) {
        let hint = if attached && hint == "quit" {
            "detach"
        } else {
            hint
        };
        spans.push(Span::styled(keys, theme.key));
        spans.push(Span::raw(format!(" {hint}  ")));
    }
    frame.render_widget(Paragraph::new(Line::from(spans)), area);
}

/// The footer's hints that fit in `width` columns, in order; when some
/// must go, the `?` hint stays last (the help lists every key).
pub fn footer_fit(hints: Vec<(String, &'static str)>, width: usize) -> Vec<(String, &'static str)> {
    let cost = |(k, h): &(String, &'static str)| k.chars().count() + h.chars().count() + 3;
    // The last hint needs no spaces after it.
    if hints.iter().map(cost).sum::<usize>().saturating_sub(2) <= width {
        return hints;
    }
    let help = hints.iter().find(|(k, _)| k == "?").cloned();
    let room = width.saturating_sub(help.as_ref().map_or(0, |h| cost(h).saturating_sub(2)));
    let mut used = 0;
    let mut out = Vec::new();
    for h in hints.into_iter().filter(|(k, _)| k != "?") {
        if used + cost(&h) > room {
            break;
        }
        used += cost(&h);
        out.push(h);
    }
    out.extend(help);
    out
}

/// A centered rectangle of at most `width` x `height`.
pub fn popup_area(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

/// The contexts the help lists, the ones in force first.
fn help_contexts(app: &App) -> Vec<Context> {
    let mut first = vec![Context::Panel(app.panel)];
    if app.panel == Panel::Lists {
        first.push(Context::ListEdit);
    }
    if app.panel == Panel::Queue {
        first.push(Context::ConfirmDelete);
    }
    first.push(Context::Global);
    let rest = [
        Context::Form,
        Context::Confirm,
        Context::Viewer,
        Context::Help,
    ];
    let mut all = first;
    for p in Panel::ALL {
        if p != app.panel {
            all.push(Context::Panel(p));
        }
    }
    for c in rest {
        all.push(c);
    }
    if app.panel != Panel::Lists {
        all.push(Context::ListEdit);
    }
    if app.panel != Panel::Queue {
        all.push(Context::ConfirmDelete);
    }
    all
}

fn draw_help(frame: &mut Frame, app: &App, scroll: usize, theme: &Theme) {
    let mut lines = Vec::new();
    for ctx in help_contexts(app) {
        lines.push(Line::styled(ctx.title().to_string(), theme.title));
        for b in keymap::bindings(ctx) {
            lines.push(Line::from(vec![
                Span::styled(format!("  {:<16}", b.label()), theme.key),
                Span::raw(b.help),
            ]));
        }
    }
    let area = popup_area(frame.area(), 76, frame.area().height.saturating_sub(2));
    draw_scrolled(frame, area, " Keys (Esc closes) ", lines, scroll, theme);
}

fn draw_scrolled(
    frame: &mut Frame,
    area: Rect,
    title: &str,
    lines: Vec<Line>,
    scroll: usize,
    theme: &Theme,
) {
    let inner_height = area.height.saturating_sub(2) as usize;
    let max = lines.len().saturating_sub(inner_height);
    let top = scroll.min(max);
    let shown: Vec<Line> = lines.into_iter().skip(top).take(inner_height).collect();
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(shown).block(
            Block::bordered()
                .title(title.to_string())
                .title_style(theme.title),
        ),
        area,
    );
}

fn draw_viewer(frame: &mut Frame, app: &App, source: &ViewerSource, scroll: usize, theme: &Theme) {
    let area = popup_area(
        frame.area(),
        frame.area().width.saturating_sub(4),
        frame.area().height.saturating_sub(4),
    );
    let inner_width = area.width.saturating_sub(2) as usize;
    let (title, lines): (String, Vec<Line>) = match source {
        ViewerSource::Connection(id) => match app.traffic.connections.get(id) {
            Some(c) => (
                format!(" Session {id} from {} (Esc closes) ", c.peer),
                c.dialogue
                    .iter()
                    .flat_map(|e| {
                        let (text, tone) = super::traffic::dialogue_line(e);
                        let style = match (&*e.event, tone) {
                            (crate::events::Event::Command { .. }, _) => theme.normal,
                            (_, Some(tone)) => theme.tone(tone),
                            (_, None) => theme.dim,
                        };
                        // Wrapped to the popup: a long reason shows whole.
                        text.split('\n')
                            .flat_map(|l| wrap_words(l, inner_width))
                            .map(|l| Line::styled(l, style))
                            .collect::<Vec<_>>()
                    })
                    .collect(),
            ),
            None => (
                format!(" Session {id} "),
                vec![Line::raw("this connection is no longer kept")],
            ),
        },
        ViewerSource::Text { title, lines } => (
            format!(" {title} (Esc closes) "),
            lines.iter().map(|l| Line::raw(l.clone())).collect(),
        ),
    };
    if matches!(source, ViewerSource::Text { .. }) {
        frame.render_widget(Clear, area);
        frame.render_widget(
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .scroll((scroll.min(u16::MAX as usize) as u16, 0))
                .block(Block::bordered().title(title).title_style(theme.title)),
            area,
        );
    } else {
        draw_scrolled(frame, area, &title, lines, scroll, theme);
    }
}

fn draw_form(frame: &mut Frame, form: &Form, theme: &Theme) {
    let label_width = form.fields.iter().map(|f| f.label.len()).max().unwrap_or(0) + 2;
    let mut lines = Vec::new();
    for (i, f) in form.fields.iter().enumerate() {
        let focused = i == form.focus;
        let mut value = f.shown();
        if focused {
            value.push('▏');
        }
        lines.push(Line::from(vec![
            Span::styled(
                format!("{:>w$} ", f.label, w = label_width),
                if focused { theme.focus } else { theme.dim },
            ),
            Span::styled(value, if focused { theme.focus } else { theme.normal }),
        ]));
    }
    lines.push(Line::raw(""));
    if let Some(f) = form.fields.get(form.focus) {
        lines.push(Line::styled(f.hint.to_string(), theme.dim));
    }
    if let Some(e) = &form.error {
        lines.push(Line::styled(e.clone(), theme.error));
    }
    let height = lines.len() as u16 + 3;
    let area = popup_area(frame.area(), 72, height);
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::bordered()
                .title(format!(" {} (Enter: next/save, Esc: cancel) ", form.title))
                .title_style(theme.title),
        ),
        area,
    );
}

fn draw_confirm(frame: &mut Frame, question: &str, title: &str, app: &App, theme: &Theme) {
    let keys: Vec<Span> = keymap::footer(&app.contexts())
        .into_iter()
        .flat_map(|(k, h)| [Span::styled(k, theme.key), Span::raw(format!(" {h}   "))])
        .collect();
    let lines = vec![
        Line::raw(question.to_string()),
        Line::raw(""),
        Line::from(keys),
    ];
    // Tall enough for a long question (an open relay's warning) wrapped
    // at word boundaries: a line more than its length needs, and the keys.
    let question_lines = question.chars().count().div_ceil(60).max(1) + 1;
    let height = u16::try_from(question_lines + 4).unwrap_or(u16::MAX);
    let area = popup_area(frame.area(), 64, height.max(7));
    frame.render_widget(Clear, area);
    frame.render_widget(
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title).title_style(theme.warning)),
        area,
    );
}

/// `text` in lines of at most `width` characters, broken at spaces (a
/// word longer than a line is broken where the line ends).
pub fn wrap_words(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    if text.chars().count() <= width {
        return vec![text.to_string()];
    }
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut used = 0;
    for word in text.split(' ') {
        let mut word: Vec<char> = word.chars().collect();
        // The space before the word, unless the line is empty.
        let gap = usize::from(used > 0);
        if used + gap + word.len() > width && used > 0 {
            lines.push(std::mem::take(&mut line));
            used = 0;
        } else if gap == 1 {
            line.push(' ');
            used += 1;
        }
        while used + word.len() > width {
            let rest = word.split_off(width - used);
            line.extend(word);
            lines.push(std::mem::take(&mut line));
            used = 0;
            word = rest;
        }
        used += word.len();
        line.extend(word);
    }
    lines.push(line);
    lines
}

/// `HH:MM:SS` (UTC) of a time in milliseconds since the epoch.
pub fn clock(at_ms: i64) -> String {
    let secs = at_ms.div_euclid(1000).rem_euclid(86_400);
    format!(
        "{:02}:{:02}:{:02}",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
}

/// A short age: `42s`, `5m`, `3h`, `2d`.
pub fn age(secs: i64) -> String {
    match secs.max(0) {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The first row to show so that `selected` is visible in `height` rows.
pub fn scroll_top(selected: usize, height: usize) -> usize {
    if height == 0 {
        0
    } else {
        selected.saturating_sub(height - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::wrap_words;

    #[test]
    fn an_engine_that_refuses_us_is_not_called_gone() {
        use super::{Link, link_label};
        let gone = Link::Detached {
            reason: "the engine closed the connection".into(),
            pid: Some(7),
            refused: false,
        };
        let refused = Link::Detached {
            reason: "the console group changed".into(),
            pid: Some(7),
            refused: true,
        };
        assert_eq!(link_label(&gone).0, "engine gone, reconnecting");
        assert_eq!(link_label(&refused).0, "refused by the engine, retrying");
        assert!(!link_label(&refused).2);
    }

    #[test]
    fn wrap_words_breaks_at_spaces_and_keeps_every_character() {
        assert_eq!(wrap_words("  short", 10), ["  short"]);
        assert_eq!(
            wrap_words("a reason that is long", 10),
            ["a reason", "that is", "long"]
        );
        assert_eq!(
            wrap_words("abcdefghijklmnop qr", 6),
            ["abcdef", "ghijkl", "mnop", "qr"]
        );
        let long = "why ".repeat(100);
        let lines = wrap_words(long.trim_end(), 37);
        assert!(lines.iter().all(|l| l.chars().count() <= 37));
        assert_eq!(lines.join(" "), long.trim_end());
    }
}
