//! The allow and deny lists as two text editors, validated line by line
//! as they are typed (with `parse_list_text`, the same function `list
//! import` uses), and the test box that asks the policy what it would
//! decide with the saved lists and with the edited ones (through
//! [`crate::policy_check::check`], as `relaygate check` does).

use crate::policy::ip_lists::ListKind;
use crate::policy::list_text::{ParsedEntry, parse_list_text};
use crate::policy::{Policy, PolicyConfig};
use crate::policy_check::{CheckQuery, Checked, check};
use ratatui::crossterm::event::KeyEvent;
use ratatui::style::{Modifier, Style};
use ratatui_textarea::{CursorMove, TextArea};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

/// What has the keyboard in the Relay lists panel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFocus {
    Allow,
    Deny,
    Test,
}

/// One list's text, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListCheck {
    pub entries: Vec<ParsedEntry>,
    /// Invalid lines (1-based) and why.
    pub invalid: BTreeMap<usize, String>,
    /// Lines that repeat an entry already above (kept once when saved).
    pub duplicates: BTreeMap<usize, String>,
}

impl ListCheck {
    pub fn of(lines: &[String]) -> ListCheck {
        let parsed = parse_list_text(&lines.join("\n"));
        let mut invalid = BTreeMap::new();
        for s in parsed.invalid {
            invalid
                .entry(s.line)
                .or_insert_with(|| format!("{:?}: {}", s.error.entry, s.error.problem));
        }
        let mut duplicates = BTreeMap::new();
        for (e, first) in parsed.duplicates {
            duplicates
                .entry(e.line)
                .or_insert_with(|| format!("{} repeats {first}", e.text));
        }
        ListCheck {
            entries: parsed.entries,
            invalid,
            duplicates,
        }
    }

    pub fn texts(&self) -> Vec<String> {
        self.entries.iter().map(|e| e.text.clone()).collect()
    }
}

/// The test box: an IP and optionally a sender, a recipient and a login.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestBox {
    /// IP, sender, recipient, user.
    pub fields: [String; 4],
    pub focus: usize,
    /// What the saved policy decides, or why the input cannot be decided.
    pub saved: Option<TestLine>,
    /// What the edited lists would decide (when they differ from saved).
    pub edited: Option<TestLine>,
    pub note: Option<String>,
}

/// One answer of the test box: its text and, for a decision, the verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestLine {
    pub text: String,
    pub verdict: Option<crate::policy::decision::Verdict>,
}

impl TestLine {
    fn problem(text: String) -> TestLine {
        TestLine {
            text,
            verdict: None,
        }
    }
}

pub const TEST_LABELS: [&str; 4] = ["IP", "sender", "recipient", "user"];

/// The recipient assumed when none is typed: an external one, so the
/// relay controls are what is tested.
pub const DEFAULT_TEST_RECIPIENT: &str = "someone@relay-test.invalid";

/// The Relay lists panel's state.
#[derive(Debug, Clone)]
pub struct ListEditor {
    pub allow: TextArea<'static>,
    pub deny: TextArea<'static>,
    pub allow_check: ListCheck,
    pub deny_check: ListCheck,
    /// The lists as stored when last loaded.
    pub saved_allow: Vec<String>,
    pub saved_deny: Vec<String>,
    /// The lists the edit began from: what it changes is told apart from
    /// what others changed meanwhile by these, and only its own changes
    /// are saved (see [`crate::store::Store::save_list_edits`]).
    base_allow: Vec<String>,
    base_deny: Vec<String>,
    pub editing: bool,
    pub focus: ListFocus,
    pub test: TestBox,
    /// The last import report, or why a save was refused.
    pub report: Vec<String>,
    /// The stored lists changed (another process) during an edit.
    pub changed_underneath: bool,
    edited_policy: Option<Arc<Policy>>,
}

fn editor(lines: &[String]) -> TextArea<'static> {
    let mut t = TextArea::new(lines.to_vec());
    t.set_cursor_line_style(Style::new());
    t.set_cursor_style(Style::new());
    t.set_line_number_style(Style::new().add_modifier(Modifier::DIM));
    t
}

impl Default for ListEditor {
    fn default() -> Self {
        ListEditor::new(&[], &[])
    }
}

impl ListEditor {
    pub fn new(allow: &[String], deny: &[String]) -> ListEditor {
        ListEditor {
            allow: editor(allow),
            deny: editor(deny),
            allow_check: ListCheck::of(allow),
            deny_check: ListCheck::of(deny),
            saved_allow: allow.to_vec(),
            saved_deny: deny.to_vec(),
            base_allow: allow.to_vec(),
            base_deny: deny.to_vec(),
            editing: false,
            focus: ListFocus::Allow,
            test: TestBox::default(),
            report: Vec::new(),
            changed_underneath: false,
            edited_policy: None,
        }
    }

    /// Takes in the lists as stored now. An edit in progress is kept.
    pub fn load(&mut self, allow: &[String], deny: &[String]) {
        let changed = allow != self.saved_allow.as_slice() || deny != self.saved_deny.as_slice();
        if self.is_dirty() {
            self.changed_underneath |= changed;
            self.saved_allow = allow.to_vec();
            self.saved_deny = deny.to_vec();
            return;
        }
        let (editing, focus, test, report) = (
            self.editing,
            self.focus,
            std::mem::take(&mut self.test),
            std::mem::take(&mut self.report),
        );
        *self = ListEditor::new(allow, deny);
        self.editing = editing;
        self.focus = focus;
        self.test = test;
        self.report = report;
        if editing {
            self.put_cursor_at_end();
        }
        self.apply_cursor_styles();
    }

    /// Drops the edits: back to the stored lists.
    pub fn revert(&mut self) {
        let (allow, deny) = (self.saved_allow.clone(), self.saved_deny.clone());
        let test = std::mem::take(&mut self.test);
        *self = ListEditor::new(&allow, &deny);
        self.test = test;
    }

    pub fn begin(&mut self, focus: ListFocus) {
        self.editing = true;
        self.focus = focus;
        self.put_cursor_at_end();
        self.apply_cursor_styles();
    }

    /// Leaves the edit (after a save).
    pub fn end(&mut self) {
        self.editing = false;
        self.apply_cursor_styles();
    }

    /// Scrolls the focused list (outside an edit: to read a long list).
    pub fn scroll(&mut self, rows: i32) {
        let area = match self.focus {
            ListFocus::Deny => &mut self.deny,
            _ => &mut self.allow,
        };
        let row = area.cursor().0;
        let last = area.lines().len().saturating_sub(1) as i64;
        let target = (row as i64 + rows as i64)
            .clamp(0, last)
            .min(u16::MAX as i64);
        area.move_cursor(CursorMove::Jump(target as u16, 0));
    }

    pub fn set_focus(&mut self, focus: ListFocus) {
        self.focus = focus;
        self.apply_cursor_styles();
    }

    /// Only the focused editor shows a cursor.
    fn apply_cursor_styles(&mut self) {
        let on = Style::new().add_modifier(Modifier::REVERSED);
        let off = Style::new();
        let allow = self.editing && self.focus == ListFocus::Allow;
        let deny = self.editing && self.focus == ListFocus::Deny;
        self.allow.set_cursor_style(if allow { on } else { off });
        self.deny.set_cursor_style(if deny { on } else { off });
    }

    fn put_cursor_at_end(&mut self) {
        for t in [&mut self.allow, &mut self.deny] {
            t.move_cursor(CursorMove::Bottom);
            t.move_cursor(CursorMove::End);
        }
    }

    pub fn lines(&self, list: ListKind) -> &[String] {
        match list {
            ListKind::Allow => self.allow.lines(),
            ListKind::Deny => self.deny.lines(),
        }
    }

    pub fn check(&self, list: ListKind) -> &ListCheck {
        match list {
            ListKind::Allow => &self.allow_check,
            ListKind::Deny => &self.deny_check,
        }
    }

    /// The list that has (or last had) the focus.
    pub fn focused_list(&self) -> ListKind {
        match self.focus {
            ListFocus::Deny => ListKind::Deny,
            _ => ListKind::Allow,
        }
    }

    fn base(&self, list: ListKind) -> &[String] {
        match list {
            ListKind::Allow => &self.base_allow,
            ListKind::Deny => &self.base_deny,
        }
    }

    /// Whether the edit changed `list` from what it began with.
    fn changed(&self, list: ListKind) -> bool {
        let saved = self.base(list);
        let check = self.check(list);
        !check.invalid.is_empty()
            || check.entries.len() != saved.len()
            || check
                .entries
                .iter()
                .zip(saved)
                .any(|(e, s)| e.text != s.trim())
    }

    /// The edited lists were saved: they are now what is stored.
    pub fn mark_saved(&mut self) {
        self.saved_allow = self.allow_check.texts();
        self.saved_deny = self.deny_check.texts();
        self.base_allow = self.saved_allow.clone();
        self.base_deny = self.saved_deny.clone();
        self.changed_underneath = false;
    }

    /// Whether either list differs from what is stored.
    pub fn is_dirty(&self) -> bool {
        self.changed(ListKind::Allow) || self.changed(ListKind::Deny)
    }

    /// The edits to save (none: the lists are as they began), or every
    /// invalid line.
    pub fn to_save(&self) -> Result<Vec<crate::store::ListEdit>, Vec<String>> {
        let mut problems = Vec::new();
        for list in [ListKind::Allow, ListKind::Deny] {
            for (line, why) in &self.check(list).invalid {
                problems.push(format!("{list} line {line}: invalid IP entry {why}"));
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok([ListKind::Allow, ListKind::Deny]
            .into_iter()
            .filter(|list| self.changed(*list))
            .map(|list| crate::store::ListEdit {
                list,
                base: self.base(list).to_vec(),
                entries: self.check(list).entries.clone(),
            })
            .collect())
    }

    /// A key for the focused editor or test field.
    pub fn input(&mut self, key: KeyEvent) {
        match self.focus {
            ListFocus::Allow => {
                if self.allow.input(key) {
                    self.allow_check = ListCheck::of(self.allow.lines());
                    self.edited_policy = None;
                }
            }
            ListFocus::Deny => {
                if self.deny.input(key) {
                    self.deny_check = ListCheck::of(self.deny.lines());
                    self.edited_policy = None;
                }
            }
            ListFocus::Test => self.test_input(key),
        }
    }

    fn test_input(&mut self, key: KeyEvent) {
        use ratatui::crossterm::event::KeyCode;
        let field = &mut self.test.fields[self.test.focus.min(3)];
        match key.code {
            KeyCode::Up => self.test.focus = self.test.focus.saturating_sub(1),
            KeyCode::Down | KeyCode::Enter => self.test.focus = (self.test.focus + 1).min(3),
            KeyCode::Backspace => {
                field.pop();
            }
            KeyCode::Char(c)
                if !key
                    .modifiers
                    .contains(ratatui::crossterm::event::KeyModifiers::CONTROL) =>
            {
                field.push(c)
            }
            _ => {}
        }
    }

    /// Adds imported entries to the end of a list (not yet saved) and
    /// reports what was skipped.
    pub fn import(&mut self, list: ListKind, path: &str, text: &str) {
        let parsed = parse_list_text(text);
        let existing = ListCheck::of(self.lines(list));
        let known: std::collections::HashMap<_, _> = existing
            .entries
            .iter()
            .map(|e| (e.pattern.clone(), e.text.clone()))
            .collect();
        let mut added = Vec::new();
        let mut report = Vec::new();
        for e in &parsed.entries {
            match known.get(&e.pattern) {
                Some(first) => report.push(format!(
                    "  duplicate, line {}: {} (already listed as {first})",
                    e.line, e.text
                )),
                None => added.push(e.text.clone()),
            }
        }
        for (e, first) in &parsed.duplicates {
            report.push(format!(
                "  duplicate, line {}: {} (same as {first})",
                e.line, e.text
            ));
        }
        for s in &parsed.invalid {
            report.push(format!("  invalid, line {}: {}", s.line, s.error));
        }
        let skipped = report.len();
        let area = match list {
            ListKind::Allow => &mut self.allow,
            ListKind::Deny => &mut self.deny,
        };
        if !added.is_empty() {
            area.move_cursor(CursorMove::Bottom);
            area.move_cursor(CursorMove::End);
            if area.lines().last().is_some_and(|l| !l.trim().is_empty()) {
                area.insert_newline();
            }
            area.insert_str(added.join("\n"));
        }
        match list {
            ListKind::Allow => self.allow_check = ListCheck::of(self.allow.lines()),
            ListKind::Deny => self.deny_check = ListCheck::of(self.deny.lines()),
        }
        self.edited_policy = None;
        self.report = vec![format!(
            "imported {} entries from {path} into the {list} list (not saved yet: Ctrl-S); {skipped} skipped",
            added.len()
        )];
        self.report.extend(report);
    }

    /// Decides the test box's input with the saved policy and, when the
    /// lists were edited, with the edited lists too.
    pub fn evaluate_test(&mut self, saved: &Policy, config: &PolicyConfig) {
        self.test.saved = None;
        self.test.edited = None;
        self.test.note = None;
        let t = self.test.clone();
        let ip_text = t.fields[0].trim();
        if ip_text.is_empty() {
            return;
        }
        let ip: IpAddr = match ip_text.parse() {
            Ok(ip) => ip,
            Err(_) => {
                self.test.saved = Some(TestLine::problem(format!(
                    "{ip_text:?} is not an IP address"
                )));
                return;
            }
        };
        // With no sender typed, one in the first local domain: then the
        // lists decide (outbound), rather than domain-restrict-send.
        let assumed_sender = match (t.fields[1].trim(), config.local_domains.first()) {
            ("", Some(domain)) => Some(format!("someone@{domain}")),
            _ => None,
        };
        let sender_text = assumed_sender.as_deref().unwrap_or(t.fields[1].trim());
        let rcpt_text = match t.fields[2].trim() {
            "" => DEFAULT_TEST_RECIPIENT,
            r => r,
        };
        let user = t.fields[3].trim();
        let query = CheckQuery {
            ip,
            user: (!user.is_empty()).then_some(user),
            sender: sender_text,
            recipients: vec![rcpt_text],
        };
        let line = |checked: Checked| {
            checked.decisions.into_iter().next().map(|(_, d)| TestLine {
                text: format!("{} {d}", d.reply.code),
                verdict: Some(d.verdict),
            })
        };
        let checked = match check(saved, &query) {
            Ok(checked) => checked,
            Err(e) => {
                self.test.saved = Some(TestLine::problem(e.to_string()));
                return;
            }
        };
        let mut notes = Vec::new();
        if let Some(s) = &assumed_sender {
            notes.push(format!("sender {s} assumed"));
        }
        if t.fields[2].trim().is_empty() {
            notes.push(format!("recipient {DEFAULT_TEST_RECIPIENT} assumed"));
        }
        if let Some(why) = &checked.login_refused {
            notes.push(format!("{why}: decided as not authenticated"));
        }
        self.test.note = (!notes.is_empty()).then(|| notes.join("; "));
        self.test.saved = line(checked);
        if self.is_dirty() {
            if self.edited_policy.is_none() {
                let mut edited = config.clone();
                edited.allow = self.allow_check.texts();
                edited.deny = self.deny_check.texts();
                self.edited_policy = Policy::compile(&edited).ok().map(Arc::new);
            }
            self.test.edited = self
                .edited_policy
                .as_deref()
                .and_then(|p| check(p, &query).ok())
                .and_then(line);
        }
    }
}
