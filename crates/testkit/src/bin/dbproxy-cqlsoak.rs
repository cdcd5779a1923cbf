//! The CQL half of `bench/soak.sh`: prepared INSERTs and SELECTs through entra-db-proxy for a
//! while, on one long-lived session and on a stream of short sessions (connection churn, so
//! that logins keep happening across token refreshes and key rotations). Every SELECT of a key
//! written before checks the value; a wrong or missing row counts as an error, like a failed
//! request. Not a test; the script decides what passes.
//!
//! `dbproxy-cqlsoak --addr HOST:PORT --seconds N [--concurrency C] [--churn-ms MS] --stats FILE`
//!
//! Every second FILE is replaced with one line `ops<TAB>errors<TAB>sessions` (totals so far).
//! At the end a summary goes to stdout; the exit status is 1 if any request failed.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context;
use scylla::client::{session::Session, session_builder::SessionBuilder};

const USAGE: &str = "usage: dbproxy-cqlsoak --addr HOST:PORT --seconds N [--concurrency C] [--churn-ms MS] --stats FILE";
/// Keys written before the load starts; SELECTs read these and check the value.
const KEYS: i32 = 1000;
/// Errors printed in full to stderr (the rest are only counted).
const PRINTED_ERRORS: u64 = 20;

#[derive(Default)]
struct Counters {
    ops: AtomicU64,
    errors: AtomicU64,
    sessions: AtomicU64,
}

impl Counters {
    fn error(&self, what: &str, e: impl std::fmt::Display) {
        let n = self.errors.fetch_add(1, Ordering::Relaxed);
        if n < PRINTED_ERRORS {
            let at = time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default();
            eprintln!("{at} cqlsoak error {}: {what}: {e}", n + 1);
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut seconds, mut concurrency, mut churn_ms, mut stats) =
        (None, None, 8usize, 1000u64, None);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--addr" => addr = args.next(),
            "--seconds" => seconds = Some(args.next().context(USAGE)?.parse::<u64>()?),
            "--concurrency" => concurrency = args.next().context(USAGE)?.parse()?,
            "--churn-ms" => churn_ms = args.next().context(USAGE)?.parse()?,
            "--stats" => stats = args.next().map(PathBuf::from),
            other => anyhow::bail!("unknown argument {other:?}; {USAGE}"),
        }
    }
    let (addr, seconds, stats) = (
        addr.context(USAGE)?,
        seconds.context(USAGE)?,
        stats.context(USAGE)?,
    );

    let main = SessionBuilder::new()
        .known_node(&addr)
        .build()
        .await
        .context("the first session through the proxy")?;
    main.query_unpaged(
        "CREATE KEYSPACE IF NOT EXISTS soak WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
        &[],
    )
    .await?;
    main.query_unpaged(
        "CREATE TABLE IF NOT EXISTS soak.kv (k int PRIMARY KEY, v text)",
        &[],
    )
    .await?;
    let insert = main
        .prepare("INSERT INTO soak.kv (k, v) VALUES (?, ?)")
        .await?;
    for k in 0..KEYS {
        main.execute_unpaged(&insert, (k, value(k))).await?;
    }

    let c = Arc::new(Counters::default());
    c.sessions.fetch_add(1, Ordering::Relaxed);
    let end = Instant::now() + Duration::from_secs(seconds);
    let main = Arc::new(main);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let (s, c) = (main.clone(), c.clone());
        tasks.push(tokio::spawn(
            async move { load(&s, &c, t as i32, end).await },
        ));
    }
    let churn = {
        let (c, addr) = (c.clone(), addr.clone());
        tokio::spawn(async move {
            while Instant::now() < end {
                match short_session(&addr, &c).await {
                    Ok(()) => {}
                    Err(e) => c.error("short session", format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(churn_ms)).await;
            }
        })
    };
    let writer = {
        let (c, stats) = (c.clone(), stats.clone());
        tokio::spawn(async move {
            loop {
                write_stats(&stats, &c);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        })
    };
    for t in tasks {
        t.await?;
    }
    churn.await?;
    writer.abort();
    write_stats(&stats, &c);
    let (ops, errors, sessions) = (
        c.ops.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.sessions.load(Ordering::Relaxed),
    );
    println!(
        "cql: {ops} requests ({:.0}/s), {sessions} sessions, {errors} errors",
        ops as f64 / seconds.max(1) as f64
    );
    if errors > 0 {
        std::process::exit(1);
    }
    Ok(())
}

fn value(k: i32) -> String {
    format!("value-{k}")
}

fn write_stats(path: &std::path::Path, c: &Counters) {
    let line = format!(
        "{}\t{}\t{}\n",
        c.ops.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.sessions.load(Ordering::Relaxed)
    );
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, line).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// Until `end`: one prepared INSERT (of a key above `KEYS`), then one checked SELECT, repeated.
async fn load(s: &Session, c: &Counters, task: i32, end: Instant) {
    let (insert, select) = match prepare(s).await {
        Ok(p) => p,
        Err(e) => return c.error("prepare", format!("{e:#}")),
    };
    let mut i = 0i32;
    while Instant::now() < end {
        i = i.wrapping_add(1);
        let k = KEYS + task * 100_000 + i.rem_euclid(100_000);
        match s.execute_unpaged(&insert, (k, value(k))).await {
            Ok(_) => c.ops.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                c.error("INSERT", e);
                continue;
            }
        };
        match checked_read(s, &select, i.rem_euclid(KEYS)).await {
            Ok(()) => c.ops.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                c.error("SELECT", format!("{e:#}"));
                continue;
            }
        };
    }
}

type Prepared = scylla::statement::prepared::PreparedStatement;

async fn prepare(s: &Session) -> anyhow::Result<(Prepared, Prepared)> {
    Ok((
        s.prepare("INSERT INTO soak.kv (k, v) VALUES (?, ?)")
            .await?,
        s.prepare("SELECT v FROM soak.kv WHERE k = ?").await?,
    ))
}

async fn checked_read(s: &Session, select: &Prepared, k: i32) -> anyhow::Result<()> {
    let row = s
        .execute_unpaged(select, (k,))
        .await?
        .into_rows_result()?
        .maybe_first_row::<(String,)>()?;
    match row {
        Some((v,)) if v == value(k) => Ok(()),
        Some((v,)) => anyhow::bail!("key {k}: read {v:?}, wrote {:?}", value(k)),
        None => anyhow::bail!("key {k}: no row (it was written before the load)"),
    }
}

/// A new session (two connections: control and pool), 10 writes and 10 checked reads, closed.
async fn short_session(addr: &str, c: &Counters) -> anyhow::Result<()> {
    let s = SessionBuilder::new()
        .known_node(addr)
        .build()
        .await
        .context("a new session through the proxy")?;
    c.sessions.fetch_add(1, Ordering::Relaxed);
    let (insert, select) = prepare(&s).await?;
    for k in 0..10 {
        s.execute_unpaged(&insert, (k, value(k))).await?;
        c.ops.fetch_add(1, Ordering::Relaxed);
        checked_read(&s, &select, k).await?;
        c.ops.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}
