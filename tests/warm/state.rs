//! Two clients in a row on warm sessions never see each other's state, and a client's startup
//! parameters reach the server.

use std::time::Duration;

use super::{HITS, LABELS, wait_ready, warm_proxy};
use crate::{
    faults::{metric, poll},
    stack::{DB, Stack},
};

async fn connect(port: u16, app: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::Config::new()
        .host("127.0.0.1")
        .port(port)
        .user("someone-else")
        .dbname(DB)
        .application_name(app)
        .options("-c statement_timeout=7s")
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn clients_in_a_row_never_see_each_others_state() {
    let s = Stack::start().await;
    let proxy = warm_proxy(&s, 2).spawn();
    let admin = proxy.admin.unwrap();
    wait_ready(admin, 2).await;

    let a = connect(proxy.port(), "warm-first").await;
    assert_eq!(
        metric(admin, HITS, LABELS).await,
        1.0,
        "the first client got a warm session"
    );
    // Its startup parameters were applied: application_name in pg_stat_activity, the -c option.
    let row = a
        .query_one(
            "select application_name, current_setting('statement_timeout'), pg_backend_pid() \
             from pg_stat_activity where pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "warm-first");
    assert_eq!(row.get::<_, String>(1), "7s");
    let pid_a: i32 = row.get(2);
    // State of every kind a session can carry.
    a.batch_execute(
        "create temp table warm_tmp (x int); insert into warm_tmp values (1); \
         set work_mem = '7MB'; prepare warm_stmt as select 1; select pg_advisory_lock(4242)",
    )
    .await
    .unwrap();
    drop(a);
    // The first backend is gone (its lock released by PostgreSQL) before the second client.
    let pg_admin = s.pg.admin_client().await.unwrap();
    poll(
        "the first backend exited",
        Duration::from_secs(20),
        || async {
            let n: i64 = pg_admin
                .query_one(
                    "select count(*) from pg_stat_activity where pid = $1",
                    &[&pid_a],
                )
                .await
                .unwrap()
                .get(0);
            (n == 0).then_some(())
        },
    )
    .await;

    let b = connect(proxy.port(), "warm-second").await;
    assert_eq!(
        metric(admin, HITS, LABELS).await,
        2.0,
        "the second client got a warm session"
    );
    // Simple query: no statement of the test's own client in pg_prepared_statements either.
    let rows = b
        .simple_query(
            "select pg_backend_pid(), to_regclass('pg_temp.warm_tmp') is null, \
             current_setting('work_mem') <> '7MB', (select count(*) from pg_prepared_statements), \
             pg_try_advisory_lock(4242), current_setting('application_name')",
        )
        .await
        .unwrap();
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap();
    assert_ne!(
        row.get(0),
        Some(pid_a.to_string().as_str()),
        "another backend"
    );
    assert_eq!(row.get(1), Some("t"), "no temp table");
    assert_eq!(row.get(2), Some("t"), "work_mem back at its default");
    assert_eq!(
        row.get(3),
        Some("0"),
        "no prepared statement (not even the proxy's)"
    );
    assert_eq!(row.get(4), Some("t"), "the advisory lock is free");
    assert_eq!(row.get(5), Some("warm-second"));
    drop(b);
    // Closing lines say which kind of session each was.
    let mut proxy = proxy;
    proxy.wait_for_line(
        |l| l.contains(r#""message":"session ended""#) && l.contains(r#""session":"warm""#),
        Duration::from_secs(10),
    );
}
