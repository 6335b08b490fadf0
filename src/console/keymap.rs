//! Keys as data: one table from key to command with its description. The
//! footer hints and the `?` help overlay are both generated from it, so the
//! help never drifts from what the keys do.

use super::action::{Command, Panel};
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// Where a key binding applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// Every panel, outside an edit.
    Global,
    /// One panel, outside an edit.
    Panel(Panel),
    /// Editing the relay lists (and the test box beside them).
    ListEdit,
    /// A form (add a user, a binding, a rule...).
    Form,
    /// A yes/no question.
    Confirm,
    /// Deleting a queued message: bounce or silently.
    ConfirmDelete,
    /// Picking the auth mode from its three.
    PickAuthMode,
    /// A popup to read: a connection's dialogue, a log line in full.
    Viewer,
    Help,
}

impl Context {
    pub fn title(self) -> &'static str {
        match self {
            Context::Global => "Everywhere",
            Context::Panel(p) => p.title(),
            Context::ListEdit => "Editing the relay lists",
            Context::Form => "In a form",
            Context::Confirm => "Confirmation",
            Context::ConfirmDelete => "Deleting a queued message",
            Context::PickAuthMode => "Picking the auth mode",
            Context::Viewer => "Reading a dialogue or log line",
            Context::Help => "This help",
        }
    }
}

/// One key, as a terminal reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    pub code: KeyCode,
    pub modifiers: KeyModifiers,
}

const fn ch(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        modifiers: KeyModifiers::NONE,
    }
}

const fn ctrl(c: char) -> Key {
    Key {
        code: KeyCode::Char(c),
        modifiers: KeyModifiers::CONTROL,
    }
}

const fn code(code: KeyCode) -> Key {
    Key {
        code,
        modifiers: KeyModifiers::NONE,
    }
}

impl Key {
    /// Whether a key event is this key. Shift is part of the character
    /// (`A`), so it is ignored for characters.
    pub fn matches(&self, event: &KeyEvent) -> bool {
        let mut mods = event.modifiers;
        if matches!(event.code, KeyCode::Char(_) | KeyCode::BackTab) {
            mods.remove(KeyModifiers::SHIFT);
        }
        self.code == event.code && self.modifiers == mods
    }

    /// How the key is written in the footer and the help.
    pub fn label(&self) -> String {
        let name = match self.code {
            KeyCode::Char(' ') => "Space".to_string(),
            KeyCode::Char(c) => c.to_string(),
            KeyCode::Enter => "Enter".into(),
            KeyCode::Esc => "Esc".into(),
            KeyCode::Tab => "Tab".into(),
            KeyCode::BackTab => "S-Tab".into(),
            KeyCode::Up => "↑".into(),
            KeyCode::Down => "↓".into(),
            KeyCode::PageUp => "PgUp".into(),
            KeyCode::PageDown => "PgDn".into(),
            KeyCode::Home => "Home".into(),
            KeyCode::End => "End".into(),
            KeyCode::Delete => "Del".into(),
            other => format!("{other:?}"),
        };
        if self.modifiers.contains(KeyModifiers::CONTROL) {
            format!("^{}", name.to_uppercase())
        } else {
            name
        }
    }
}

/// One row of the keymap.
#[derive(Debug, Clone, Copy)]
pub struct KeyBinding {
    pub context: Context,
    pub keys: &'static [Key],
    pub command: Command,
    /// One or two words for the footer; empty: not in the footer.
    pub hint: &'static str,
    /// The full description in the `?` help.
    pub help: &'static str,
}

impl KeyBinding {
    /// Every key of the binding, as `q/Q`.
    pub fn label(&self) -> String {
        self.keys
            .iter()
            .map(Key::label)
            .collect::<Vec<_>>()
            .join("/")
    }
}

macro_rules! bind {
    ($ctx:expr, [$($key:expr),+], $cmd:expr, $hint:expr, $help:expr) => {
        KeyBinding { context: $ctx, keys: &[$($key),+], command: $cmd, hint: $hint, help: $help }
    };
}

use Command as C;
use Context as X;
use Panel as P;

/// The keymap: every key the console knows.
#[rustfmt::skip]
pub static KEYMAP: &[KeyBinding] = &[
    // Everywhere outside an edit.
    bind!(X::Global, [ch('?')], C::Help, "help", "show every key"),
    bind!(X::Global, [ch('q'), ctrl('c')], C::Quit, "quit", "quit (asks first if there are unsaved edits); in an editor q is text and ^C cancels the edit"),
    bind!(X::Global, [code(KeyCode::Tab)], C::NextPanel, "panel", "next panel (1-8 go to a panel)"),
    bind!(X::Global, [code(KeyCode::BackTab)], C::PrevPanel, "", "previous panel"),
    bind!(X::Global, [ch('1')], C::GoTo(P::Live), "", "Live panel"),
    bind!(X::Global, [ch('2')], C::GoTo(P::Log), "", "Log panel"),
    bind!(X::Global, [ch('3')], C::GoTo(P::Bindings), "", "Bindings panel"),
    bind!(X::Global, [ch('4')], C::GoTo(P::Lists), "", "Relay lists panel"),
    bind!(X::Global, [ch('5')], C::GoTo(P::Policy), "", "Auth & restrictions panel"),
    bind!(X::Global, [ch('6')], C::GoTo(P::Users), "", "Users panel"),
    bind!(X::Global, [ch('7')], C::GoTo(P::Queue), "", "Queue panel"),
    bind!(X::Global, [ch('8')], C::GoTo(P::Limits), "", "Quotas & bans panel"),
    bind!(X::Global, [code(KeyCode::Up), ch('k')], C::Up, "", "move up (the mouse wheel scrolls too)"),
    bind!(X::Global, [code(KeyCode::Down), ch('j')], C::Down, "", "move down"),
    bind!(X::Global, [code(KeyCode::PageUp)], C::PageUp, "", "one page up"),
    bind!(X::Global, [code(KeyCode::PageDown)], C::PageDown, "", "one page down"),
    bind!(X::Global, [code(KeyCode::Home), ch('g')], C::Top, "", "to the top"),
    bind!(X::Global, [code(KeyCode::End), ch('G')], C::Bottom, "", "to the bottom"),
    // Live
    bind!(X::Panel(P::Live), [code(KeyCode::Enter)], C::Open, "dialogue", "show the selected connection's dialogue"),
    bind!(X::Panel(P::Live), [ch('t')], C::Trace, "trace", "the selected client's stories from the event log"),
    bind!(X::Panel(P::Live), [ch('f')], C::CycleFilter, "show", "show: every connection, open ones, ones with a denied recipient"),
    bind!(X::Panel(P::Live), [ch('s')], C::CycleSort, "sort", "sort by the next column (opened, peer, user, state, helo, sender, rcpt, bytes)"),
    bind!(X::Panel(P::Live), [ch('S')], C::ReverseSort, "", "turn the sort order round"),
    bind!(X::Panel(P::Live), [ch('/')], C::Search, "filter", "show connections whose address, user, state, HELO or sender has this text"),
    // Log
    bind!(X::Panel(P::Log), [ch('f')], C::CycleFilter, "filter", "filter: all, allowed, denied, errors, auth, delivery"),
    bind!(X::Panel(P::Log), [ch('/')], C::Search, "search", "search these lines and the whole event log (Enter applies, empty clears)"),
    bind!(X::Panel(P::Log), [ch('n')], C::NextMatch, "next", "the next (older) match"),
    bind!(X::Panel(P::Log), [ch('N')], C::PrevMatch, "previous", "the previous (newer) match"),
    bind!(X::Panel(P::Log), [ch('F')], C::Follow, "follow", "follow new lines (scrolling up stops following)"),
    bind!(X::Panel(P::Log), [code(KeyCode::Enter)], C::Open, "details", "show the selected line in full"),
    bind!(X::Panel(P::Log), [ch('t')], C::Trace, "trace", "the whole story of the selected line's message or session"),
    // Bindings
    bind!(X::Panel(P::Bindings), [ch('a')], C::Add, "add", "add a listen address"),
    bind!(X::Panel(P::Bindings), [ch('e'), code(KeyCode::Enter)], C::Edit, "edit", "edit the selected binding's address or kind"),
    bind!(X::Panel(P::Bindings), [ch('x'), code(KeyCode::Delete)], C::Remove, "remove", "remove the selected binding (asks first)"),
    bind!(X::Panel(P::Bindings), [ch('r')], C::Retry, "retry", "try the bindings that cannot listen again now"),
    bind!(X::Panel(P::Bindings), [ch('/')], C::Search, "filter", "show listen addresses with this text"),
    // Relay lists
    bind!(X::Panel(P::Lists), [ch('e'), code(KeyCode::Enter)], C::Edit, "edit", "edit the allow and deny lists"),
    bind!(X::Panel(P::Lists), [ch('i')], C::Import, "import", "import a CSV/TSV file into the focused list"),
    bind!(X::Panel(P::Lists), [ch('t')], C::Toggle, "test", "test an IP, sender, recipient and user"),
    bind!(X::ListEdit, [ctrl('s')], C::Save, "save", "save both lists in one go (refused while a line is invalid); only this edit's changes: what others changed meanwhile is kept"),
    bind!(X::ListEdit, [code(KeyCode::Esc), ctrl('c')], C::Cancel, "cancel", "cancel: drop the unsaved edits (asks first)"),
    bind!(X::ListEdit, [code(KeyCode::Tab)], C::NextField, "next", "focus: allow list, deny list, test box"),
    bind!(X::ListEdit, [code(KeyCode::BackTab)], C::PrevField, "", "focus the previous one"),
    bind!(X::ListEdit, [ctrl('o')], C::Import, "import", "import a CSV/TSV file into the focused list"),
    // Auth & restrictions
    bind!(X::Panel(P::Policy), [code(KeyCode::Enter), ch(' ')], C::Toggle, "toggle", "switch on/off (switches, plaintext-auth, verify-recipients), or change the auth mode"),
    bind!(X::Panel(P::Policy), [ch('a')], C::Add, "add domain", "add a local domain"),
    bind!(X::Panel(P::Policy), [ch('r')], C::AddRule, "add rule", "add a sender/recipient rule"),
    bind!(X::Panel(P::Policy), [ch('x'), code(KeyCode::Delete)], C::Remove, "remove", "remove the selected domain or rule (asks first)"),
    // Users
    bind!(X::Panel(P::Users), [ch('a')], C::Add, "add", "add a user (password typed twice)"),
    bind!(X::Panel(P::Users), [ch('p')], C::ResetPassword, "password", "reset the selected user's password"),
    bind!(X::Panel(P::Users), [ch('s'), code(KeyCode::Enter)], C::SenderAddresses, "addresses", "set the selected user's sender addresses"),
    bind!(X::Panel(P::Users), [ch('x'), code(KeyCode::Delete)], C::Remove, "remove", "remove the selected user (asks first)"),
    bind!(X::Panel(P::Users), [ch('/')], C::Search, "filter", "show users whose name or sender addresses have this text"),
    // Queue
    bind!(X::Panel(P::Queue), [ch('r')], C::Retry, "retry", "try the selected (or marked) messages again now"),
    bind!(X::Panel(P::Queue), [ch('t')], C::Trace, "trace", "the selected message's whole story"),
    bind!(X::Panel(P::Queue), [ch('h')], C::Hold, "hold", "hold the selected (or marked) messages"),
    bind!(X::Panel(P::Queue), [ch('u')], C::Release, "release", "release the selected (or marked) messages"),
    bind!(X::Panel(P::Queue), [ch('d'), code(KeyCode::Delete)], C::Delete, "delete", "delete the selected (or marked) messages (asks: bounce or silently)"),
    bind!(X::Panel(P::Queue), [ch('/')], C::Search, "filter", "show messages whose sender, recipient or error has this text"),
    bind!(X::Panel(P::Queue), [ch(' ')], C::Mark, "mark", "mark or unmark the selected message"),
    bind!(X::Panel(P::Queue), [ch('*')], C::MarkAll, "mark all", "mark every message shown (again: unmark them)"),
    // Quotas & bans
    bind!(X::Panel(P::Limits), [ch('a')], C::Add, "add quota", "add a sending quota (per login, address or sender domain)"),
    bind!(X::Panel(P::Limits), [ch('b')], C::AddBan, "ban", "ban an address or a range for a while"),
    bind!(X::Panel(P::Limits), [ch('x'), code(KeyCode::Delete)], C::Remove, "remove/lift", "remove the selected quota, lift the selected ban or suspension (asks first)"),
    // Forms
    bind!(X::Form, [code(KeyCode::Enter)], C::Open, "next/ok", "next field; on the last field, save"),
    bind!(X::Form, [ctrl('s')], C::Save, "save", "save the form"),
    bind!(X::Form, [code(KeyCode::Tab), code(KeyCode::Down)], C::NextField, "", "next field"),
    bind!(X::Form, [code(KeyCode::BackTab), code(KeyCode::Up)], C::PrevField, "", "previous field"),
    bind!(X::Form, [code(KeyCode::Esc), ctrl('c')], C::Cancel, "cancel", "cancel: nothing is saved"),
    // Confirmations
    bind!(X::Confirm, [ch('y')], C::Yes, "yes", "yes, do it"),
    bind!(X::Confirm, [ch('n'), code(KeyCode::Esc)], C::No, "no", "no, leave everything as it is"),
    bind!(X::ConfirmDelete, [ch('b')], C::Bounce, "bounce", "delete and tell the sender (a bounce)"),
    bind!(X::ConfirmDelete, [ch('s')], C::Silent, "silently", "delete without telling anyone"),
    bind!(X::ConfirmDelete, [ch('n'), code(KeyCode::Esc)], C::No, "keep", "keep the message"),
    bind!(X::PickAuthMode, [ch('n')], C::AuthNone, "none", "AUTH not offered"),
    bind!(X::PickAuthMode, [ch('a')], C::AuthAnyUser, "any user", "any user may authenticate"),
    bind!(X::PickAuthMode, [ch('s')], C::AuthSpecified, "one login", "only one specified login (asked for if none is stored)"),
    bind!(X::PickAuthMode, [code(KeyCode::Esc)], C::No, "keep", "keep the auth mode as it is"),
    // Popups
    bind!(X::Viewer, [code(KeyCode::Esc), ch('q'), code(KeyCode::Enter), ctrl('c')], C::Cancel, "close", "close"),
    bind!(X::Viewer, [code(KeyCode::Up), ch('k')], C::Up, "", "scroll up"),
    bind!(X::Viewer, [code(KeyCode::Down), ch('j')], C::Down, "", "scroll down"),
    bind!(X::Viewer, [code(KeyCode::PageUp)], C::PageUp, "", "one page up"),
    bind!(X::Viewer, [code(KeyCode::PageDown)], C::PageDown, "", "one page down"),
    bind!(X::Help, [code(KeyCode::Esc), ch('?'), ch('q'), ctrl('c')], C::Cancel, "close", "close the help"),
    bind!(X::Help, [code(KeyCode::Up), ch('k')], C::Up, "", "scroll up"),
    bind!(X::Help, [code(KeyCode::Down), ch('j')], C::Down, "", "scroll down"),
    bind!(X::Help, [code(KeyCode::PageUp)], C::PageUp, "", "one page up"),
    bind!(X::Help, [code(KeyCode::PageDown)], C::PageDown, "", "one page down"),
];

/// The command a key means in the given contexts (searched in order).
pub fn command_for(contexts: &[Context], event: &KeyEvent) -> Option<Command> {
    if event.kind == KeyEventKind::Release {
        return None;
    }
    contexts.iter().find_map(|ctx| {
        KEYMAP
            .iter()
            .find(|b| b.context == *ctx && b.keys.iter().any(|k| k.matches(event)))
            .map(|b| b.command)
    })
}

/// The bindings of one context, in table order.
pub fn bindings(context: Context) -> impl Iterator<Item = &'static KeyBinding> {
    KEYMAP.iter().filter(move |b| b.context == context)
}

/// Footer hints for the contexts in force: `(keys, hint)`.
pub fn footer(contexts: &[Context]) -> Vec<(String, &'static str)> {
    contexts
        .iter()
        .flat_map(|c| bindings(*c))
        .filter(|b| !b.hint.is_empty())
        .map(|b| (b.label(), b.hint))
        .collect()
}

/// The keymap as a Markdown table (for the README's key section).
pub fn markdown() -> String {
    let mut out = String::from("| where | keys | what |\n|---|---|---|\n");
    for b in KEYMAP {
        out.push_str(&format!(
            "| {} | `{}` | {} |\n",
            b.context.title(),
            b.label().replace('|', "\\|"),
            b.help
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_key_means_two_things_in_one_context() {
        for (i, a) in KEYMAP.iter().enumerate() {
            for b in &KEYMAP[i + 1..] {
                if a.context != b.context {
                    continue;
                }
                for k in a.keys {
                    assert!(
                        !b.keys.contains(k),
                        "{} bound twice in {:?}",
                        k.label(),
                        a.context
                    );
                }
            }
        }
    }

    #[test]
    fn shift_is_part_of_a_character() {
        let shifted = KeyEvent::new(KeyCode::Char('G'), KeyModifiers::SHIFT);
        assert_eq!(
            command_for(&[Context::Global], &shifted),
            Some(Command::Bottom)
        );
        let ctrl_s = KeyEvent::new(KeyCode::Char('s'), KeyModifiers::CONTROL);
        assert_eq!(
            command_for(&[Context::ListEdit], &ctrl_s),
            Some(Command::Save)
        );
        assert_eq!(command_for(&[Context::Global], &ctrl_s), None);
    }
}
