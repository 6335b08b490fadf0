//! A small form: a few one-line fields, one focused, passwords masked.
//! What the form is for decides what its fields mean and how they are
//! validated (in the app); the form only holds what was typed.

use crate::policy::ip_lists::ListKind;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::net::SocketAddr;

/// What a form will do when saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FormPurpose {
    AddBinding,
    EditBinding(SocketAddr),
    AddDomain,
    AddRule,
    AddUser,
    ResetPassword(String),
    /// A login's sender addresses, and what they were when the form
    /// opened (see [`crate::store::Store::edit_sender_addresses`]).
    SenderAddresses(String, Vec<String>),
    /// The one login of auth mode `specified`.
    SpecifiedLogin,
    Import(ListKind),
    LogSearch,
    QueueFilter,
    /// `/` on Live, Bindings or Users.
    PanelFilter(super::action::Panel),
    AddQuota,
    AddBan,
}

/// One field of a form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub label: &'static str,
    pub value: String,
    /// Shown as bullets (passwords).
    pub masked: bool,
    /// What to type, shown under the fields while this one is focused.
    pub hint: &'static str,
}

impl Field {
    pub fn new(label: &'static str, hint: &'static str) -> Field {
        Field {
            label,
            value: String::new(),
            masked: false,
            hint,
        }
    }

    pub fn with_value(mut self, value: impl Into<String>) -> Field {
        self.value = value.into();
        self
    }

    pub fn masked(mut self) -> Field {
        self.masked = true;
        self
    }

    /// What the screen shows of the value.
    pub fn shown(&self) -> String {
        if self.masked {
            "•".repeat(self.value.chars().count())
        } else {
            self.value.clone()
        }
    }
}

/// A form being filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Form {
    pub purpose: FormPurpose,
    pub title: String,
    pub fields: Vec<Field>,
    pub focus: usize,
    /// Why the last save was refused or failed; the typed values stay.
    pub error: Option<String>,
}

impl Form {
    pub fn new(purpose: FormPurpose, title: impl Into<String>, fields: Vec<Field>) -> Form {
        Form {
            purpose,
            title: title.into(),
            fields,
            focus: 0,
            error: None,
        }
    }

    /// The trimmed value of field `i` (empty if there is none).
    pub fn value(&self, i: usize) -> &str {
        self.fields.get(i).map_or("", |f| f.value.trim())
    }

    /// The raw value of field `i` (passwords are not trimmed).
    pub fn raw(&self, i: usize) -> &str {
        self.fields.get(i).map_or("", |f| f.value.as_str())
    }

    pub fn next_field(&mut self) {
        if !self.fields.is_empty() {
            self.focus = (self.focus + 1) % self.fields.len();
        }
    }

    pub fn prev_field(&mut self) {
        if !self.fields.is_empty() {
            self.focus = (self.focus + self.fields.len() - 1) % self.fields.len();
        }
    }

    pub fn on_last_field(&self) -> bool {
        self.focus + 1 >= self.fields.len()
    }

    /// Types into the focused field: characters, Backspace, Ctrl-U (clear),
    /// Ctrl-W (delete a word). Other keys are ignored.
    pub fn input(&mut self, key: &KeyEvent) {
        let Some(field) = self.fields.get_mut(self.focus) else {
            return;
        };
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('u') if ctrl => field.value.clear(),
            KeyCode::Char('w') if ctrl => {
                let kept = field.value.trim_end().len();
                field.value.truncate(kept);
                let cut = field.value.rfind(' ').map_or(0, |i| i + 1);
                field.value.truncate(cut);
            }
            KeyCode::Char(c) if !ctrl && !c.is_control() => field.value.push(c),
            KeyCode::Backspace => {
                field.value.pop();
            }
            _ => return,
        }
        self.error = None;
    }
}
