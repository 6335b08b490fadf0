//! The Received: trace header (RFC 5321 4.4) relaygate prepends to every
//! accepted message, with the protocol names of RFC 3848.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

/// What the Received: header records about a session.
pub struct TraceInfo<'a> {
    pub helo: &'a str,
    pub peer: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    pub tls: bool,
    pub authenticated: bool,
    pub queue_id: &'a str,
    /// Named in the header only when the message has one recipient.
    pub single_recipient: Option<&'a str>,
    pub at: SystemTime,
}

/// `Received: from helo ([ip]) by host (relaygate) with ESMTPSA id X for <r>; date`
pub fn received_header(t: &TraceInfo<'_>) -> String {
    let proto = match (t.esmtp, t.tls, t.authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, true, false) => "ESMTPS",
        (true, false, true) => "ESMTPA",
        (true, true, true) => "ESMTPSA",
    };
    let literal = match t.peer {
        IpAddr::V4(v4) => format!("[{v4}]"),
        IpAddr::V6(v6) => format!("[IPv6:{v6}]"),
    };
    let helo: String = t
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(100)
        .collect();
    let mut h = format!(
        "Received: from {helo} ({literal})\r\n\tby {} (relaygate) with {proto} id {}",
        t.hostname, t.queue_id
    );
    if let Some(r) = t.single_recipient {
        h.push_str(&format!("\r\n\tfor <{r}>"));
    }
    h.push_str(&format!("; {}\r\n", rfc5322_date(t.at)));
    h
}

/// An RFC 5322 date in UTC: `Mon, 23 Nov 2026 21:07:38 +0000`.
pub fn rfc5322_date(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {d} {} {y} {:02}:{:02}:{:02} +0000",
        WEEKDAYS[days.rem_euclid(7) as usize],
        MONTHS[(m - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day): Howard Hinnant's algorithm.
pub fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        let at = UNIX_EPOCH + Duration::from_secs(1_795_468_058);
        assert_eq!(rfc5322_date(at), "Mon, 23 Nov 2026 21:07:38 +0000");
        assert_eq!(rfc5322_date(UNIX_EPOCH), "Thu, 1 Jan 1970 00:00:00 +0000");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc5322_date(leap), "Tue, 29 Feb 2000 00:00:00 +0000");
    }

    #[test]
    fn header() {
        let h = received_header(&TraceInfo {
            helo: "client.example\r\nX-Injected: 1",
            peer: "192.0.2.7".parse().unwrap(),
            hostname: "gw.example.com",
            esmtp: true,
            tls: true,
            authenticated: true,
            queue_id: "ABC",
            single_recipient: Some("r@far.test"),
            at: UNIX_EPOCH,
        });
        assert_eq!(
            h,
            "Received: from client.exampleX-Injected:1 ([192.0.2.7])\r\n\tby gw.example.com (relaygate) with ESMTPSA id ABC\r\n\tfor <r@far.test>; Thu, 1 Jan 1970 00:00:00 +0000\r\n"
        );
    }
}
