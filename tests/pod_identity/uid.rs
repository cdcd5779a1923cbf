//! Host processes on a Unix socket: `--allow-uid` admits the listed uids (SO_PEERCRED) only.

use crate::stack::{DB, ENTRA_USER, Stack};

fn psql_over(dir: &std::path::Path) -> (bool, String, String) {
    let mut psql = std::process::Command::new("psql");
    psql.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .args([
            "-X",
            "-At",
            "-h",
            dir.to_str().unwrap(),
            "-U",
            "someone",
            "-d",
            DB,
        ])
        .args(["-c", "select current_user"]);
    crate::util::run(&mut psql)
}

#[tokio::test(flavor = "multi_thread")]
async fn allow_uid_admits_listed_uids_only() {
    let s = Stack::start().await;
    // SAFETY: getuid has no preconditions.
    let me = unsafe { libc_getuid() };
    for (uids, admitted) in [(format!("{me}"), true), (format!("{}", me + 4242), false)] {
        let dir = s.dir.join(format!("sock-{admitted}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cmd = s.proxy_sp().args(["--allow-uid", &uids]);
        let i = cmd
            .args
            .iter()
            .position(|a| a == "--postgres-listen")
            .unwrap();
        cmd.args[i + 1] = dir.to_str().unwrap().to_owned();
        let proxy = cmd.expect_warnings(&[r#""cause":"not_admitted""#]).spawn();
        let (ok, out, err) = psql_over(&dir);
        if admitted {
            assert!(ok, "{err}\n{}", proxy.log());
            assert_eq!(out.trim(), ENTRA_USER);
        } else {
            assert!(!ok);
            assert!(
                err.contains(&format!("uid {me} may not use this listener"))
                    && err.contains("--allow-uid"),
                "{err}"
            );
        }
    }
}

unsafe extern "C" {
    #[link_name = "getuid"]
    fn libc_getuid() -> u32;
}
