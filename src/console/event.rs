//! The one event type the console loop waits on: terminal input, engine
//! events, the timer and signals all arrive as a [`ConsoleEvent`].

use super::action::{Action, Command};
use super::app::App;
use crate::control::client::ClientEvent;
use crate::control::protocol::ServerMessage;
use crate::events::Stamped;
use ratatui::crossterm::event::{KeyEvent, MouseEvent, MouseEventKind};
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub enum ConsoleEvent {
    Key(KeyEvent),
    Mouse(MouseEvent),
    Resize(u16, u16),
    /// The loop's timer: ages, the rate chart, polling the store.
    Tick(SystemTime),
    Engine(Stamped),
    /// Anything else from the engine: attached, detached, a snapshot...
    Link(ClientEvent),
    /// The answer of work done off the screen's thread (a queue read).
    Done(Box<Action>),
    /// SIGTERM, SIGHUP or SIGINT: quit (the terminal is restored).
    Terminate,
    /// The terminal cannot be read any more.
    InputFailed(String),
}

impl ConsoleEvent {
    /// The action this event means for the app, if any.
    pub fn action(self, app: &App) -> Option<Action> {
        match self {
            ConsoleEvent::Key(key) => app.key_action(key),
            ConsoleEvent::Mouse(m) => match m.kind {
                MouseEventKind::ScrollUp => Some(Action::Command(Command::ScrollUp)),
                MouseEventKind::ScrollDown => Some(Action::Command(Command::ScrollDown)),
                _ => None,
            },
            ConsoleEvent::Resize(..) => Some(Action::Resize),
            ConsoleEvent::Tick(now) => Some(Action::Tick(now)),
            ConsoleEvent::Engine(stamped) => Some(Action::Engine(stamped)),
            ConsoleEvent::Link(ClientEvent::Attached(hello)) => Some(Action::Attached(hello)),
            ConsoleEvent::Link(ClientEvent::Detached { reason, refused }) => {
                Some(Action::Detached { reason, refused })
            }
            ConsoleEvent::Link(ClientEvent::Message(m)) => match m {
                ServerMessage::Hello { .. } => None,
                ServerMessage::Snapshot { snapshot } => Some(Action::Snapshot(snapshot)),
                ServerMessage::Event { event } => Some(Action::Engine(event)),
                ServerMessage::Status { status } => Some(Action::Status(status)),
                ServerMessage::Lagged { missed } => Some(Action::Lagged(missed)),
                ServerMessage::Tick { tick } => Some(Action::LiveTick(Box::new(tick))),
                ServerMessage::Skipped { events } => Some(Action::Skipped(events)),
                ServerMessage::Dialogue { session, events } => {
                    Some(Action::Dialogue { session, events })
                }
                ServerMessage::BindingsRetried { listeners } => {
                    Some(Action::BindingsRetried(listeners))
                }
                ServerMessage::Error { message } => Some(Action::RemoteError(message)),
            },
            ConsoleEvent::Done(action) => Some(*action),
            ConsoleEvent::Terminate | ConsoleEvent::InputFailed(_) => None,
        }
    }
}
