//! Opening packets: lengths, versions, layouts, parameters (duplicates, non-UTF-8, huge),
//! messages where the startup belongs, random bytes.

use super::*;

pub(super) fn opening_cases(cases: &mut Vec<Case<Pg>>) {
    use Direct::*;
    const LEN: &str = "invalid length of startup packet";
    const PROTO: &str = "unsupported frontend protocol";
    let ok = startup(&[("user", "app"), ("database", DB)]);
    // Lengths.
    cases.push(fatal("length 0", vec![0, 0, 0, 0], "08P01", LEN, Silent));
    cases.push(fatal(
        "length 4",
        vec![0, 0, 0, 4, 0, 3, 0, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length 7",
        vec![0, 0, 0, 7, 0, 3, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length negative",
        vec![0xff, 0xff, 0xff, 0xf0, 0, 3, 0, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length 2^31-1",
        vec![0x7f, 0xff, 0xff, 0xff, 0, 3, 0, 0],
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "length 10005",
        packet(V3_0, &vec![b'a'; 10_005 - 8]),
        "08P01",
        LEN,
        Silent,
    ));
    // 10,000 parameters, and a 1 MB value: refused at the length word, long before the end.
    let many: Vec<(String, String)> = (0..10_000).map(|i| (format!("p{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    cases.push(fatal(
        "10,000 parameters",
        startup(&many),
        "08P01",
        LEN,
        Silent,
    ));
    let mb = "x".repeat(1 << 20);
    cases.push(fatal(
        "1 MB value",
        startup(&[("user", "app"), ("application_name", &mb)]),
        "08P01",
        LEN,
        Silent,
    ));
    // Exactly PostgreSQL's limit: 10,000 bytes after the length word (the client's user as
    // long as the proxy's, so that the packet sent upstream is no longer).
    let user = "u".repeat(ENTRA_USER.len());
    let base = startup(&[("user", &user), ("database", DB)]);
    let pad = "p".repeat(10_004 - base.len() - "application_name\0\0".len());
    let at_limit = startup(&[
        ("user", &user),
        ("database", DB),
        ("application_name", &pad),
    ]);
    assert_eq!(at_limit.len(), 10_004);
    // The same packet with a short user grows past the limit once the proxy sets its own.
    let longer_pad = format!("{pad}{}", "p".repeat(ENTRA_USER.len() - 1));
    let short = startup(&[
        ("user", "u"),
        ("database", DB),
        ("application_name", &longer_pad),
    ]);
    assert_eq!(short.len(), 10_004);
    cases.push(fatal(
        "a startup that outgrows the limit upstream",
        short,
        "08P01",
        "invalid length of startup packet: 10017 once the proxy set the user",
        Direct::No,
    ));
    cases.push(session(
        "10,004-byte startup (PostgreSQL's limit)",
        false,
        at_limit,
        "R",
        &[],
    ));

    // Versions.
    cases.push(protocol_2("protocol 2.0", 2 << 16));
    cases.push(protocol_2("protocol 1.0", 1 << 16));
    cases.push(fatal(
        "protocol 4.0",
        packet(4 << 16, &params(&[(b"user", b"app")])),
        "0A000",
        PROTO,
        Same,
    ));
    cases.push(fatal(
        "protocol 0.0",
        packet(0, &params(&[])),
        "0A000",
        PROTO,
        Same,
    ));
    cases.push(fatal(
        "protocol 65535.65535",
        packet(u32::MAX, &params(&[])),
        "0A000",
        PROTO,
        Same,
    ));
    cases.push(fatal(
        "protocol 1234.5681",
        packet(80_877_105, &params(&[])),
        "0A000",
        PROTO,
        Same,
    ));
    // 1234.5678 is the CancelRequest code: with no key, a CancelRequest of the wrong length.
    cases.push(fatal(
        "protocol 1234.5678 (CancelRequest, 8 bytes)",
        packet(CANCEL_CODE, &[]),
        "08P01",
        "invalid length of CancelRequest",
        Silent,
    ));
    cases.push(fatal(
        "CancelRequest of 14 bytes",
        packet(CANCEL_CODE, &[0, 0, 0, 1, 0, 0]),
        "08P01",
        "invalid length of CancelRequest",
        Silent,
    ));
    // A well-formed CancelRequest for no session: forwarded, closed without a word, as by PostgreSQL.
    cases.push(silent(
        "CancelRequest for no session",
        packet(CANCEL_CODE, &[0, 0, 0, 1, 9, 9, 9, 9]),
        Silent,
    ));
    // Newer 3.x minors: PostgreSQL 15 answers NegotiateProtocolVersion ('v') and serves 3.0.
    cases.push(session(
        "protocol 3.2",
        false,
        packet(
            V3_0 | 2,
            &params(&[(b"user", b"app"), (b"database", DB.as_bytes())]),
        ),
        "vR",
        &[("select 1", "1")],
    ));
    cases.push(session(
        "protocol 3.9",
        false,
        packet(
            V3_0 | 9,
            &params(&[(b"user", b"app"), (b"database", DB.as_bytes())]),
        ),
        "vR",
        &[("select 1", "1")],
    ));
    cases.push(session(
        "unknown _pq_ option",
        false,
        startup_with(&[(b"_pq_.hostile", b"1")]),
        "vR",
        &[],
    ));

    // Layout.
    let mut no_terminator = ok.clone();
    no_terminator.pop();
    no_terminator[3] -= 1;
    cases.push(fatal(
        "no terminator",
        no_terminator,
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "name without a value",
        packet(V3_0, b"user\0"),
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "nothing after the version",
        packet(V3_0, &[]),
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "bytes after the terminator",
        packet(V3_0, b"user\0app\0\0junk\0\0"),
        "08P01",
        "invalid startup packet layout",
        Same,
    ));
    cases.push(fatal(
        "non-UTF-8 parameter name",
        startup_with(&[(b"appl\xffcation_name", b"x")]),
        "08P01",
        "invalid startup packet: parameter name is not valid UTF-8",
        No,
    ));
    // The proxy logs in as its Entra user whatever the client says, so no (or an empty) user is
    // not an error here, unlike PostgreSQL's 28000 "no PostgreSQL user name specified".
    cases.push(session(
        "no user",
        false,
        packet(V3_0, &params(&[(b"database", DB.as_bytes())])),
        "R",
        &[("select current_user", ENTRA_USER)],
    ));
    cases.push(session(
        "empty user",
        false,
        startup(&[("user", ""), ("database", DB)]),
        "R",
        &[("select current_user", ENTRA_USER)],
    ));
    cases.push(session(
        "no parameters at all",
        false,
        packet(V3_0, &params(&[])),
        "R",
        &[("select current_database()", DB)],
    ));
    // Duplicates: the last one wins, as in PostgreSQL.
    cases.push(session(
        "duplicate database",
        false,
        startup(&[("user", "app"), ("database", "nope"), ("database", DB)]),
        "R",
        &[("select current_database()", DB)],
    ));
    cases.push(session(
        "duplicate application_name",
        false,
        startup_with(&[
            (b"application_name", b"first"),
            (b"application_name", b"second"),
        ]),
        "R",
        &[("show application_name", "second")],
    ));
    cases.push(session(
        "duplicate user",
        false,
        startup(&[("user", "a"), ("user", "b"), ("database", DB)]),
        "R",
        &[("select current_user", ENTRA_USER)],
    ));
    // Values go upstream as sent; the server's answers come back verbatim.
    cases.push(session(
        "options with newlines and tabs",
        false,
        startup_with(&[(
            b"options",
            b"-c work_mem=1234kB\n-c\tstatement_timeout=4321",
        )]),
        "R",
        &[
            ("show work_mem", "1234kB"),
            ("show statement_timeout", "4321ms"),
        ],
    ));
    cases.push(upstream_refusal(
        "very long database name",
        startup(&[("user", "app"), ("database", &"d".repeat(5000))]),
        "3D000",
        &format!("database \"{}\" does not exist", "d".repeat(63)),
    ));
    cases.push(upstream_refusal(
        "non-UTF-8 database name",
        packet(
            V3_0,
            &params(&[(b"user", b"app"), (b"database", b"caf\xe9")]),
        ),
        "3D000",
        "database \"caf",
    ));
    cases.push(upstream_refusal(
        "unknown parameter",
        startup_with(&[(b"hostile_guc", b"1")]),
        "42704",
        "unrecognized configuration parameter \"hostile_guc\"",
    ));
    cases.push(upstream_refusal(
        "replication=database",
        startup_with(&[(b"replication", b"database")]),
        "53300",
        "number of requested standby connections exceeds max_wal_senders",
    ));

    // Messages where the opening belongs.
    cases.push(fatal(
        "Query before the startup",
        query("select 1"),
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "Terminate before the startup",
        terminate(),
        "08P01",
        LEN,
        Silent,
    ));
    cases.push(fatal(
        "HTTP request",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        "08P01",
        LEN,
        Silent,
    ));
    // Random bytes: a random length word is out of range (checked: the first four bytes).
    for seed in 1..=4u64 {
        let bytes = random_bytes(seed, 512);
        assert!(
            bytes[0] != 0x16 && bytes[0] != 0,
            "seed {seed}: pick another"
        );
        cases.push(fatal(
            &format!("random bytes, seed {seed}"),
            bytes,
            "08P01",
            LEN,
            Silent,
        ));
    }
    // A valid length word, then random bytes: a random protocol version.
    for seed in 5..=8u64 {
        let body = random_bytes(seed, 60);
        assert!(
            body[0] != 0 && body[0] != 3 && body[0] != 0x04,
            "seed {seed}: pick another"
        );
        let mut bytes = 64u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(&body);
        cases.push(fatal(
            &format!("length word then random bytes, seed {seed}"),
            bytes,
            "0A000",
            PROTO,
            Same,
        ));
    }
}

/// A StartupMessage asking for protocol `version` (1.x, 2.x): refused in protocol 2's error
/// format, as PostgreSQL refuses it (compared byte for byte but for the versions it names).
fn protocol_2(name: &str, version: u32) -> Case<Pg> {
    let bytes = Arc::new(packet(version, &params(&[(b"user", b"app")])));
    case(name, move |ctx: Arc<Pg>| {
        let bytes = bytes.clone();
        async move {
            let v = format!("{}.{}", version >> 16, version & 0xffff);
            let got = exchange(ctx.tls, &bytes).await?;
            let want = format!(
                "EFATAL:  unsupported frontend protocol {v}: server supports 3.0 to 3.2\n\0"
            );
            ensure!(
                got == want.as_bytes(),
                "got {:?}",
                String::from_utf8_lossy(&got)
            );
            let direct = exchange(ctx.direct, &bytes).await?;
            let want = format!(
                "EFATAL:  unsupported frontend protocol {v}: server supports 3.0 to 3.0\n\0"
            );
            ensure!(
                direct == want.as_bytes(),
                "PostgreSQL itself: {:?}",
                String::from_utf8_lossy(&direct)
            );
            Ok(())
        }
    })
}
