//! The DATA phase: finds the end of the message, removes dot-stuffing and
//! keeps the body within the size limit, fed chunks of any size.
//!
//! The message ends only at `<CRLF>.<CRLF>` (the CRLF before the dot may be
//! the one that ended the DATA command). A dot after a bare LF or a bare CR
//! never ends it: treating `\n.\n` or `\r.\r` as the end is how SMTP
//! smuggling works (CVE-2023-51764/51765/51766), where a relay and the
//! next hop disagree on where a message ends.

/// RFC 5321 4.5.3.1.6: a text line is at most 1000 octets with its CRLF.
pub const RFC_TEXT_LINE: usize = 1000;

/// What happens to a message whose body has a bare LF or a bare CR (one
/// not part of a CRLF pair). Either way the end of data is only ever
/// `<CRLF>.<CRLF>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BareLineEnding {
    /// Refuse the whole message at its end with `550 5.6.11`, the code
    /// large receivers use for it. The default: a bare line ending is what
    /// smuggling attempts are made of, and stating the problem in the
    /// bounce lets a legacy sender's owner fix it.
    #[default]
    Reject,
    /// Store each bare LF and each bare CR as CRLF, like Postfix's
    /// `smtpd_forbid_bare_newline = normalize`, for legacy devices that
    /// cannot be fixed. The delivery side must dot-stuff as always, so a
    /// line that became `.` is sent as `..`.
    Normalize,
}

/// Where the scanner is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScanState {
    /// Right after a CRLF (or at the start of the data).
    LineStart,
    /// A `.` at the start of a line.
    Dot,
    /// `.` then CR at the start of a line: the end, if LF follows.
    DotCr,
    /// Inside a line.
    InLine,
    /// A CR inside a line: a line end if LF follows, else a bare CR.
    Cr,
    /// The end was seen; nothing more is read.
    Ended,
}

/// Reads one message body. Holds at most `max_size` body bytes, however
/// much the client sends.
#[derive(Debug)]
pub struct DataReader {
    state: ScanState,
    body: Vec<u8>,
    max_size: u64,
    /// Body bytes seen after unstuffing, stored or not.
    size: u64,
    bare_count: usize,
    max_text_line: usize,
    line_len: usize,
    long_lines: usize,
    line_too_long: bool,
}

/// The message once its end was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataEnd {
    /// The unstuffed body, lines ending in CRLF. Empty when `too_big`.
    pub body: Vec<u8>,
    /// The body was larger than the limit; the rest was read and dropped.
    pub too_big: bool,
    /// How many bare CRs and LFs the body had.
    pub bare_line_endings: usize,
    /// How many lines were longer than RFC 5321's 1000 (accepted).
    pub long_lines: usize,
    /// A line was longer than the enforced `max_text_line`.
    pub line_too_long: bool,
}

impl DataReader {
    /// `max_text_line` counts the CRLF: a longer line makes
    /// [`DataEnd::line_too_long`]; lines between 1000 and it are only
    /// counted.
    /// Bare CRs and LFs are always stored as CRLF and counted: whether
    /// that is fine ([`BareLineEnding`]) is the session's call.
    pub fn new(max_size: u64, max_text_line: usize) -> Self {
        DataReader {
            state: ScanState::LineStart,
            body: Vec::new(),
            max_size,
            size: 0,
            bare_count: 0,
            max_text_line,
            line_len: 0,
            long_lines: 0,
            line_too_long: false,
        }
    }

    /// Reads a chunk. Returns `Some(n)` when the end of data was found
    /// after the first `n` bytes of the chunk: the bytes after them are
    /// the client's next commands (pipelined after the final dot). Returns
    /// `None` when the whole chunk was body.
    pub fn feed(&mut self, chunk: &[u8]) -> Option<usize> {
        if self.state == ScanState::Ended {
            return Some(0);
        }
        let mut i = 0;
        while let Some(&byte) = chunk.get(i) {
            if self.state == ScanState::InLine {
                // Fast path: copy the run up to the next CR or LF at once.
                let rest = chunk.get(i..).unwrap_or_default();
                let run = rest
                    .iter()
                    .position(|&b| b == b'\r' || b == b'\n')
                    .unwrap_or(rest.len());
                if run > 0 {
                    self.emit_text(rest.get(..run).unwrap_or_default());
                    i += run;
                    continue;
                }
            }
            self.step(byte);
            i += 1;
            if self.state == ScanState::Ended {
                return Some(i);
            }
        }
        None
    }

    /// The body bytes held so far, taken out (to be written elsewhere);
    /// counting goes on, so the size limit still holds.
    pub fn take_body(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.body)
    }

    /// Body bytes held now.
    pub fn held(&self) -> usize {
        self.body.len()
    }

    /// Whether the end of data has been seen.
    pub fn is_done(&self) -> bool {
        self.state == ScanState::Ended
    }

    /// The outcome, once [`feed`](Self::feed) returned `Some`.
    pub fn finish(self) -> DataEnd {
        let too_big = self.size > self.max_size;
        DataEnd {
            body: if too_big { Vec::new() } else { self.body },
            too_big,
            bare_line_endings: self.bare_count,
            long_lines: self.long_lines,
            line_too_long: self.line_too_long,
        }
    }

    fn step(&mut self, byte: u8) {
        use ScanState::*;
        self.state = match (self.state, byte) {
            (Ended, _) => Ended,
            (LineStart, b'.') => Dot,
            (Dot, b'\r') => DotCr,
            (DotCr, b'\n') => Ended,
            // `.x` at a line start: the dot was stuffing; drop it.
            (Dot, _) => return self.step_in_line(byte),
            // `.` CR x: drop the stuffing dot; the CR was bare.
            (DotCr, _) => {
                self.bare_line_ending();
                return self.step_in_line(byte);
            }
            (Cr, b'\n') => {
                self.end_line();
                LineStart
            }
            (Cr, _) => {
                self.bare_line_ending();
                return self.step_in_line(byte);
            }
            (LineStart | InLine, _) => return self.step_in_line(byte),
        };
    }

    /// One byte inside a line (never a line start, so never dot handling).
    fn step_in_line(&mut self, byte: u8) {
        self.state = match byte {
            b'\r' => ScanState::Cr,
            b'\n' => {
                self.bare_line_ending();
                ScanState::InLine
            }
            _ => {
                self.emit_text(&[byte]);
                ScanState::InLine
            }
        };
    }

    /// A bare CR or LF: counted, and stored as CRLF. The
    /// next byte is still not at a line start, so a dot there is data and
    /// the end of data stays `<CRLF>.<CRLF>` only.
    fn bare_line_ending(&mut self) {
        self.bare_count = self.bare_count.saturating_add(1);
        self.end_line();
    }

    fn end_line(&mut self) {
        let len = self.line_len.saturating_add(2);
        if len > RFC_TEXT_LINE {
            self.long_lines = self.long_lines.saturating_add(1);
        }
        if len > self.max_text_line {
            self.line_too_long = true;
        }
        self.line_len = 0;
        self.store(b"\r\n");
    }

    fn emit_text(&mut self, text: &[u8]) {
        self.line_len = self.line_len.saturating_add(text.len());
        self.store(text);
    }

    /// Stores body bytes while under the limit; past it, only counts them.
    fn store(&mut self, bytes: &[u8]) {
        let len = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        self.size = self.size.saturating_add(len);
        if self.size <= self.max_size {
            self.body.extend_from_slice(bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: u64 = 1 << 20;

    fn read_all(input: &[u8]) -> (Option<usize>, DataEnd) {
        let mut r = DataReader::new(BIG, 1000);
        let consumed = r.feed(input);
        (consumed, r.finish())
    }

    #[test]
    fn ends_at_crlf_dot_crlf_and_reports_the_rest() {
        let input = b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n";
        let (consumed, end) = read_all(input);
        assert_eq!(consumed, Some(input.len() - b"QUIT\r\n".len()));
        assert_eq!(end.body, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(end.bare_line_endings, 0);
    }

    #[test]
    fn empty_message() {
        let (consumed, end) = read_all(b".\r\n");
        assert_eq!(consumed, Some(3));
        assert!(end.body.is_empty());
    }

    #[test]
    fn dot_unstuffing() {
        let (_, end) = read_all(b"..leading\r\n...\r\n..\r\nmid.dle\r\n.\r\n");
        assert_eq!(end.body, b".leading\r\n..\r\n.\r\nmid.dle\r\n");
    }

    #[test]
    fn smuggling_sequences_do_not_end_the_message() {
        for evil in [
            &b"a\n.\nMAIL FROM:<x@y>\r\n"[..],
            b"a\r.\rMAIL FROM:<x@y>\r\n",
            b"a\r\n.\nMAIL FROM:<x@y>\r\n",
            b"a\n.\r\nMAIL FROM:<x@y>\r\n",
            b"a\r\n.\rMAIL FROM:<x@y>\r\n",
        ] {
            let mut r = DataReader::new(BIG, 1000);
            assert_eq!(r.feed(evil), None, "{evil:?} ended the message");
            assert_eq!(r.feed(b".\r\n"), Some(3));
            let end = r.finish();
            assert!(end.bare_line_endings > 0, "{evil:?}");
        }
    }

    #[test]
    fn bare_line_endings_normalised() {
        let (consumed, end) = read_all(b"a\nb\rc\r\n\n.\n.\r\n.\r\n");
        assert_eq!(consumed, Some(16));
        // `\n.\n` stays data; the dot after a bare LF is not stuffing.
        assert_eq!(end.body, b"a\r\nb\r\nc\r\n\r\n.\r\n.\r\n");
        assert_eq!(end.bare_line_endings, 4);
    }

    #[test]
    fn size_limit_while_streaming() {
        let mut r = DataReader::new(10, 1000);
        for _ in 0..1000 {
            assert_eq!(r.feed(b"0123456789\r\n"), None);
            assert!(r.body.len() <= 10);
        }
        assert_eq!(r.feed(b".\r\n"), Some(3));
        let end = r.finish();
        assert!(end.too_big);
        assert!(end.body.is_empty());

        let mut exact = DataReader::new(10, 1000);
        assert_eq!(exact.feed(b"12345678\r\n.\r\n"), Some(13));
        assert!(!exact.finish().too_big);
    }

    #[test]
    fn long_lines_are_counted_and_over_the_limit_flagged() {
        let mut input = vec![b'x'; 1200];
        input.extend_from_slice(b"\r\nshort\r\n.\r\n");
        let mut r = DataReader::new(BIG, 1202);
        assert!(r.feed(&input).is_some());
        let end = r.finish();
        assert_eq!(end.long_lines, 1);
        assert!(!end.line_too_long);
        assert_eq!(end.body.len(), 1200 + 2 + 7);

        let mut strict = DataReader::new(BIG, 1201);
        assert!(strict.feed(&input).is_some());
        assert!(strict.finish().line_too_long);
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let input = b"..a\r\nb\r\r\n.\r\r\n.x\r\n.\r\nrest";
        let (whole_n, whole) = read_all(input);
        let mut r = DataReader::new(BIG, 1000);
        let mut total = 0;
        for b in input.iter() {
            total += 1;
            if let Some(n) = r.feed(std::slice::from_ref(b)) {
                assert_eq!(n, 1);
                break;
            }
        }
        assert_eq!(Some(total), whole_n);
        assert_eq!(r.finish(), whole);
    }
}
