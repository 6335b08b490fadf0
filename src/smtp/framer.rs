//! Framing and deadlines, without I/O: the bytes a client sent, cut into
//! command lines (or handed over whole inside DATA), and the moment by
//! which more must have arrived. Fed bytes and the time they came; the
//! tokio loop only reads, writes, and waits until [`Framer::deadline`].
//!
//! The deadlines are for whole units of work, not for silence, so a client
//! trickling a byte every few seconds cannot hold a session:
//! - a command line must arrive whole within `command-timeout` of the
//!   moment the client was free to send it (our last reply, or the first
//!   byte of a pipelined line);
//! - inside DATA every line must arrive within `data-timeout`, and the
//!   transfer as a whole must keep up `min-data-rate` bytes a second
//!   (after a first `data-timeout` of grace), as Postfix's
//!   smtpd_min_data_rate does.

use std::time::{Duration, Instant};

/// The limits a framer enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub command: Duration,
    pub data_line: Duration,
    /// Bytes per second a DATA transfer must average; 0: no minimum.
    pub min_data_rate: u64,
}

/// What came next in command mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A line, its CRLF (or bare LF) stripped.
    Line(Vec<u8>),
    /// A line longer than allowed went by; its bytes were dropped.
    Overlong,
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expired {
    Command,
    DataLine,
    DataRate,
}

impl Expired {
    /// Why the session ended, for its close event.
    pub fn describe(self) -> &'static str {
        match self {
            Expired::Command => "command timeout: no whole command line in time",
            Expired::DataLine => "data timeout: no whole message line in time",
            Expired::DataRate => "data too slow: below min-data-rate",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct DataClock {
    started: Instant,
    bytes: u64,
    line_since: Instant,
}

/// The input side of one session.
#[derive(Debug)]
pub struct Framer {
    timeouts: Timeouts,
    buf: Vec<u8>,
    start: usize,
    /// Inside a line that was too long: drop until its end.
    discarding: bool,
    /// When the client became free to send the command now expected.
    free_since: Instant,
    /// When the first unconsumed byte arrived (a pipelined line).
    pending_since: Option<Instant>,
    last_read: Instant,
    data: Option<DataClock>,
}

impl Framer {
    pub fn new(timeouts: Timeouts, now: Instant) -> Framer {
        Framer {
            timeouts,
            buf: Vec::new(),
            start: 0,
            discarding: false,
            free_since: now,
            pending_since: None,
            last_read: now,
            data: None,
        }
    }

    /// The buffer to read into (append only); then call [`received`].
    ///
    /// [`received`]: Framer::received
    pub fn buffer(&mut self) -> &mut Vec<u8> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= 4096 || (self.start > 0 && self.start * 2 >= self.buf.len()) {
            // Lines already taken go, or a client that always leaves a
            // partial line behind would grow the buffer for ever.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        if self.buf.is_empty() && self.buf.capacity() > 64 * 1024 {
            self.buf = Vec::new();
        }
        if self.buf.capacity() - self.buf.len() < 512 {
            self.buf
                .reserve(if self.buf.is_empty() { 1024 } else { 16 * 1024 });
        }
        &mut self.buf
    }

    /// `n` bytes were appended to the buffer at `now`.
    pub fn received(&mut self, n: usize, now: Instant) {
        if n == 0 {
            return;
        }
        let end = self.buf.len();
        let new = self.buf.get(end.saturating_sub(n)..).unwrap_or_default();
        if let Some(d) = &mut self.data {
            d.bytes += n as u64;
            if new.contains(&b'\n') {
                d.line_since = now;
            }
        } else if self.pending_since.is_none() && end - n == self.start {
            self.pending_since = Some(now);
        }
        self.last_read = now;
    }

    /// The next command line, if a whole one (or the end of an overlong
    /// one) is buffered. `max_len` counts the CRLF.
    pub fn next_line(&mut self, max_len: usize) -> Option<Frame> {
        let rest = self.buf.get(self.start..).unwrap_or_default();
        let Some(pos) = rest.iter().position(|&b| b == b'\n') else {
            if rest.len() > max_len {
                // Too long already: drop what we have, remember to skip on.
                self.discarding = true;
                self.start = self.buf.len();
            }
            return None;
        };
        let mut line = rest.get(..pos).unwrap_or_default();
        if let Some(stripped) = line.strip_suffix(b"\r") {
            line = stripped;
        }
        let frame = if std::mem::take(&mut self.discarding) || pos + 1 > max_len {
            Frame::Overlong
        } else {
            Frame::Line(line.to_vec())
        };
        self.start += pos + 1;
        // What is left was pipelined: it has been waiting since its read.
        self.pending_since = (self.start < self.buf.len()).then_some(self.last_read);
        Some(frame)
    }

    /// Bytes buffered for DATA.
    pub fn pending(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// `n` buffered bytes were taken as message data.
    pub fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.buf.len());
    }

    /// Drops everything buffered (bytes pipelined after STARTTLS must not
    /// be read as commands inside TLS).
    pub fn discard(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.discarding = false;
        self.pending_since = None;
    }

    /// We answered and wait for the client: the command deadline runs
    /// from now (unless a pipelined line is already waiting).
    pub fn replied(&mut self, now: Instant) {
        self.free_since = now;
    }

    /// DATA began (354 sent): message lines from now on.
    pub fn start_data(&mut self, now: Instant) {
        let buffered = self.pending().len() as u64;
        self.data = Some(DataClock {
            started: now,
            bytes: buffered,
            line_since: now,
        });
    }

    /// The end of data was read: commands again.
    pub fn end_data(&mut self, now: Instant) {
        self.data = None;
        self.free_since = now;
        self.pending_since = (self.start < self.buf.len()).then_some(now);
    }

    /// By when more input must arrive, and which limit that is.
    pub fn deadline(&self) -> (Instant, Expired) {
        match &self.data {
            Some(d) => {
                let line = d.line_since + self.timeouts.data_line;
                if self.timeouts.min_data_rate == 0 {
                    return (line, Expired::DataLine);
                }
                let allowed =
                    Duration::from_secs_f64(d.bytes as f64 / self.timeouts.min_data_rate as f64);
                let rate = d.started + self.timeouts.data_line + allowed;
                if rate < line {
                    (rate, Expired::DataRate)
                } else {
                    (line, Expired::DataLine)
                }
            }
            None => {
                // A line started before we were done answering counts from
                // when we were.
                let since = match self.pending_since {
                    Some(p) => p.max(self.free_since),
                    None => self.free_since,
                };
                (since + self.timeouts.command, Expired::Command)
            }
        }
    }

    /// Which deadline has passed at `now`, if any.
    pub fn expired(&self, now: Instant) -> Option<Expired> {
        let (at, which) = self.deadline();
        (now >= at).then_some(which)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        command: Duration::from_secs(5),
        data_line: Duration::from_secs(5),
        min_data_rate: 500,
    };

    fn feed(f: &mut Framer, bytes: &[u8], now: Instant) {
        f.buffer().extend_from_slice(bytes);
        f.received(bytes.len(), now);
    }

    fn secs(t0: Instant, s: f64) -> Instant {
        t0 + Duration::from_secs_f64(s)
    }

    #[test]
    fn lines_are_cut_at_lf_with_or_without_cr() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        feed(&mut f, b"EHLO a\r\nNOOP\nQU", t0);
        assert_eq!(f.next_line(512), Some(Frame::Line(b"EHLO a".to_vec())));
        assert_eq!(f.next_line(512), Some(Frame::Line(b"NOOP".to_vec())));
        assert_eq!(f.next_line(512), None);
        feed(&mut f, b"IT\r\n", t0);
        assert_eq!(f.next_line(512), Some(Frame::Line(b"QUIT".to_vec())));
    }

    #[test]
    fn an_overlong_line_is_dropped_whole_and_reported_once() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        feed(&mut f, &[b'x'; 600], t0);
        assert_eq!(f.next_line(512), None);
        assert!(f.pending().is_empty(), "the bytes are not kept");
        feed(&mut f, &[b'y'; 600], t0);
        assert_eq!(f.next_line(512), None);
        feed(&mut f, b"zz\r\nNOOP\r\n", t0);
        assert_eq!(f.next_line(512), Some(Frame::Overlong));
        assert_eq!(f.next_line(512), Some(Frame::Line(b"NOOP".to_vec())));
        // Exactly at the limit (CRLF included) is fine; one more is not.
        feed(&mut f, &[&[b'a'; 510][..], b"\r\n"].concat(), t0);
        assert!(matches!(f.next_line(512), Some(Frame::Line(_))));
        feed(&mut f, &[&[b'a'; 511][..], b"\r\n"].concat(), t0);
        assert_eq!(f.next_line(512), Some(Frame::Overlong));
    }

    #[test]
    fn a_command_trickled_a_byte_at_a_time_misses_its_deadline() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        // One byte every 2 s: each is "activity", none completes a line.
        for i in 0..3 {
            let now = secs(t0, 2.0 * i as f64);
            assert_eq!(f.expired(now), None, "at {i}");
            feed(&mut f, b"N", now);
            assert_eq!(f.next_line(512), None);
        }
        assert_eq!(f.expired(secs(t0, 4.9)), None);
        assert_eq!(f.expired(secs(t0, 5.0)), Some(Expired::Command));
    }

    #[test]
    fn the_command_clock_restarts_when_we_reply() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        feed(&mut f, b"NOOP\r\n", secs(t0, 4.0));
        assert!(f.next_line(512).is_some());
        f.replied(secs(t0, 4.5));
        assert_eq!(f.expired(secs(t0, 9.0)), None);
        assert_eq!(f.expired(secs(t0, 9.5)), Some(Expired::Command));
    }

    #[test]
    fn data_lines_each_have_a_deadline() {
        let t0 = Instant::now();
        let no_rate = Timeouts {
            min_data_rate: 0,
            ..T
        };
        let mut f = Framer::new(no_rate, t0);
        f.start_data(t0);
        feed(&mut f, b"line one\r\n", secs(t0, 4.0));
        f.consume(10);
        assert_eq!(f.expired(secs(t0, 8.9)), None);
        // Bytes without an end of line do not move the line clock.
        feed(&mut f, b"partial", secs(t0, 8.0));
        assert_eq!(f.expired(secs(t0, 9.0)), Some(Expired::DataLine));
    }

    #[test]
    fn data_below_the_minimum_rate_is_cut_off() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        f.start_data(t0);
        // Short lines every 2 s: each line is on time, the rate is not.
        let mut now = t0;
        for i in 0..100 {
            now = secs(t0, 2.0 * i as f64);
            if f.expired(now).is_some() {
                break;
            }
            feed(&mut f, b"x\r\n", now);
            f.consume(3);
        }
        assert_eq!(f.expired(now), Some(Expired::DataRate));
        assert!(now < secs(t0, 10.0), "cut off after {:?}", now - t0);
        // A fast transfer is never cut off by the rate.
        let mut f = Framer::new(T, t0);
        f.start_data(t0);
        for i in 0..100 {
            feed(&mut f, &[b'y'; 998], secs(t0, 0.1 * i as f64));
            feed(&mut f, b"\r\n", secs(t0, 0.1 * i as f64));
        }
        assert_eq!(f.expired(secs(t0, 10.0)), None);
    }

    #[test]
    fn a_client_always_leaving_a_partial_line_cannot_grow_the_buffer() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        let batch = [&b"NOOP\r\n".repeat(2700)[..], b"NO"].concat();
        let mut partial = false;
        for _ in 0..200 {
            let buf = f.buffer();
            if partial {
                buf.extend_from_slice(b"OP\r\n");
                f.received(4, t0);
            }
            let buf = f.buffer();
            buf.extend_from_slice(&batch);
            f.received(batch.len(), t0);
            while let Some(frame) = f.next_line(512) {
                assert_eq!(frame, Frame::Line(b"NOOP".to_vec()));
            }
            partial = true;
        }
        assert!(
            f.buffer().capacity() < 256 * 1024,
            "{}",
            f.buffer().capacity()
        );
    }

    #[test]
    fn discard_forgets_what_was_pipelined() {
        let t0 = Instant::now();
        let mut f = Framer::new(T, t0);
        feed(&mut f, b"STARTTLS\r\nMAIL FROM:<evil@x>\r\n", t0);
        assert!(f.next_line(512).is_some());
        f.discard();
        assert_eq!(f.next_line(512), None);
    }
}
