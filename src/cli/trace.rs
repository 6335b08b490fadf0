//! `relaygate trace QUERY`: a message's whole story from the event log,
//! and where it stands in the queue now.

use crate::decision_log::{DecisionLog, log_path_for};
use crate::events::describe;
use crate::spool::{SpoolReader, spool_path_for};
use crate::trace::{Story, TraceQuery};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Debug, clap::Args)]
pub struct TraceArgs {
    /// A queue id, client IP address, login, sender or recipient address.
    pub query: Option<String>,
    /// Only this queue id.
    #[arg(long)]
    pub id: Option<String>,
    /// Only sessions from this client IP address.
    #[arg(long, value_parser = ip_text)]
    pub ip: Option<String>,
    /// Only this login.
    #[arg(long)]
    pub login: Option<String>,
    /// Only this sender address.
    #[arg(long)]
    pub from: Option<String>,
    /// Only this recipient address.
    #[arg(long)]
    pub to: Option<String>,
    /// From this moment: an age (`90m`, `2h`, `3d`) or a UTC date and time
    /// (`2026-11-26`, `2026-11-26T14:05`).
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Up to this moment (same forms as --since).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// One JSON object per story, a line each.
    #[arg(long)]
    pub json: bool,
}

/// An IP address in its usual written form (as the log keeps it), once
/// it parses as one (a typo is bad input, exit 2, not "nothing matches").
fn ip_text(text: &str) -> Result<String, String> {
    text.parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| format!("{text:?} is not an IP address"))
}

/// Exit 0 with stories, 1 when nothing matched, 2 on bad input.
pub fn run(db: &Path, args: TraceArgs) -> anyhow::Result<ExitCode> {
    let now = SystemTime::now();
    let query = TraceQuery {
        any: args.query,
        id: args.id,
        ip: args.ip,
        login: args.login,
        from: args.from,
        to: args.to,
        since_ms: args.since.as_deref().map(|w| moment(w, now)).transpose()?,
        until_ms: args.until.as_deref().map(|w| moment(w, now)).transpose()?,
    };
    if query.is_empty() {
        anyhow::bail!(
            "say what to trace: a queue id, address, IP or login (or --id, --from, --to, --ip, --login)"
        );
    }
    let log_path = log_path_for(db);
    // Not the service's user: said plainly, not as SQLite's "error 14".
    crate::store::check_db_path(&log_path)?;
    if !log_path.exists() {
        anyhow::bail!("no event log at {} yet", log_path.display());
    }
    let log = DecisionLog::open_read_only(&log_path)?;
    let stories = log.trace(&query)?;
    if stories.is_empty() {
        eprintln!("nothing in the event log matches");
        return Ok(ExitCode::from(1));
    }
    let spool = SpoolReader::open(&spool_path_for(db)).ok();
    let now_s = now
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for story in &stories {
        let queue = crate::trace::queue_states(story, spool.as_ref(), now_s);
        if args.json {
            println!("{}", serde_json::to_string(&json_story(story, &queue))?);
        } else {
            print_story(story, &queue);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn json_story(story: &Story, queue: &[String]) -> serde_json::Value {
    serde_json::json!({
        "session": story.session,
        "messages": story.messages,
        "queue": queue,
        "events": story.events.iter().map(|e| serde_json::json!({
            "at_ms": crate::live::epoch_ms(e.at),
            "text": describe(&e.event).text,
            "event": e.event.as_ref(),
        })).collect::<Vec<_>>(),
    })
}

fn print_story(story: &Story, queue: &[String]) {
    for line in crate::trace::render(story, queue) {
        println!("{line}");
    }
    println!();
}

/// An age before `now` (`90m`, `2h`, `3d`, `45s`) or a UTC date
/// (`YYYY-MM-DD`, optionally `THH:MM` or `THH:MM:SS`, optionally `Z`), as
/// ms since the epoch.
pub fn moment(when: &str, now: SystemTime) -> anyhow::Result<i64> {
    let w = when.trim();
    let bad = || {
        anyhow::anyhow!("{when:?} is neither an age (90m, 2h, 3d) nor a date (2026-11-26T14:05)")
    };
    if let Some(unit) = w.chars().last().filter(|c| c.is_ascii_alphabetic())
        && w.len() > 1
        && w[..w.len() - 1].bytes().all(|b| b.is_ascii_digit())
    {
        let n: u64 = w[..w.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => n,
            'm' => n.saturating_mul(60),
            'h' => n.saturating_mul(3600),
            'd' => n.saturating_mul(86_400),
            _ => return Err(bad()),
        };
        let at = now
            .checked_sub(Duration::from_secs(secs))
            .unwrap_or(UNIX_EPOCH);
        return Ok(crate::live::epoch_ms(at));
    }
    let w = w.strip_suffix('Z').unwrap_or(w);
    let (date, time) = w.split_once('T').unwrap_or((w, "00:00"));
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || !(2..=3).contains(&t.len()) {
        return Err(bad());
    }
    let (y, mo, da) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, mi, s) = (num(t[0])?, num(t[1])?, t.get(2).map_or(Ok(0), |s| num(s))?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || s > 60 {
        return Err(bad());
    }
    Ok((days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s) * 1000)
}

/// (year, month, day) to days since 1970-01-01: Howard Hinnant's algorithm.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_ages_or_utc_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(1_795_700_854);
        assert_eq!(moment("2h", now).unwrap(), (1_795_700_854 - 7200) * 1000);
        assert_eq!(
            moment("3d", now).unwrap(),
            (1_795_700_854 - 3 * 86_400) * 1000
        );
        assert_eq!(moment("2026-11-26", now).unwrap(), 1_795_651_200_000);
        assert_eq!(
            moment("2026-11-26T13:47:34Z", now).unwrap(),
            1_795_700_854_000
        );
        assert_eq!(moment("1970-01-01T00:00", now).unwrap(), 0);
        for bad in ["yesterday", "2026-13-01", "5x", "2026-11", "h"] {
            assert!(moment(bad, now).is_err(), "{bad}");
        }
    }
}
