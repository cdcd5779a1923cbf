use bytes::{BufMut, BytesMut};

use super::*;

fn msg(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(tag);
    b.put_i32(body.len() as i32 + 4);
    b.put_slice(body);
    b
}

fn status(name: &str, value: &str) -> BytesMut {
    let mut b = BytesMut::new();
    write_parameter_status(name.as_bytes(), value.as_bytes(), &mut b);
    b
}

fn greeting_bytes() -> BytesMut {
    let mut b = msg(b'R', &0i32.to_be_bytes());
    for (n, v) in [
        ("application_name", ""),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("server_encoding", "UTF8"),
        ("TimeZone", "Etc/UTC"),
    ] {
        b.unsplit(status(n, v));
    }
    b.unsplit(msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
    b.unsplit(msg(b'Z', b"I"));
    b
}

/// The messages of `bytes` as (tag, body).
fn split(mut bytes: BytesMut) -> Vec<(char, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(m) = next_message(&mut bytes).unwrap() {
        out.push((char::from(m[0]), m[5..].to_vec()));
    }
    assert!(bytes.is_empty());
    out
}

fn startup(params: &[(&str, &[u8])]) -> StartupMessage {
    let mut s = StartupMessage::new(ProtocolVersion::V3_0);
    for (n, v) in params {
        s.params.push(((*n).to_owned(), v.to_vec()));
    }
    s
}

#[test]
fn greeting_is_read_byte_by_byte_and_rendered_unchanged_without_settings() {
    let all = greeting_bytes();
    let mut g = Greeting::new();
    let mut buf = BytesMut::new();
    for (i, b) in all.iter().enumerate() {
        buf.put_u8(*b);
        let done = g.feed(&mut buf).unwrap();
        assert_eq!(done, i + 1 == all.len(), "at byte {i}");
    }
    assert_eq!(g.render(&[]), all);
    assert_eq!(g.parameter("TimeZone"), Some(&b"Etc/UTC"[..]));
    assert_eq!(g.parameter("search_path"), None);
}

#[test]
fn bytes_after_ready_for_query_stay_in_the_buffer() {
    let mut buf = greeting_bytes();
    buf.unsplit(status("TimeZone", "UTC"));
    let mut g = Greeting::new();
    assert!(g.feed(&mut buf).unwrap());
    assert_eq!(buf, status("TimeZone", "UTC"));
}

#[test]
fn render_replaces_changed_values_in_place_and_appends_new_names() {
    let mut g = Greeting::new();
    assert!(g.feed(&mut greeting_bytes()).unwrap());
    let changed = vec![
        (b"TimeZone".to_vec(), b"Europe/Paris".to_vec()),
        (b"application_name".to_vec(), b"first".to_vec()),
        (b"application_name".to_vec(), b"web".to_vec()),
        (b"search_path".to_vec(), b"app, public".to_vec()),
    ];
    let mut want = msg(b'R', &0i32.to_be_bytes());
    for (n, v) in [
        ("application_name", "web"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("server_encoding", "UTF8"),
        ("TimeZone", "Europe/Paris"),
        ("search_path", "app, public"),
    ] {
        want.unsplit(status(n, v));
    }
    want.unsplit(msg(b'K', &[0, 0, 0, 42, 1, 2, 3, 4]));
    want.unsplit(msg(b'Z', b"I"));
    assert_eq!(split(g.render(&changed)), split(want));
}

#[test]
fn greeting_refuses_what_a_login_does_not_send() {
    for (bytes, want) in [
        (msg(b'Z', b"I"), "unexpected message 'Z'"),
        (msg(b'R', &3i32.to_be_bytes()), "unexpected message 'R'"),
        (msg(b'D', b""), "unexpected message 'D'"),
    ] {
        let mut g = Greeting::new();
        let e = g.feed(&mut bytes.clone()).unwrap_err();
        assert!(e.to_string().starts_with(want), "{e}");
    }
    let mut in_tx = msg(b'R', &0i32.to_be_bytes());
    in_tx.unsplit(msg(b'Z', b"T"));
    assert_eq!(
        Greeting::new().feed(&mut in_tx).unwrap_err(),
        WarmError::NotIdle('T')
    );
    // A length word is bounded before anything is buffered.
    let mut huge = BytesMut::from(&b"S\x7f\xff\xff\xff"[..]);
    assert!(matches!(
        Greeting::new().feed(&mut huge),
        Err(WarmError::Length(_))
    ));
}

#[test]
fn plan_applies_options_first_then_parameters_in_order() {
    let s = startup(&[
        ("user", b"entra"),
        ("database", b"orders"),
        ("application_name", b"web"),
        (
            "options",
            b"-c search_path=app,public --statement-timeout=5s -cwork_mem=8MB -c x.y=a\\ b",
        ),
        ("DateStyle", b"ISO"),
    ]);
    let plan = plan(&s, false).unwrap();
    let pairs: Vec<(&str, &str)> = plan.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        pairs,
        [
            ("search_path", "app,public"),
            ("statement_timeout", "5s"),
            ("work_mem", "8MB"),
            ("x.y", "a b"),
            ("application_name", "web"),
            ("DateStyle", "ISO"),
        ]
    );
}

#[test]
fn plan_sends_what_cannot_be_exact_down_the_cold_path() {
    type Params<'a> = &'a [(&'a str, &'a [u8])];
    let cases: &[(Params, Miss)] = &[
        (&[("replication", b"database")], Miss::Startup),
        (&[("_pq_.protocol_managed_params", b"x")], Miss::Startup),
        (&[("options", b"-d 5")], Miss::Options),
        (&[("options", b"-c")], Miss::Options),
        (&[("options", b"-c novalue")], Miss::Options),
        (&[("options", b"plain")], Miss::Options),
        (&[("session_authorization", b"x")], Miss::Parameter),
        (
            &[("Transaction_Isolation", b"serializable")],
            Miss::Parameter,
        ),
        (&[("application_name", b"\xff\xfe")], Miss::Parameter),
        (&[("application_name", "café".as_bytes())], Miss::Parameter),
        (&[("", b"x")], Miss::Parameter),
    ];
    for (params, want) in cases {
        assert_eq!(plan(&startup(params), false), Err(*want), "{params:?}");
    }
    // UTF-8 is taken when both encodings are UTF8.
    let s = startup(&[("application_name", "café".as_bytes())]);
    assert_eq!(plan(&s, true).unwrap()[0].1, "café");
    // Another protocol version: the cold path negotiates it.
    let mut s = startup(&[]);
    s.version = ProtocolVersion::V3_2;
    assert_eq!(plan(&s, true), Err(Miss::Startup));
}

#[test]
fn apply_request_binds_values_and_never_splices_them_into_sql() {
    let hostile = "x'); DROP TABLE t; --";
    let req = apply_request(&[
        ("application_name".into(), hostile.into()),
        ("TimeZone".into(), "UTC".into()),
    ]);
    let tags: String = split(req.clone()).iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "PBEBECS");
    let parse = &split(req.clone())[0].1;
    assert!(
        String::from_utf8_lossy(parse).contains(SET_CONFIG),
        "{parse:?}"
    );
    let text = String::from_utf8_lossy(&req);
    // The hostile value appears once, as a Bind parameter, not in any statement text.
    assert_eq!(text.matches(hostile).count(), 1);
    let bind = &split(req)[1].1;
    assert!(String::from_utf8_lossy(bind).contains(hostile));
}

#[test]
fn prime_request_parses_the_hand_over_statement_and_only_reads_a_setting() {
    let req = prime_request();
    let parts = split(req);
    let tags: String = parts.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, "PPBECS");
    assert!(String::from_utf8_lossy(&parts[0].1).contains(SET_CONFIG));
    assert!(String::from_utf8_lossy(&parts[1].1).contains(PRIME));
    assert!(String::from_utf8_lossy(&parts[2].1).contains("application_name"));
    // Its answer (two ParseComplete, a row, no ParameterStatus) reads as "nothing changed".
    let mut buf = answer(&[
        msg(b'1', b""),
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\0"),
        msg(b'C', b"SELECT 1\0"),
        msg(b'3', b""),
        msg(b'Z', b"I"),
    ]);
    assert_eq!(ApplyReader::new().feed(&mut buf).unwrap(), Some(vec![]));
    assert!(buf.is_empty());
}

fn answer(parts: &[BytesMut]) -> BytesMut {
    let mut b = BytesMut::new();
    for p in parts {
        b.extend_from_slice(p);
    }
    b
}

#[test]
fn apply_reader_collects_reports_until_ready_for_query() {
    let all = answer(&[
        msg(b'1', b""),
        msg(b'2', b""),
        msg(b'D', b"\0\x01\0\0\0\x03web"),
        msg(b'C', b"SELECT 1\0"),
        status("application_name", "web"),
        msg(b'3', b""),
        msg(b'Z', b"I"),
    ]);
    let mut r = ApplyReader::new();
    let mut buf = BytesMut::new();
    let mut result = None;
    for b in all.iter() {
        buf.put_u8(*b);
        if let Some(changed) = r.feed(&mut buf).unwrap() {
            result = Some(changed);
        }
    }
    assert_eq!(
        result.unwrap(),
        vec![(b"application_name".to_vec(), b"web".to_vec())]
    );
}

#[test]
fn apply_reader_reports_refusals_and_notices() {
    let mut error = BytesMut::new();
    crate::messages::error_response(
        &crate::messages::ErrorFields::error("42704", "unrecognized configuration parameter \"x\""),
        &mut error,
    );
    let mut buf = answer(&[msg(b'1', b""), error, msg(b'Z', b"I")]);
    let e = ApplyReader::new().feed(&mut buf).unwrap_err();
    assert!(
        matches!(e, WarmError::Refused { ref code, .. } if code == "42704"),
        "{e}"
    );

    let mut notice = BytesMut::new();
    crate::messages::error_response(
        &crate::messages::ErrorFields::error("01000", "a notice"),
        &mut notice,
    );
    notice[0] = b'N';
    let mut buf = answer(&[msg(b'1', b""), notice, msg(b'Z', b"I")]);
    assert!(ApplyReader::new().feed(&mut buf).is_err());

    let mut buf = answer(&[msg(b'T', b"")]);
    assert!(ApplyReader::new().feed(&mut buf).is_err());
}

#[test]
fn only_application_name_in_printable_ascii_within_63_bytes_is_predicted() {
    let set = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    };
    let r = predicted_reports(&set(&[("application_name", "pgbench")])).unwrap();
    assert_eq!(r, vec![(b"application_name".to_vec(), b"pgbench".to_vec())]);
    let longest = "a".repeat(MAX_PREDICTABLE_NAME);
    assert!(predicted_reports(&set(&[("application_name", &longest)])).is_some());
    assert!(predicted_reports(&set(&[("application_name", " ~")])).is_some());
    for unpredictable in [
        set(&[]),
        set(&[("application_name", &"a".repeat(MAX_PREDICTABLE_NAME + 1))]),
        set(&[("application_name", "caf\u{e9}")]),
        set(&[("application_name", "tab\there")]),
        set(&[("Application_Name", "x")]),
        set(&[("DateStyle", "ISO")]),
        set(&[("application_name", "x"), ("TimeZone", "UTC")]),
    ] {
        assert_eq!(predicted_reports(&unpredictable), None, "{unpredictable:?}");
    }
}
