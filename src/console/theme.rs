//! Colors and emphasis. Only the 16 named ANSI colors are used, so a
//! 16-color terminal shows the same thing as a true-color one; with
//! `NO_COLOR` set (<https://no-color.org>) every style keeps its emphasis
//! (bold, reversed, dim) and drops its color, so the screen stays readable.

use crate::events::{Outcome, Tone};
use ratatui::style::{Color, Modifier, Style};

/// The styles every panel draws with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Theme {
    pub normal: Style,
    pub dim: Style,
    pub title: Style,
    /// The selected row of a table or list.
    pub selected: Style,
    /// The active tab, the focused editor's border.
    pub focus: Style,
    pub allowed: Style,
    pub denied: Style,
    pub warning: Style,
    pub error: Style,
    pub key: Style,
    /// Text a search found, within a line.
    pub highlight: Style,
}

impl Theme {
    /// The named ANSI colors: readable on 16-color terminals and up.
    pub fn color() -> Theme {
        Theme {
            normal: Style::new(),
            dim: Style::new().fg(Color::DarkGray),
            title: Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            selected: Style::new().add_modifier(Modifier::REVERSED),
            focus: Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
            allowed: Style::new().fg(Color::Green),
            denied: Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            warning: Style::new().fg(Color::Yellow),
            error: Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            key: Style::new().fg(Color::Cyan).add_modifier(Modifier::BOLD),
            highlight: Style::new()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        }
    }

    /// No color at all: emphasis only.
    pub fn monochrome() -> Theme {
        Theme {
            normal: Style::new(),
            dim: Style::new().add_modifier(Modifier::DIM),
            title: Style::new().add_modifier(Modifier::BOLD),
            selected: Style::new().add_modifier(Modifier::REVERSED),
            focus: Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
            allowed: Style::new(),
            denied: Style::new().add_modifier(Modifier::BOLD),
            warning: Style::new().add_modifier(Modifier::BOLD),
            error: Style::new().add_modifier(Modifier::BOLD),
            key: Style::new().add_modifier(Modifier::BOLD),
            highlight: Style::new().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
        }
    }

    /// `NO_COLOR` (any non-empty value) or `TERM=dumb` turn color off.
    pub fn from_env() -> Theme {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let dumb = std::env::var("TERM").is_ok_and(|t| t == "dumb");
        if no_color || dumb {
            Theme::monochrome()
        } else {
            Theme::color()
        }
    }

    /// The style of an outcome (`allowed`, `denied`, `failed`...).
    pub fn verdict(&self, verdict: Option<Outcome>) -> Style {
        verdict.map_or(self.normal, |v| self.tone(v.tone()))
    }

    pub fn tone(&self, tone: Tone) -> Style {
        match tone {
            Tone::Good => self.allowed,
            Tone::Bad => self.denied,
            Tone::Warning => self.warning,
        }
    }
}
