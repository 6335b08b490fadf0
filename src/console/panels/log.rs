//! Log: every event (history from the decision log first), filtered and
//! searched, following new lines unless scrolled up.

use crate::console::app::App;
use crate::console::theme::Theme;
use ratatui::Frame;
use ratatui::layout::Rect;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph};

pub fn render(frame: &mut Frame, area: Rect, app: &App, theme: &Theme) {
    let height = area.height.saturating_sub(2) as usize;
    let cursor = app.log.cursor;
    // Lines are counted from the newest; skip enough to show the cursor.
    let skip = cursor.saturating_sub(height.saturating_sub(1));
    // With a search the title counts every match: one pass does both (the
    // window alone would stop early only to be scanned again).
    let mut matching = 0;
    let mut visible = Vec::with_capacity(height);
    for (i, line) in app.log_shown().enumerate() {
        if i >= skip && visible.len() < height {
            visible.push(line);
        } else if app.log.search.is_none() && visible.len() == height {
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
            let line = match &app.log.search {
                Some(s) => highlight(line, s, theme),
                None => line,
            };
            if i + skip == cursor && !app.log.follow {
                line.style(theme.selected)
            } else {
                line
            }
        })
        .collect();
    let mut title = match &app.log.search {
        None => format!(
            " Log: {}, {} lines ",
            app.log.filter.name(),
            app.traffic.log.lines.len()
        ),
        Some(s) => format!(
            " Log: {}, search {s:?}: {} of {} lines here match{} ",
            app.log.filter.name(),
            matching - app.log.history.as_ref().map_or(0, Vec::len),
            app.traffic.log.lines.len(),
            match &app.log.history {
                None => ", searching the whole history...".to_string(),
                Some(h) => format!(
                    ", {} more in the older history (n/N: next/previous)",
                    h.len()
                ),
            }
        ),
    };
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
