//! What each session is doing, written by the session itself.
//!
//! A session keeps its stage, HELO name, sender, byte count and recent
//! command lines on its own [`Board`]: an uncontended lock and a copy per
//! line, no event, no channel, no formatting. The live feed reads the
//! boards that changed when a console asks for the live picture (four
//! times a second), and a dialogue is made from the transcript only when a
//! console opens it. So an attached console costs a session nothing per
//! command line (command events are only emitted while some console
//! follows a dialogue).
//!
//! Bounded: [`TRANSCRIPT_LINES`] lines of at most [`LINE_CHARS`]
//! characters per open session, and the boards of the last
//! [`CLOSED_BOARDS`] closed sessions.

use crate::events::{Event, Stamped};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// Command lines kept per session.
pub const TRANSCRIPT_LINES: usize = 64;
/// Characters kept of a command line.
pub const LINE_CHARS: usize = 200;
/// Boards of closed sessions kept (their dialogue stays readable while
/// the Live table shows them).
pub const CLOSED_BOARDS: usize = 2 * crate::live::CLOSED_KEPT;
const SHARDS: usize = 16;

/// `s` cut to at most `chars` characters.
fn head(s: &str, chars: usize) -> &str {
    s.char_indices().nth(chars).map_or(s, |(i, _)| &s[..i])
}

/// `s` cut to at most `chars` characters, in place.
fn truncate_chars(s: &mut String, chars: usize) {
    if s.len() > chars {
        let cut = head(s, chars).len();
        s.truncate(cut);
    }
}

/// The last line of a reply as a dialogue shows it: `554 5.7.1 Relay
/// access denied`. Laid out into the board's own buffer, so a command
/// costs no string of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplyLine<'a> {
    pub code: Option<u16>,
    pub status: Option<&'a str>,
    pub text: &'a str,
}

impl ReplyLine<'_> {
    fn write_into(&self, out: &mut String) {
        out.reserve(4 + self.status.map_or(0, |s| s.len() + 1) + self.text.len());
        if let Some(code) = self.code {
            for d in [code / 100 % 10, code / 10 % 10, code % 10] {
                out.push(char::from(b'0' + d as u8));
            }
            out.push(' ');
        }
        if let Some(status) = self.status {
            out.push_str(status);
            out.push(' ');
        }
        out.push_str(self.text);
    }
}

impl std::fmt::Display for ReplyLine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut s = String::new();
        self.write_into(&mut s);
        f.write_str(&s)
    }
}

/// The Live table's columns a session keeps up to date.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Columns {
    /// The last command verb in lower case, `accepted` after a message.
    pub stage: String,
    pub helo: Option<String>,
    pub mail_from: Option<String>,
    /// Bytes received: command lines and message data.
    pub bytes: u64,
}

/// One command line and the last line of its reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TranscriptLine {
    pub at: SystemTime,
    pub line: String,
    pub reply: String,
}

#[derive(Debug, Default)]
struct Page {
    columns: Columns,
    transcript: VecDeque<TranscriptLine>,
}

/// One session's board.
#[derive(Debug)]
pub struct Board {
    session: u64,
    changed: AtomicBool,
    page: Mutex<Page>,
}

impl Board {
    fn page(&self) -> MutexGuard<'_, Page> {
        self.page.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a command line as the dialogue shows it (credentials already
    /// masked) and the last line of its reply.
    pub fn command(&self, line: &str, reply: ReplyLine<'_>) {
        let at = SystemTime::now();
        let mut page = self.page();
        let Page {
            columns,
            transcript,
        } = &mut *page;
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default();
        if verb.eq_ignore_ascii_case("EHLO") || verb.eq_ignore_ascii_case("HELO") {
            columns.helo = words.next().map(|w| head(w, LINE_CHARS).to_string());
        } else if verb.eq_ignore_ascii_case("MAIL") {
            columns.mail_from = Some(crate::live::mail_from(line));
        }
        if !verb.is_empty()
            && !verb.starts_with(['*', '('])
            && !columns.stage.eq_ignore_ascii_case(verb)
        {
            columns.stage.clear();
            columns
                .stage
                .extend(verb.chars().take(16).map(|c| c.to_ascii_lowercase()));
        }
        let line = head(line, LINE_CHARS);
        // Full: the oldest line's buffers take the new one.
        let mut entry = match transcript.len() >= TRANSCRIPT_LINES {
            true => transcript.pop_front(),
            false => None,
        }
        .unwrap_or_else(|| TranscriptLine {
            at,
            line: String::new(),
            reply: String::new(),
        });
        entry.at = at;
        entry.line.clear();
        entry.line.push_str(line);
        entry.reply.clear();
        reply.write_into(&mut entry.reply);
        truncate_chars(&mut entry.reply, LINE_CHARS);
        if transcript.capacity() == 0 {
            transcript.reserve(8);
        }
        transcript.push_back(entry);
        drop(page);
        self.changed.store(true, Ordering::Release);
    }

    /// Sets the stage shown (`accepted` after a message, for example).
    pub fn stage(&self, stage: &str) {
        let mut page = self.page();
        if page.columns.stage != stage {
            page.columns.stage.clear();
            page.columns.stage.push_str(stage);
        }
        drop(page);
        self.changed.store(true, Ordering::Release);
    }

    /// Counts bytes received.
    pub fn received(&self, bytes: usize) {
        self.page().columns.bytes += bytes as u64;
        self.changed.store(true, Ordering::Release);
    }

    /// The columns, if they changed since the last call.
    pub fn take_changes(&self) -> Option<Columns> {
        self.changed
            .swap(false, Ordering::AcqRel)
            .then(|| self.page().columns.clone())
    }

    /// The transcript as dialogue events (made only when asked for).
    pub fn transcript(&self) -> Vec<Stamped> {
        self.page()
            .transcript
            .iter()
            .map(|t| Stamped {
                at: t.at,
                event: Arc::new(Event::Command {
                    session: self.session,
                    line: t.line.clone(),
                    reply: t.reply.clone(),
                }),
            })
            .collect()
    }
}

/// Every open session's board, and the last closed ones.
#[derive(Debug)]
pub struct SessionBoards {
    open: Vec<Mutex<HashMap<u64, Arc<Board>>>>,
    closed: Mutex<VecDeque<Arc<Board>>>,
}

impl Default for SessionBoards {
    fn default() -> Self {
        SessionBoards {
            open: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            closed: Mutex::new(VecDeque::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SessionBoards {
    fn shard(&self, session: u64) -> &Mutex<HashMap<u64, Arc<Board>>> {
        &self.open[session as usize % SHARDS]
    }

    /// A board for a session that opens; it moves to the closed ones when
    /// the returned handle is dropped.
    pub fn open(self: &Arc<Self>, session: u64) -> BoardHandle {
        let board = Arc::new(Board {
            session,
            changed: AtomicBool::new(false),
            page: Mutex::new(Page::default()),
        });
        lock(self.shard(session)).insert(session, Arc::clone(&board));
        BoardHandle {
            boards: Arc::clone(self),
            board,
        }
    }

    fn close(&self, session: u64) {
        let Some(board) = lock(self.shard(session)).remove(&session) else {
            return;
        };
        let mut closed = lock(&self.closed);
        if closed.len() >= CLOSED_BOARDS {
            closed.pop_front();
        }
        closed.push_back(board);
    }

    /// Calls `f` with every board whose columns changed since the last
    /// call, for the sessions `wanted` says the caller shows. A board not
    /// wanted yet (its opening not seen) keeps its changes for next time.
    pub fn changes(&self, wanted: impl Fn(u64) -> bool, mut f: impl FnMut(u64, Columns)) {
        for shard in &self.open {
            for (session, board) in lock(shard).iter() {
                if wanted(*session)
                    && let Some(c) = board.take_changes()
                {
                    f(*session, c);
                }
            }
        }
        for board in lock(&self.closed).iter() {
            if wanted(board.session)
                && let Some(c) = board.take_changes()
            {
                f(board.session, c);
            }
        }
    }

    /// A session's board, open or recently closed.
    pub fn get(&self, session: u64) -> Option<Arc<Board>> {
        if let Some(b) = lock(self.shard(session)).get(&session) {
            return Some(Arc::clone(b));
        }
        lock(&self.closed)
            .iter()
            .rev()
            .find(|b| b.session == session)
            .cloned()
    }

    /// Open sessions' boards.
    pub fn open_count(&self) -> usize {
        self.open.iter().map(|s| lock(s).len()).sum()
    }
}

/// A session's hold on its board.
#[derive(Debug)]
pub struct BoardHandle {
    boards: Arc<SessionBoards>,
    board: Arc<Board>,
}

impl std::ops::Deref for BoardHandle {
    type Target = Board;
    fn deref(&self) -> &Board {
        &self.board
    }
}

impl Drop for BoardHandle {
    fn drop(&mut self) {
        self.boards.close(self.board.session);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn said(text: &str) -> ReplyLine<'_> {
        ReplyLine {
            text,
            ..Default::default()
        }
    }

    #[test]
    fn columns_follow_the_commands_and_are_taken_once() {
        let boards = Arc::new(SessionBoards::default());
        let b = boards.open(7);
        b.command("EHLO client.example", said("250 relaygate"));
        b.command("MAIL FROM:<a@example.com> SIZE=10", said("250 2.1.0 OK"));
        b.received(40);
        let mut seen = Vec::new();
        boards.changes(|_| true, |s, c| seen.push((s, c)));
        assert_eq!(seen.len(), 1);
        let (session, c) = &seen[0];
        assert_eq!(*session, 7);
        assert_eq!(c.stage, "mail");
        assert_eq!(c.helo.as_deref(), Some("client.example"));
        assert_eq!(c.mail_from.as_deref(), Some("a@example.com"));
        assert_eq!(c.bytes, 40);
        seen.clear();
        boards.changes(|_| true, |s, c| seen.push((s, c)));
        assert!(seen.is_empty(), "taken once");
    }

    #[test]
    fn unwanted_changes_wait_and_closed_boards_stay_readable() {
        let boards = Arc::new(SessionBoards::default());
        let b = boards.open(3);
        b.command("HELO x", said("250 ok"));
        let mut n = 0;
        boards.changes(|_| false, |_, _| n += 1);
        assert_eq!(n, 0);
        drop(b);
        assert_eq!(boards.open_count(), 0);
        boards.changes(|s| s == 3, |_, _| n += 1);
        assert_eq!(n, 1, "the closed board's last changes are still read");
        let dialogue = boards.get(3).map(|b| b.transcript()).unwrap_or_default();
        assert_eq!(dialogue.len(), 1);
        assert!(matches!(&*dialogue[0].event, Event::Command { line, .. } if line == "HELO x"));
    }

    #[test]
    fn a_reply_line_reads_as_the_client_saw_it() {
        let line = |code, status, text| ReplyLine { code, status, text }.to_string();
        assert_eq!(
            line(Some(554), Some("5.7.1"), "Relay access denied"),
            "554 5.7.1 Relay access denied"
        );
        assert_eq!(line(Some(220), None, "vm ESMTP"), "220 vm ESMTP");
        assert_eq!(line(Some(354), None, ""), "354 ");
        assert_eq!(line(None, None, "250 2.0.0 Ok"), "250 2.0.0 Ok");
    }

    #[test]
    fn bounded_per_session_and_in_closed_boards() {
        let boards = Arc::new(SessionBoards::default());
        let b = boards.open(1);
        let long = "x".repeat(10_000);
        for i in 0..TRANSCRIPT_LINES * 3 {
            b.command(&format!("RCPT TO:<{i}@example.com> {long}"), said(&long));
        }
        let t = b.transcript();
        assert_eq!(t.len(), TRANSCRIPT_LINES);
        let Event::Command { line, reply, .. } = &*t[TRANSCRIPT_LINES - 1].event else {
            panic!("a command line");
        };
        assert!(line.starts_with(&format!("RCPT TO:<{}@", TRANSCRIPT_LINES * 3 - 1)));
        assert_eq!(line.chars().count(), LINE_CHARS);
        assert_eq!(reply.chars().count(), LINE_CHARS);
        drop(b);
        for s in 10..(10 + CLOSED_BOARDS as u64 * 2) {
            drop(boards.open(s));
        }
        assert!(boards.get(1).is_none(), "the oldest closed board is gone");
        assert!(boards.get(10 + CLOSED_BOARDS as u64 * 2 - 1).is_some());
    }
}
