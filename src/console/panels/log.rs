//! Log: every event (history from the decision log first), filtered and
//! searched, following new lines unless scrolled up.

use crate::console::app::App;
use crate::console::theme::Theme;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph};

pub fn render(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let height = area.height.saturating_sub(2) as usize;
    let cursor = app.log.cursor;
    // Lines are counted from the newest; skip enough to show the cursor.
    let skip = cursor.saturating_sub(height.saturating_sub(1));
    let visible: Vec<_> = app
        .traffic
        .log
        .lines
        .iter()
        .rev()
        .filter(|l| app.log.admits(l))
        .skip(skip)
        .take(height)
        .collect();
    let shown = visible.len();
    let lines: Vec<Line> = visible
        .into_iter()
        .enumerate()
        .rev()
        .map(|(i, l)| {
            let line = super::log_line(l, theme);
            if i + skip == cursor && !app.log.follow {
                line.style(theme.selected)
            } else {
                line
            }
        })
        .collect();
    let mut title = format!(
        " Log: {}{}, {} lines ",
        app.log.filter.name(),
        app.log
            .search
            .as_ref()
            .map(|s| format!(", search {s:?}"))
            .unwrap_or_default(),
        app.traffic.log.lines.len()
    );
    title.push_str(if app.log.follow {
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
