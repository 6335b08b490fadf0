//! SMTP load generator: N messages of a given size over M concurrent
//! sessions to a server on loopback, or N idle sessions held open.
//!
//!     cargo bench --bench smtp_load -- --target 127.0.0.1:2525 --messages 20000 --concurrency 50
//!     cargo bench --bench smtp_load -- --target 127.0.0.1:2525 --idle 10000 --pid PID [--hold SECONDS]
//!     cargo bench --bench smtp_load -- --target 127.0.0.1:2525 --messages 8000 --concurrency 20 --rate 400
//!     cargo bench --bench smtp_load -- --target 127.0.0.1:2525 --denied 20000 --concurrency 10
//!     cargo bench --bench smtp_load -- --target 127.0.0.1:2525 --recipients 50000 --local-part perm --concurrency 20
//!     cargo bench --bench smtp_load -- --refuser 2618
//!
//! With `--refuser PORT`: the least a server can do for a refused session,
//! as a yardstick for the kernel's and the runtime's share of one (tokio,
//! one write per reply, as relaygate): a greeting, EHLO answered, MAIL
//! 250, every RCPT 554, QUIT 221 and close, no policy, no log. Runs until
//! killed.
//!
//! With `--recipients N`: N RCPTs of addresses never seen before
//! (`PREFIX-<n>@example.com`, from `someone@far.test`), one at a time per
//! session as a plain client sends them, a new transaction every 50,
//! counting each reply class; a session the server closes is opened
//! again. For recipient verification: every one is a new question to
//! the route. As a sink, the load generator refuses local parts that
//! start with `perm` (550 5.1.1), so `--local-part perm` asks about
//! unknown users.
//!
//! With `--denied N`: N sessions a relay must refuse, `concurrency` at a
//! time, each a new connection: greeting, EHLO, MAIL, RCPT (which must be
//! refused with a 4xx or 5xx; one that is accepted stops the run), QUIT, each
//! command waiting for its reply as a plain client does. Postfix's
//! smtp-source cannot do this: a refused recipient is fatal to it.
//!
//! Each session sends EHLO once, then per message MAIL, RCPT and DATA in
//! one write (PIPELINING), the body, and waits for the final 250: a message
//! counts as accepted only once the server has acknowledged it.
//!
//! With `--rate R` the messages are paced: message k is started no earlier
//! than k/R seconds after the start, by whichever session is free (a
//! session that falls behind sends at once, it does not skip). Without it
//! every session sends its share back to back (maximum throughput).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Args {
    target: SocketAddr,
    messages: u64,
    concurrency: u64,
    size: usize,
    idle: Option<usize>,
    /// With `--idle`: keep the sessions open this many seconds after the report.
    hold: u64,
    pid: Option<u32>,
    /// Run as a sink on this port until `messages` have arrived.
    sink: Option<u16>,
    /// Run as a server that refuses every recipient, on this port.
    refuser: Option<u16>,
    /// Messages started per second (paced), instead of as fast as possible.
    rate: Option<f64>,
    /// Sessions to be refused at RCPT, new connection each.
    denied: Option<u64>,
    /// RCPTs of new addresses to send (recipient verification).
    recipients: Option<u64>,
    local_part: String,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        target: "127.0.0.1:2525".parse().map_err(|_| "default target")?,
        messages: 10_000,
        concurrency: 50,
        size: 2048,
        idle: None,
        hold: 0,
        pid: None,
        sink: None,
        refuser: None,
        denied: None,
        rate: None,
        recipients: None,
        local_part: "user".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--target" => {
                args.target = value("--target")?
                    .parse()
                    .map_err(|e| format!("--target: {e}"))?
            }
            "--messages" => {
                args.messages = value("--messages")?
                    .parse()
                    .map_err(|e| format!("--messages: {e}"))?
            }
            "--concurrency" => {
                args.concurrency = value("--concurrency")?
                    .parse()
                    .map_err(|e| format!("--concurrency: {e}"))?
            }
            "--size" => {
                args.size = value("--size")?
                    .parse()
                    .map_err(|e| format!("--size: {e}"))?
            }
            "--idle" => {
                args.idle = Some(
                    value("--idle")?
                        .parse()
                        .map_err(|e| format!("--idle: {e}"))?,
                )
            }
            "--hold" => {
                args.hold = value("--hold")?
                    .parse()
                    .map_err(|e| format!("--hold: {e}"))?
            }
            "--pid" => args.pid = Some(value("--pid")?.parse().map_err(|e| format!("--pid: {e}"))?),
            "--sink" => {
                args.sink = Some(
                    value("--sink")?
                        .parse()
                        .map_err(|e| format!("--sink: {e}"))?,
                )
            }
            "--rate" => {
                let rate: f64 = value("--rate")?
                    .parse()
                    .map_err(|e| format!("--rate: {e}"))?;
                if !(rate.is_finite() && rate > 0.0) {
                    return Err("--rate must be a positive number of messages per second".into());
                }
                args.rate = Some(rate)
            }
            "--refuser" => {
                args.refuser = Some(
                    value("--refuser")?
                        .parse()
                        .map_err(|e| format!("--refuser: {e}"))?,
                )
            }
            "--denied" => {
                args.denied = Some(
                    value("--denied")?
                        .parse()
                        .map_err(|e| format!("--denied: {e}"))?,
                )
            }
            "--recipients" => {
                args.recipients = Some(
                    value("--recipients")?
                        .parse()
                        .map_err(|e| format!("--recipients: {e}"))?,
                )
            }
            "--local-part" => args.local_part = value("--local-part")?,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if !args.target.ip().is_loopback() {
        return Err("the load generator only sends to loopback addresses".into());
    }
    Ok(args)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("smtp_load: {e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("smtp_load: runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = rt.block_on(async {
        if let Some(port) = args.refuser {
            return refuser(port).await;
        }
        match (args.sink, args.idle, args.denied, args.recipients) {
            (Some(port), _, _, _) => sink(port, args.messages).await,
            (None, Some(n), _, _) => idle(&args, n).await,
            (None, None, Some(n), _) => denied(&args, n).await,
            (None, None, None, Some(n)) => recipients(&args, n).await,
            (None, None, None, None) => throughput(&args).await,
        }
    });
    std::process::exit(code);
}

/// A 2 KB-ish message body with CRLF lines, no line starting with a dot.
fn body(size: usize) -> Vec<u8> {
    let mut b =
        b"From: load@example.com\r\nTo: sink@far.test\r\nSubject: load test\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n";
    while b.len() + line.len() <= size {
        b.extend_from_slice(line);
    }
    b.extend_from_slice(b".\r\n");
    b
}

async fn read_reply(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    line: &mut String,
) -> std::io::Result<u16> {
    loop {
        line.clear();
        if r.read_line(line).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            return Ok(line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0));
        }
    }
}

/// Which messages a session sends: a fixed share back to back, or the next
/// free slot of a paced schedule shared by all sessions.
enum Share {
    Fixed(u64),
    Paced {
        next: Arc<AtomicU64>,
        total: u64,
        start: tokio::time::Instant,
        interval: Duration,
    },
}

impl Share {
    /// Waits for this session's next message; false when there is none.
    async fn next(&mut self) -> bool {
        match self {
            Share::Fixed(left) => {
                let more = *left > 0;
                *left = left.saturating_sub(1);
                more
            }
            Share::Paced {
                next,
                total,
                start,
                interval,
            } => {
                let k = next.fetch_add(1, Ordering::Relaxed);
                if k >= *total {
                    return false;
                }
                let k = u32::try_from(k).unwrap_or(u32::MAX);
                tokio::time::sleep_until(*start + interval.saturating_mul(k)).await;
                true
            }
        }
    }
}

async fn session(
    target: SocketAddr,
    mut share: Share,
    body: Arc<Vec<u8>>,
    accepted: Arc<AtomicU64>,
    refused: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut line = String::new();
    let (mut r, mut w) = greeted(target, &mut line).await?;
    let envelope = b"MAIL FROM:<load@example.com>\r\nRCPT TO:<sink@far.test>\r\nDATA\r\n";
    while share.next().await {
        w.write_all(envelope).await?;
        let (m, rc, d) = (
            read_reply(&mut r, &mut line).await?,
            read_reply(&mut r, &mut line).await?,
            read_reply(&mut r, &mut line).await?,
        );
        if d != 354 {
            // Refused: report once for this session and stop it.
            refused.fetch_add(1, Ordering::Relaxed);
            return Err(std::io::Error::other(format!(
                "MAIL {m}, RCPT {rc}, DATA {d}"
            )));
        }
        w.write_all(&body).await?;
        if read_reply(&mut r, &mut line).await? == 250 {
            accepted.fetch_add(1, Ordering::Relaxed);
        } else {
            refused.fetch_add(1, Ordering::Relaxed);
        }
    }
    w.write_all(b"QUIT\r\n").await?;
    let _ = read_reply(&mut r, &mut line).await;
    Ok(())
}

/// A new connection, its greeting read and EHLO answered.
async fn greeted(
    target: SocketAddr,
    line: &mut String,
) -> std::io::Result<(
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
)> {
    let stream = TcpStream::connect(target).await?;
    stream.set_nodelay(true)?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    read_reply(&mut r, line).await?;
    w.write_all(b"EHLO loadgen.test\r\n").await?;
    read_reply(&mut r, line).await?;
    Ok((r, w))
}

/// One session the relay must refuse; Ok(true) if it did.
async fn denied_session(target: SocketAddr, line: &mut String) -> std::io::Result<bool> {
    let (mut r, mut w) = greeted(target, line).await?;
    w.write_all(b"MAIL FROM:<load@example.com>\r\n").await?;
    read_reply(&mut r, line).await?;
    w.write_all(b"RCPT TO:<sink@far.test>\r\n").await?;
    let code = read_reply(&mut r, line).await?;
    w.write_all(b"QUIT\r\n").await?;
    let _ = read_reply(&mut r, line).await;
    Ok((400..600).contains(&code))
}

/// Reply classes counted by [`recipients`]: 2xx, 4xx, 5xx.
#[derive(Default)]
struct Classes {
    ok: AtomicU64,
    put_off: AtomicU64,
    refused: AtomicU64,
}

/// One session of [`recipients`]: RCPTs until the shared count runs out;
/// false if the server closed it first.
async fn recipient_session(
    target: SocketAddr,
    prefix: &str,
    next: &AtomicU64,
    n: u64,
    classes: &Classes,
) -> std::io::Result<bool> {
    let mut line = String::new();
    let (mut r, mut w) = greeted(target, &mut line).await?;
    let mut in_transaction = 0;
    loop {
        if in_transaction == 0 {
            w.write_all(b"MAIL FROM:<someone@far.test>\r\n").await?;
            if read_reply(&mut r, &mut line).await? != 250 {
                return Ok(false);
            }
        }
        let k = next.fetch_add(1, Ordering::Relaxed);
        if k >= n {
            w.write_all(b"QUIT\r\n").await?;
            let _ = read_reply(&mut r, &mut line).await;
            return Ok(true);
        }
        w.write_all(format!("RCPT TO:<{prefix}-{k}@example.com>\r\n").as_bytes())
            .await?;
        match read_reply(&mut r, &mut line).await? {
            421 => return Ok(false),
            200..=299 => classes.ok.fetch_add(1, Ordering::Relaxed),
            400..=499 => classes.put_off.fetch_add(1, Ordering::Relaxed),
            _ => classes.refused.fetch_add(1, Ordering::Relaxed),
        };
        in_transaction += 1;
        if in_transaction == 50 {
            w.write_all(b"RSET\r\n").await?;
            read_reply(&mut r, &mut line).await?;
            in_transaction = 0;
        }
    }
}

async fn recipients(args: &Args, n: u64) -> i32 {
    let next = Arc::new(AtomicU64::new(0));
    let classes = Arc::new(Classes::default());
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (next, classes, target, prefix) = (
            Arc::clone(&next),
            Arc::clone(&classes),
            args.target,
            args.local_part.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.load(Ordering::Relaxed) < n {
                match recipient_session(target, &prefix, &next, n, &classes).await {
                    Ok(true) => return Ok(()),
                    Ok(false) => continue,
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }));
    }
    let failure = first_failure(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    let (ok, put_off, refused) = (
        classes.ok.load(Ordering::Relaxed),
        classes.put_off.load(Ordering::Relaxed),
        classes.refused.load(Ordering::Relaxed),
    );
    if let Some(e) = &failure {
        eprintln!("smtp_load: {e}");
    }
    println!(
        "target={} recipients={} accepted={ok} put_off={put_off} refused={refused} concurrency={} seconds={secs:.3} rcpts_per_sec={:.0}",
        args.target,
        ok + put_off + refused,
        args.concurrency,
        (ok + put_off + refused) as f64 / secs
    );
    i32::from(failure.is_some())
}

/// Waits for every task; the first error any of them gave.
async fn first_failure(tasks: Vec<tokio::task::JoinHandle<Result<(), String>>>) -> Option<String> {
    let mut failure = None;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => failure = failure.or(Some(e.to_string())),
        }
    }
    failure
}

async fn denied(args: &Args, n: u64) -> i32 {
    let next = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (next, refused, target) = (Arc::clone(&next), Arc::clone(&refused), args.target);
        tasks.push(tokio::spawn(async move {
            let mut line = String::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                match denied_session(target, &mut line).await {
                    Ok(true) => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => return Err("a recipient was accepted".to_string()),
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(())
        }));
    }
    let failure = first_failure(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    let done = refused.load(Ordering::Relaxed);
    if let Some(e) = &failure {
        eprintln!("smtp_load: {e}");
    }
    println!(
        "target={} denied_sessions={done} concurrency={} seconds={secs:.3} sessions_per_sec={:.0}",
        args.target,
        args.concurrency,
        done as f64 / secs
    );
    if failure.is_none() && done == n { 0 } else { 1 }
}

async fn throughput(args: &Args) -> i32 {
    let body = Arc::new(body(args.size));
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let paced_start = tokio::time::Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..args.concurrency {
        let share = match args.rate {
            Some(rate) => Share::Paced {
                next: Arc::clone(&next),
                total: args.messages,
                start: paced_start,
                interval: Duration::from_secs_f64(1.0 / rate),
            },
            None => Share::Fixed(
                args.messages / args.concurrency + u64::from(i < args.messages % args.concurrency),
            ),
        };
        tasks.push(tokio::spawn(session(
            args.target,
            share,
            Arc::clone(&body),
            Arc::clone(&accepted),
            Arc::clone(&refused),
        )));
    }
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                if errors == 0 {
                    eprintln!("smtp_load: a session failed: {e}");
                }
                errors += 1;
            }
            Err(e) => {
                eprintln!("smtp_load: task: {e}");
                errors += 1;
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let ok = accepted.load(Ordering::Relaxed);
    println!(
        "target={} messages={} concurrency={} size={} rate={} accepted={ok} refused={} session_errors={errors} seconds={secs:.3} msgs_per_sec={:.0}",
        args.target,
        args.messages,
        args.concurrency,
        body.len(),
        args.rate.map_or("max".into(), |r| format!("{r}")),
        refused.load(Ordering::Relaxed),
        ok as f64 / secs
    );
    if ok == args.messages { 0 } else { 1 }
}

/// A minimal SMTP sink on 127.0.0.1:`port`: accepts everything, counts
/// messages, and when `expect` have arrived prints the Unix time of the
/// first connection and of the last message, then exits.
async fn sink(port: u16, expect: u64) -> i32 {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("smtp_load: sink on port {port}: {e}");
            return 2;
        }
    };
    let received = Arc::new(AtomicU64::new(0));
    let first = Arc::new(std::sync::OnceLock::<f64>::new());
    let done = Arc::new(tokio::sync::Notify::new());
    println!("sink listening on 127.0.0.1:{port}, expecting {expect} messages");
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let accept = {
        let (received, first, done) =
            (Arc::clone(&received), Arc::clone(&first), Arc::clone(&done));
        async move {
            while let Ok((stream, _)) = listener.accept().await {
                let _ = first.set(now());
                let (received, done) = (Arc::clone(&received), Arc::clone(&done));
                tokio::spawn(async move {
                    let _ = sink_session(stream, &received, expect, &done).await;
                });
            }
        }
    };
    tokio::select! {
        _ = accept => 1,
        _ = done.notified() => {
            println!(
                "sink_first_connection_unix={:.3} sink_last_message_unix={:.3} received={}",
                first.get().copied().unwrap_or(0.0),
                now(),
                received.load(Ordering::Relaxed)
            );
            0
        }
    }
}

async fn sink_session(
    stream: TcpStream,
    received: &AtomicU64,
    expect: u64,
    done: &tokio::sync::Notify,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    w.write_all(b"220 sink ESMTP\r\n").await?;
    let mut in_data = false;
    let mut out = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        if in_data {
            if line == ".\r\n" {
                in_data = false;
                out.extend_from_slice(b"250 2.0.0 Ok\r\n");
                if received.fetch_add(1, Ordering::Relaxed) + 1 == expect {
                    done.notify_one();
                }
            }
        } else {
            let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
            match verb.as_str() {
                "EHLO" => out.extend_from_slice(b"250-sink\r\n250-PIPELINING\r\n250 8BITMIME\r\n"),
                "DATA" => {
                    in_data = true;
                    out.extend_from_slice(b"354 go ahead\r\n");
                }
                "QUIT" => {
                    w.write_all(b"221 2.0.0 Bye\r\n").await?;
                    return Ok(());
                }
                "RCPT" if line.to_ascii_lowercase().contains("<perm") => {
                    out.extend_from_slice(b"550 5.1.1 no such user here\r\n")
                }
                _ => out.extend_from_slice(b"250 2.0.0 Ok\r\n"),
            }
        }
        // Answer once the client has nothing more pipelined.
        if r.buffer().is_empty() && !out.is_empty() {
            w.write_all(&out).await?;
            out.clear();
        }
    }
}

/// [`Args::refuser`]: refuses every recipient, one write per reply.
async fn refuser(port: u16) -> i32 {
    let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("smtp_load: refuser on port {port}: {e}");
            return 2;
        }
    };
    while let Ok((stream, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut line = String::new();
            w.write_all(b"220 refuser ESMTP\r\n").await?;
            loop {
                line.clear();
                if r.read_line(&mut line).await? == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                let reply: &[u8] = match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                    "EHLO" => b"250-refuser\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                    "RCPT" => b"554 5.7.1 Relay access denied\r\n",
                    "QUIT" => {
                        w.write_all(b"221 2.0.0 Bye\r\n").await?;
                        return Ok(());
                    }
                    _ => b"250 2.0.0 Ok\r\n",
                };
                w.write_all(reply).await?;
            }
        });
    }
    1
}

/// Opens `n` sessions (greeting + EHLO each), holds them, and reports the
/// server's resident memory if its pid is given.
async fn idle(args: &Args, n: usize) -> i32 {
    let rss = |pid: u32| -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let before = args.pid.and_then(rss);
    let mut held = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let stream = match TcpStream::connect(args.target).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("smtp_load: connection {i}: {e}");
                return 1;
            }
        };
        let (r, mut w) = stream.into_split();
        let mut r = BufReader::new(r);
        let mut line = String::new();
        let greeting = read_reply(&mut r, &mut line).await.unwrap_or(0);
        if greeting != 220 {
            eprintln!("smtp_load: connection {i}: greeting {line:?}");
            return 1;
        }
        if w.write_all(b"EHLO idle.test\r\n").await.is_err()
            || read_reply(&mut r, &mut line).await.unwrap_or(0) != 250
        {
            eprintln!("smtp_load: connection {i}: EHLO failed");
            return 1;
        }
        held.push((r, w));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = args.pid.and_then(rss);
    println!(
        "idle_sessions={} open_seconds={:.1} server_rss_before_kib={} server_rss_with_sessions_kib={}",
        held.len(),
        start.elapsed().as_secs_f64(),
        before.map_or("?".into(), |v| v.to_string()),
        during.map_or("?".into(), |v| v.to_string())
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    drop(held);
    0
}
