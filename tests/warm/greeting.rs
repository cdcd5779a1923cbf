//! What a warm client receives, compared message for message with what the server itself
//! sends a client logging in directly (which the cold path relays verbatim); and the cases
//! that must take the cold path, with the cold path's own answer. (Two proxies cannot share
//! the stack: the fake Entra makes the role's password the last token issued.)

use super::{HITS, LABELS, MISSES, by_reason, raw, wait_ready, warm_proxy};
use crate::{
    faults::metric,
    stack::{DB, Stack},
};

#[tokio::test(flavor = "multi_thread")]
async fn a_warm_client_sees_what_a_cold_one_sees() {
    let s = Stack::start().await;
    let warm = warm_proxy(&s, 2).spawn();
    let admin = warm.admin.unwrap();
    wait_ready(admin, 2).await;

    let params: &[(&str, &str)] = &[
        ("user", "someone-else"),
        ("database", DB),
        ("application_name", "cmp-app"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "German"),
        ("TimeZone", "Europe/Paris"),
        ("IntervalStyle", "iso_8601"),
        ("extra_float_digits", "2"),
        ("search_path", "\"$user\", public"),
        ("options", "-c statement_timeout=5s --lock-timeout=3s"),
    ];
    let token = s.azure.last_token().unwrap();
    let cold_msgs = raw::direct(&s, &token, params).await;
    let (warm_msgs, _w) = raw::start(warm.addr(), params).await;
    assert_eq!(
        metric(admin, HITS, LABELS).await,
        1.0,
        "the warm proxy served it warm"
    );
    let (cold_text, warm_text) = (raw::describe(&cold_msgs), raw::describe(&warm_msgs));
    assert_eq!(
        warm_text, cold_text,
        "warm greeting differs from the cold one"
    );
    assert!(
        cold_text.contains(&"S TimeZone=Europe/Paris".to_owned()),
        "{cold_text:?}"
    );
    assert!(
        cold_text.contains(&"S DateStyle=German, DMY".to_owned()),
        "{cold_text:?}"
    );
    assert!(
        cold_text.contains(&"S application_name=cmp-app".to_owned()),
        "{cold_text:?}"
    );

    // No parameters but the database: also identical, with nothing applied.
    let plain: &[(&str, &str)] = &[("user", "x"), ("database", DB)];
    let cold_msgs = raw::direct(&s, &token, plain).await;
    let (warm_msgs, _w) = raw::start(warm.addr(), plain).await;
    assert_eq!(raw::describe(&warm_msgs), raw::describe(&cold_msgs));
    assert_eq!(metric(admin, HITS, LABELS).await, 2.0);

    // Only an application_name: the greeting goes out before the server confirms it (the
    // deferred apply); still identical, and the first query sees the name and nothing of the
    // apply's answer.
    wait_ready(admin, 2).await;
    let app: &[(&str, &str)] = &[
        ("user", "x"),
        ("database", DB),
        ("application_name", "deferred-app"),
    ];
    let cold_msgs = raw::direct(&s, &token, app).await;
    let (warm_msgs, mut w) = raw::start(warm.addr(), app).await;
    assert_eq!(raw::describe(&warm_msgs), raw::describe(&cold_msgs));
    assert_eq!(metric(admin, HITS, LABELS).await, 3.0);
    let answer = raw::query(&mut w, "SELECT current_setting('application_name')").await;
    let tags: String = answer.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "TDCZ", "{answer:?}");
    assert!(answer[1].1.ends_with(b"deferred-app"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn what_cannot_be_exact_takes_the_cold_path() {
    let s = Stack::start().await;
    let warm = warm_proxy(&s, 2)
        .expect_warnings(&[crate::stack::FAILED_SESSION])
        .spawn();
    let admin = warm.admin.unwrap();
    wait_ready(admin, 2).await;

    // (startup, the miss reason counted)
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("user", "x"), ("database", "postgres")], "database"),
        (
            &[("user", "x"), ("database", DB), ("options", "-e")],
            "options",
        ),
        (
            &[("user", "x"), ("database", DB), ("no_such_setting", "1")],
            "apply_failed",
        ),
        (
            &[
                ("user", "x"),
                ("database", DB),
                ("DateStyle", "no such style"),
            ],
            "apply_failed",
        ),
        (
            &[
                ("user", "x"),
                ("database", DB),
                ("session_authorization", "postgres"),
            ],
            "parameter",
        ),
    ];
    for (params, reason) in cases {
        let before = by_reason(admin, MISSES, reason).await;
        let token = s.azure.last_token().unwrap();
        let cold_msgs = raw::direct(&s, &token, params).await;
        let (warm_msgs, _w) = raw::start(warm.addr(), params).await;
        assert_eq!(
            raw::describe(&warm_msgs),
            raw::describe(&cold_msgs),
            "{params:?}: the warm proxy's answer differs from the cold path's"
        );
        assert_eq!(
            by_reason(admin, MISSES, reason).await,
            before + 1.0,
            "{params:?}: miss {reason} counted"
        );
    }
    assert_eq!(metric(admin, HITS, LABELS).await, 0.0);
    // A refused parameter cost the session it was tried on; the pool is refilled.
    wait_ready(admin, 2).await;
}
