//! One SMTP command line (CRLF already stripped) parsed into a typed
//! [`Command`], or a [`CommandError`] that knows its reply.
//!
//! Lenient where real clients are sloppy (verb case, a space after
//! `FROM:`, brackets around the path, trailing blanks), strict where a
//! byte could smuggle something (NUL, bare CR or LF, other controls,
//! invalid UTF-8).

use super::reply::Reply;

/// An ESMTP parameter of MAIL or RCPT: `KEYWORD[=VALUE]` (RFC 5321 4.1.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    /// Upper-cased, so comparisons need no care.
    pub keyword: String,
    pub value: Option<String>,
}

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `path` is the raw path as sent (with brackets, if the client used
    /// them), for `policy::address::parse_reverse_path`.
    Mail {
        path: String,
        params: Vec<Param>,
    },
    /// `path` is raw, for `policy::address::parse_forward_path`.
    Rcpt {
        path: String,
        params: Vec<Param>,
    },
    Data,
    Rset,
    Noop,
    Quit,
    Help,
    Vrfy,
    Auth {
        /// Upper-cased mechanism name.
        mechanism: String,
        /// The base64 initial response (RFC 4954), `=` for an empty one.
        initial_response: Option<String>,
    },
    StartTls,
}

/// Why a line is not a command. Each maps to exactly one reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown command")]
    Unknown,
    /// NUL, bare CR or LF, another control character, or invalid UTF-8.
    #[error("invalid characters in command")]
    BadBytes,
    /// A known verb with bad arguments; the text is the usage.
    #[error("syntax: {0}")]
    Syntax(&'static str),
}

impl CommandError {
    pub fn reply(&self) -> Reply {
        match self {
            CommandError::Unknown => Reply::new(500, "5.5.2", "Error: command not recognized"),
            CommandError::BadBytes => Reply::new(
                500,
                "5.5.2",
                "Error: invalid characters in command (NUL, bare CR or LF, control or non-UTF-8)",
            ),
            CommandError::Syntax(usage) => Reply::new(501, "5.5.4", format!("Syntax: {usage}")),
        }
    }
}

/// Parses one command line. Never panics, whatever the bytes.
pub fn parse_command(line: &[u8]) -> Result<Command, CommandError> {
    // Tab is the one control character tolerated, as whitespace.
    if line.iter().any(|&b| b.is_ascii_control() && b != b'\t') {
        return Err(CommandError::BadBytes);
    }
    let text = std::str::from_utf8(line).map_err(|_| CommandError::BadBytes)?;
    let text = text.trim_matches(is_blank);
    let (verb, rest) = match text.split_once(is_blank) {
        Some((verb, rest)) => (verb, rest.trim_start_matches(is_blank)),
        None => (text, ""),
    };
    let no_args = |command: Command, usage: &'static str| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(CommandError::Syntax(usage))
        }
    };
    // Upper-cased on the stack: every verb fits in 8 bytes; a longer word
    // is no verb (`Unknown`).
    let mut upper = [0u8; 8];
    let verb = match upper.get_mut(..verb.len()) {
        Some(buf) => {
            buf.copy_from_slice(verb.as_bytes());
            buf.make_ascii_uppercase();
            std::str::from_utf8(buf).unwrap_or_default()
        }
        None => "",
    };
    match verb {
        "EHLO" => first_word(rest)
            .map(|d| Command::Ehlo(d.to_string()))
            .ok_or(CommandError::Syntax("EHLO hostname")),
        "HELO" => first_word(rest)
            .map(|d| Command::Helo(d.to_string()))
            .ok_or(CommandError::Syntax("HELO hostname")),
        "MAIL" => {
            const USAGE: &str = "MAIL FROM:<address> [parameters]";
            let after =
                strip_prefix_ignore_case(rest, "FROM:").ok_or(CommandError::Syntax(USAGE))?;
            let (path, params) = path_and_params(after).ok_or(CommandError::Syntax(USAGE))?;
            Ok(Command::Mail { path, params })
        }
        "RCPT" => {
            const USAGE: &str = "RCPT TO:<address> [parameters]";
            let after = strip_prefix_ignore_case(rest, "TO:").ok_or(CommandError::Syntax(USAGE))?;
            let (path, params) = path_and_params(after).ok_or(CommandError::Syntax(USAGE))?;
            if path == "<>" {
                return Err(CommandError::Syntax(USAGE));
            }
            Ok(Command::Rcpt { path, params })
        }
        "DATA" => no_args(Command::Data, "DATA"),
        "RSET" => no_args(Command::Rset, "RSET"),
        "QUIT" => no_args(Command::Quit, "QUIT"),
        "STARTTLS" => no_args(Command::StartTls, "STARTTLS"),
        // RFC 5321 allows an argument to NOOP and HELP; both are ignored.
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" if rest.is_empty() => Err(CommandError::Syntax("VRFY address")),
        "VRFY" => Ok(Command::Vrfy),
        "AUTH" => {
            const USAGE: &str = "AUTH mechanism [initial-response]";
            let mut words = rest.split(is_blank).filter(|w| !w.is_empty());
            let mechanism = words.next().ok_or(CommandError::Syntax(USAGE))?;
            let initial_response = words.next().map(str::to_string);
            if words.next().is_some() {
                return Err(CommandError::Syntax(USAGE));
            }
            Ok(Command::Auth {
                mechanism: mechanism.to_ascii_uppercase(),
                initial_response,
            })
        }
        _ => Err(CommandError::Unknown),
    }
}

fn is_blank(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn first_word(rest: &str) -> Option<&str> {
    rest.split(is_blank).find(|w| !w.is_empty())
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    let head = text.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| text.get(prefix.len()..))
        .flatten()
}

/// Splits `<path> KEY=VALUE ...` after `FROM:`/`TO:`. Blanks after the
/// colon are allowed (Postfix is as lenient), and so is a path without
/// brackets, which then ends at the first blank. A `>` inside a quoted
/// local part does not end a bracketed path.
fn path_and_params(after_colon: &str) -> Option<(String, Vec<Param>)> {
    let text = after_colon.trim_start_matches(is_blank);
    let path_end = if text.starts_with('<') {
        bracketed_path_end(text)?
    } else {
        text.find(is_blank).unwrap_or(text.len())
    };
    let path = text.get(..path_end)?;
    let rest = text.get(path_end..)?;
    if path.is_empty() {
        return None;
    }
    // Something glued to the closing bracket (`<a@b>x`) is not a parameter.
    if !rest.is_empty() && !rest.starts_with(is_blank) {
        return None;
    }
    let params = rest
        .split(is_blank)
        .filter(|w| !w.is_empty())
        .map(parse_param)
        .collect::<Option<Vec<_>>>()?;
    Some((path.to_string(), params))
}

/// The byte index just past the `>` that closes a path starting with `<`.
fn bracketed_path_end(text: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => return Some(i + 1),
            _ => {}
        }
    }
    None
}

/// `esmtp-keyword ["=" esmtp-value]`: the keyword starts with a letter or
/// digit and has only those and `-`; the value is printable, without `=`.
fn parse_param(word: &str) -> Option<Param> {
    let (keyword, value) = match word.split_once('=') {
        Some((k, v)) => (k, Some(v)),
        None => (word, None),
    };
    let keyword_ok = keyword
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && keyword
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-');
    let value_ok = value.is_none_or(|v| !v.is_empty() && !v.contains('='));
    (keyword_ok && value_ok).then(|| Param {
        keyword: keyword.to_ascii_uppercase(),
        value: value.map(str::to_string),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Command, CommandError> {
        parse_command(s.as_bytes())
    }

    fn code(s: &[u8]) -> u16 {
        parse_command(s).err().map_or(0, |e| e.reply().code)
    }

    #[test]
    fn verbs_are_case_insensitive() {
        assert_eq!(
            parse("ehlo client.example"),
            Ok(Command::Ehlo("client.example".into()))
        );
        assert_eq!(parse("HeLo  x "), Ok(Command::Helo("x".into())));
        assert_eq!(parse("data"), Ok(Command::Data));
        assert_eq!(parse("Quit"), Ok(Command::Quit));
        assert_eq!(parse("starttls"), Ok(Command::StartTls));
        assert_eq!(parse("NOOP anything"), Ok(Command::Noop));
        assert_eq!(parse("help me"), Ok(Command::Help));
        assert_eq!(parse("VRFY root"), Ok(Command::Vrfy));
        assert_eq!(parse("RSET"), Ok(Command::Rset));
    }

    #[test]
    fn mail_with_and_without_space_after_colon() {
        let want = Command::Mail {
            path: "<a@b.example>".into(),
            params: vec![],
        };
        assert_eq!(parse("MAIL FROM:<a@b.example>"), Ok(want.clone()));
        assert_eq!(parse("mail from: <a@b.example>"), Ok(want.clone()));
        assert_eq!(parse("MAIL FROM:<a@b.example>  "), Ok(want));
        assert_eq!(
            parse("MAIL FROM:a@b.example"),
            Ok(Command::Mail {
                path: "a@b.example".into(),
                params: vec![]
            })
        );
        assert_eq!(
            parse("MAIL FROM:<>"),
            Ok(Command::Mail {
                path: "<>".into(),
                params: vec![]
            })
        );
    }

    #[test]
    fn params_are_parsed() {
        assert_eq!(
            parse("MAIL FROM:<a@b> size=100 BODY=8BITMIME  SMTPUTF8"),
            Ok(Command::Mail {
                path: "<a@b>".into(),
                params: vec![
                    Param {
                        keyword: "SIZE".into(),
                        value: Some("100".into())
                    },
                    Param {
                        keyword: "BODY".into(),
                        value: Some("8BITMIME".into())
                    },
                    Param {
                        keyword: "SMTPUTF8".into(),
                        value: None
                    },
                ]
            })
        );
        assert_eq!(
            parse("RCPT TO:<\"odd>name\"@b> NOTIFY=NEVER"),
            Ok(Command::Rcpt {
                path: "<\"odd>name\"@b>".into(),
                params: vec![Param {
                    keyword: "NOTIFY".into(),
                    value: Some("NEVER".into())
                }]
            })
        );
    }

    #[test]
    fn syntax_errors_are_501() {
        for bad in [
            "EHLO",
            "HELO   ",
            "MAIL",
            "MAIL TO:<a@b>",
            "MAIL FROM:",
            "MAIL FROM:<a@b",
            "MAIL FROM:<a@b>x",
            "MAIL FROM:<a@b> =1",
            "MAIL FROM:<a@b> SIZE=",
            "MAIL FROM:<a@b> SIZE=1=2",
            "MAIL FROM:<a@b> -X",
            "RCPT TO:",
            "RCPT TO:<>",
            "RCPT FROM:<a@b>",
            "DATA now",
            "QUIT please",
            "RSET x",
            "STARTTLS x",
            "VRFY",
            "AUTH",
            "AUTH PLAIN a b",
        ] {
            assert_eq!(code(bad.as_bytes()), 501, "{bad:?}");
        }
    }

    #[test]
    fn unknown_and_garbage_are_500() {
        for bad in [
            &b"FOO"[..],
            b"",
            b"   ",
            b"MAILFROM:<a@b>",
            b"EHLO a\0b",
            b"EHLO a\rb",
            b"EHLO a\nb",
            b"\x01\x02\x03",
            b"EHLO \xff\xfe",
            b"\xc3\x28",
            b"MAIL FROM:<a@b>\x7f",
        ] {
            assert_eq!(code(bad), 500, "{bad:?}");
        }
    }

    #[test]
    fn auth_forms() {
        assert_eq!(
            parse("auth plain AGZvbwBiYXI="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial_response: Some("AGZvbwBiYXI=".into())
            })
        );
        assert_eq!(
            parse("AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial_response: None
            })
        );
    }

    #[test]
    fn multibyte_text_does_not_panic() {
        for s in [
            "MAIL FROM:ü",
            "MAIL FROM:<ü@ü>",
            "RCPT ТО:<a@b>",
            "ÉHLO x",
            "MAIL FRÖM:<a@b>",
        ] {
            let _ = parse(s);
        }
    }
}
