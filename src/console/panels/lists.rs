//! Relay lists: the allow and deny lists side by side in text editors,
//! invalid lines marked with their reason, and the test box.

use crate::console::app::App;
use crate::console::list_editor::TestLine;
use crate::console::list_editor::{ListFocus, TEST_LABELS};
use crate::console::theme::Theme;
use crate::policy::decision::Verdict;
use crate::policy::ip_lists::ListKind;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};
use ratatui_textarea::TextArea;

pub fn render(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let [editors, problems, test] = Layout::vertical([
        Constraint::Min(5),
        Constraint::Length(3),
        Constraint::Length(5),
    ])
    .areas(area);
    let [allow, deny] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(editors);
    render_editor(frame, allow, app, ListKind::Allow, theme);
    render_editor(frame, deny, app, ListKind::Deny, theme);
    render_problems(frame, problems, app, theme);
    render_test(frame, test, app, theme);
}

fn render_editor(frame: &mut Frame, area: Rect, app: &App, list: ListKind, theme: &Theme) {
    let lists = &app.lists;
    let focused = lists.editing
        && matches!(
            (lists.focus, list),
            (ListFocus::Allow, ListKind::Allow) | (ListFocus::Deny, ListKind::Deny)
        );
    let check = lists.check(list);
    let mut title = format!(
        " {} relay from: {} entries ",
        if list == ListKind::Allow {
            "Allow"
        } else {
            "Deny"
        },
        check.entries.len()
    );
    if !check.invalid.is_empty() {
        title.push_str(&format!("· {} invalid ", check.invalid.len()));
    }
    let block =
        Block::bordered()
            .title(title)
            .title_style(if focused { theme.focus } else { theme.title });
    let block = if focused {
        block.border_style(theme.focus)
    } else {
        block
    };
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let [gutter, text] =
        Layout::horizontal([Constraint::Length(1), Constraint::Min(1)]).areas(inner);
    let editor: &TextArea = match list {
        ListKind::Allow => &lists.allow,
        ListKind::Deny => &lists.deny,
    };
    frame.render_widget(editor, text);
    // Mark invalid (✗) and duplicate (=) lines beside the visible rows.
    let (top, _) = editor.scroll_offset();
    let marks: Vec<Line> = (0..gutter.height as usize)
        .map(|row| {
            let line = top as usize + row + 1;
            if check.invalid.contains_key(&line) {
                Line::styled("✗", theme.error)
            } else if check.duplicates.contains_key(&line) {
                Line::styled("=", theme.warning)
            } else {
                Line::raw(" ")
            }
        })
        .collect();
    frame.render_widget(Paragraph::new(marks), gutter);
}

fn render_problems(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let lists = &app.lists;
    let mut lines: Vec<Line> = Vec::new();
    if lists.changed_underneath {
        lines.push(Line::styled(
            "the stored lists were changed elsewhere while you edit; saving keeps those changes and adds yours",
            theme.warning,
        ));
    }
    for r in &lists.report {
        lines.push(Line::styled(r.clone(), theme.warning));
    }
    let list = lists.focused_list();
    for (line, why) in &lists.check(list).invalid {
        lines.push(Line::styled(
            format!("{list} line {line}: {why}"),
            theme.error,
        ));
    }
    for (line, what) in &lists.check(list).duplicates {
        lines.push(Line::styled(
            format!("{list} line {line}: {what} (kept once)"),
            theme.warning,
        ));
    }
    if lines.is_empty() {
        lines.push(Line::styled(
            if lists.editing {
                "every line is valid · one entry per line: 10.1.2.3, 192.168.0.0/16, 10.*.*.*, 172.16-31.*.*, ::1"
            } else {
                "e edits both lists, t opens the test box, i imports a file"
            },
            theme.dim,
        ));
    }
    let height = area.height as usize;
    frame.render_widget(
        Paragraph::new(lines.into_iter().take(height).collect::<Vec<_>>()),
        area,
    );
}

fn render_test(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let test = &app.lists.test;
    let focused = app.lists.editing && app.lists.focus == ListFocus::Test;
    let mut fields = Vec::new();
    for (i, label) in TEST_LABELS.iter().enumerate() {
        let active = focused && test.focus == i;
        let mut value = test.fields[i].clone();
        if active {
            value.push('▏');
        }
        fields.push(Span::styled(format!("{label} "), theme.dim));
        fields.push(Span::styled(
            format!("[{value}] "),
            if active { theme.focus } else { theme.normal },
        ));
    }
    let verdict_style = |s: &TestLine| match s.verdict {
        Some(Verdict::Deny) => theme.denied,
        Some(Verdict::Allow) => theme.allowed,
        None => theme.normal,
    };
    let mut lines = vec![Line::from(fields)];
    match &test.saved {
        Some(s) => lines.push(Line::from(vec![
            Span::styled("saved:  ", theme.dim),
            Span::styled(s.text.clone(), verdict_style(s)),
        ])),
        None => lines.push(Line::styled(
            "type an IP (and optionally sender, recipient, user): ↑↓ move between fields",
            theme.dim,
        )),
    }
    if let Some(e) = &test.edited {
        lines.push(Line::from(vec![
            Span::styled("edited: ", theme.dim),
            Span::styled(e.text.clone(), verdict_style(e)),
        ]));
    } else if let Some(n) = &test.note {
        lines.push(Line::styled(n.clone(), theme.dim));
    }
    let block = Block::bordered()
        .title(" Test: what would the engine decide? ")
        .title_style(if focused { theme.focus } else { theme.title });
    let block = if focused {
        block.border_style(theme.focus)
    } else {
        block
    };
    frame.render_widget(Paragraph::new(lines).block(block), area);
}
