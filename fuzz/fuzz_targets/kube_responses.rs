//! The Kubernetes API's answers (`dbproxy_kubernetes::fuzzing`, the `fuzzing` feature): the
//! node's pod list and watch events into a `PodTable`, the `Status` body of an error, a
//! ServiceAccount and a TokenRequest answer.
//!
//! Byte 0 selects the mode (`% 5`); the rest is:
//! 0. raw JSON: byte 1 is the chunking byte, then the pod list up to the first newline, then
//!    the watch stream (one event a line), fed to the watch's line splitter in chunks;
//! 1. pods built from the bytes, so lookups meet overlapping IPs, namespaces, service accounts
//!    and UIDs: commands (`% 5`) ADDED / MODIFIED / DELETED of a pod, a new list of up to 4
//!    pods, or an API failure; a pod is 3 bytes (UID and name; namespace, service account,
//!    phase and hostNetwork; podIP and podIPs from a few addresses and a bad one);
//! 2. an error body (`status_message`);
//! 3. a ServiceAccount (`parse_service_account`);
//! 4. a TokenRequest answer (`parse_token_response`).
//!
//! Invariants besides "no panic":
//! * the table holds exactly the model's pods (the last list, then the events, by UID), and
//!   answers lookups as the model does: `lookup` a running non-host-network pod with the IP,
//!   else `HostNetwork` for a running host-network one, else `Unknown`; `pod_of` the
//!   preferred UID only if it is a running, non-host-network pod of the namespace and service
//!   account asked for, else the first by name of those (none if there are none); nothing
//!   once the API failed, until a new list;
//! * the watch stream gives the same events whatever its chunking;
//! * a Status message is at most 300 characters of the body's `message` / `reason`, or the
//!   first 200 of the text;
//! * a ServiceAccount's annotations are the body's; a token is the body's non-empty
//!   `status.token`, its Debug shows none of it, and a TokenRequest error is one of the two
//!   fixed messages (never the body's content).
#![no_main]

#[path = "common/mod.rs"]
mod common;

use std::{
    collections::{BTreeSet, HashMap},
    net::IpAddr,
};

use common::Bytes;
use dbproxy_kubernetes::fuzzing::{
    self, Lookup, PodInfo, PodObject, PodTable, WatchEvent, WatchLines,
};
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

/// The model: the pods by UID, and whether the table is current.
#[derive(Default)]
struct Model {
    pods: HashMap<String, PodInfo>,
    synced: bool,
}

/// What the table should know of a pod.
fn info(p: &PodObject) -> PodInfo {
    let mut ips: Vec<IpAddr> = p
        .status
        .pod_ips
        .iter()
        .filter_map(|i| i.ip.parse().ok())
        .collect();
    if let Some(ip) = p.status.pod_ip.as_deref().and_then(|i| i.parse().ok()) {
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    let sa = p
        .spec
        .service_account_name
        .clone()
        .filter(|s| !s.is_empty());
    PodInfo {
        namespace: p.metadata.namespace.clone(),
        name: p.metadata.name.clone(),
        uid: p.metadata.uid.clone(),
        service_account: sa.unwrap_or_else(|| "default".into()),
        phase: p.status.phase.clone(),
        host_network: p.spec.host_network,
        ips,
    }
}

impl Model {
    fn list(&mut self, table: &PodTable, items: &[PodObject]) {
        fuzzing::replace(table, items);
        self.pods = items
            .iter()
            .map(|p| (p.metadata.uid.clone(), info(p)))
            .collect();
        self.synced = true;
    }

    fn event(&mut self, table: &PodTable, e: &WatchEvent) {
        fuzzing::apply(table, e);
        match e {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                self.pods.insert(p.metadata.uid.clone(), info(p));
            }
            WatchEvent::Deleted(p) => {
                self.pods.remove(&p.metadata.uid);
            }
            WatchEvent::Bookmark(_) | WatchEvent::Error { .. } => {}
        }
    }

    fn fail(&mut self, table: &PodTable) {
        fuzzing::unsync(table, "the API failed");
        self.synced = false;
    }

    fn usable(p: &PodInfo, ns: &str, sa: &str) -> bool {
        p.phase == "Running" && !p.host_network && p.namespace == ns && p.service_account == sa
    }

    fn check(&self, table: &PodTable) {
        assert_eq!(table.synced(), self.synced);
        let key = |p: &PodInfo| (p.namespace.clone(), p.name.clone(), p.uid.clone());
        let mut got: Vec<PodInfo> = table.pods().iter().map(|p| (**p).clone()).collect();
        let mut want: Vec<PodInfo> = self.pods.values().cloned().collect();
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);

        let mut ips: BTreeSet<IpAddr> = self.pods.values().flat_map(|p| p.ips.clone()).collect();
        ips.insert(IpAddr::from([10, 255, 255, 255]));
        for ip in ips {
            let running = |host: bool| {
                self.pods.values().filter(move |p| {
                    p.phase == "Running" && p.host_network == host && p.ips.contains(&ip)
                })
            };
            match table.lookup(ip) {
                Lookup::NotSynced(_) => assert!(!self.synced),
                _ if !self.synced => panic!("a lookup on a table that is not current"),
                Lookup::Pod(p) => assert!(running(false).any(|m| *m == *p), "{ip}: {p:?}"),
                Lookup::HostNetwork => {
                    assert!(running(false).next().is_none() && running(true).next().is_some())
                }
                Lookup::Unknown => assert!(running(false).chain(running(true)).next().is_none()),
            }
        }

        // Every pod's namespace with every pod's service account (and one of neither), each
        // preferring nothing, every UID, or an unknown one.
        let mut pairs: BTreeSet<(String, String)> = BTreeSet::new();
        let firsts = self.pods.values().take(6);
        for a in firsts.clone() {
            for b in firsts.clone() {
                pairs.insert((a.namespace.clone(), b.service_account.clone()));
            }
        }
        pairs.insert(("nowhere".into(), "default".into()));
        let mut uids: Vec<Option<&str>> =
            self.pods.keys().take(6).map(|u| Some(u.as_str())).collect();
        uids.extend([None, Some("no-such-uid")]);
        for (ns, sa) in &pairs {
            let candidates: Vec<&PodInfo> = self
                .pods
                .values()
                .filter(|p| Self::usable(p, ns, sa))
                .collect();
            let first = candidates.iter().map(|p| &p.name).min();
            for prefer in &uids {
                let got = table.pod_of(ns, sa, *prefer);
                if !self.synced {
                    assert!(got.is_none());
                    continue;
                }
                match prefer
                    .and_then(|u| self.pods.get(u))
                    .filter(|p| Self::usable(p, ns, sa))
                {
                    Some(p) => {
                        assert_eq!(got.as_deref(), Some(p), "{ns}/{sa} preferring {prefer:?}")
                    }
                    None => match &got {
                        None => assert!(first.is_none(), "{ns}/{sa}: none, but {first:?} runs"),
                        Some(p) => {
                            assert!(candidates.iter().any(|c| **c == **p), "{ns}/{sa} got {p:?}");
                            assert_eq!(Some(&p.name), first, "{ns}/{sa}: not the first by name");
                        }
                    },
                }
            }
        }
    }
}

/// The events of `stream`, chunked as `chunks` says, with whether it ended in an error.
fn events(chunks: &[&[u8]]) -> (Vec<String>, bool) {
    let mut lines = WatchLines::default();
    let mut seen = Vec::new();
    for c in chunks {
        if lines.feed(c, |e| seen.push(format!("{e:?}"))).is_err() {
            return (seen, true);
        }
    }
    (seen, false)
}

fn raw(data: &[u8]) {
    let Some((&seed, rest)) = data.split_first() else {
        return;
    };
    let nl = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let (list, stream) = (&rest[..nl], rest.get(nl + 1..).unwrap_or_default());
    let table = PodTable::new("node");
    let mut model = Model::default();
    model.check(&table);
    let Ok((items, _rv)) = fuzzing::parse_pod_list(list) else {
        return model.check(&table);
    };
    model.list(&table, &items);
    model.check(&table);

    let mut input = vec![seed];
    input.extend_from_slice(stream);
    let (_, chunks) = common::chunks(&input);
    assert_eq!(
        events(&chunks),
        events(&[stream]),
        "the chunking changed the events"
    );
    let mut lines = WatchLines::default();
    for c in chunks {
        let mut seen = Vec::new();
        let r = lines.feed(c, |e| seen.push(e));
        for e in &seen {
            model.event(&table, e);
        }
        if r.is_err() {
            model.fail(&table);
            return model.check(&table);
        }
        model.check(&table);
    }
}

fn pod(b: &mut Bytes) -> Value {
    const IPS: [&str; 4] = ["10.0.0.1", "10.0.0.2", "fd00::1", "not-an-ip"];
    let (x, y, z) = (b.u8(), b.u8(), b.u8());
    let sa = [Some("sa"), Some("other"), None, Some("")][usize::from(y >> 1) % 4];
    let mut spec = json!({ "hostNetwork": y & 0x80 != 0, "nodeName": "node" });
    if let Some(sa) = sa {
        spec["serviceAccountName"] = json!(sa);
    }
    let phase = ["Running", "Pending", "Succeeded"][usize::from(y >> 3) % 3];
    let name = ["a", "b", "c", "d"][usize::from(x >> 3) % 4];
    let namespace = ["ns", "ns2"][usize::from(y & 1)];
    let mut status = json!({
        "phase": phase,
        "podIPs": (0..4).filter(|i| z >> (3 + i) & 1 != 0).map(|i| json!({ "ip": IPS[i] })).collect::<Vec<_>>(),
    });
    if z % 5 < 4 {
        status["podIP"] = json!(IPS[usize::from(z % 5)]);
    }
    json!({
        "metadata": {
            "uid": format!("u{}", x % 5),
            "name": name,
            "namespace": namespace,
            "resourceVersion": "1",
        },
        "spec": spec,
        "status": status,
    })
}

fn built(data: &[u8]) {
    let mut b = Bytes::new(data);
    let table = PodTable::new("node");
    let mut model = Model::default();
    let mut steps = 0;
    while !b.is_empty() && steps < 200 {
        steps += 1;
        let cmd = b.u8();
        match cmd % 5 {
            k @ 0..=2 => {
                let kind = ["ADDED", "MODIFIED", "DELETED"][usize::from(k)];
                let mut line = serde_json::to_vec(&json!({ "type": kind, "object": pod(&mut b) }))
                    .unwrap_or_default();
                line.push(b'\n');
                let mut seen = Vec::new();
                let r = WatchLines::default().feed(&line, |e| seen.push(e));
                assert!(
                    r.is_ok() && seen.len() == 1,
                    "a built event did not parse: {r:?}"
                );
                for e in &seen {
                    model.event(&table, e);
                }
            }
            3 => {
                let items: Vec<Value> = (0..(cmd >> 3) % 5).map(|_| pod(&mut b)).collect();
                let body = json!({ "kind": "PodList", "metadata": { "resourceVersion": "5" }, "items": items });
                let parsed = fuzzing::parse_pod_list(body.to_string().as_bytes());
                let Ok((items, rv)) = parsed else {
                    panic!("a built list did not parse: {parsed:?}")
                };
                assert_eq!(rv, "5");
                model.list(&table, &items);
            }
            _ => model.fail(&table),
        }
        model.check(&table);
    }
}

fn status(body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    let out = fuzzing::status_message(&text);
    let prefix_of = |s: &str, n: usize| out == s.chars().take(n).collect::<String>();
    let v: Option<Value> = serde_json::from_str(&text).ok();
    let field = |k: &str| v.as_ref().and_then(|v| v[k].as_str().map(str::to_owned));
    match field("message").or_else(|| field("reason")) {
        Some(m) => assert!(prefix_of(&m, 300), "{out:?} is not the Status message"),
        None => assert!(
            prefix_of(&text, 200),
            "{out:?} is not the start of the text"
        ),
    }
}

fn service_account(body: &[u8]) {
    let Ok(sa) = fuzzing::parse_service_account(body) else {
        return;
    };
    // serde_json skips the fields the parser ignores without checking their UTF-8: such a body
    // parses as a ServiceAccount but not as a Value, and there is nothing to compare with.
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return;
    };
    let want = v["metadata"]["annotations"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    assert_eq!(sa.annotations.len(), want.len());
    for (k, val) in &sa.annotations {
        assert_eq!(want.get(k).and_then(Value::as_str), Some(val.as_str()));
    }
}

fn token(body: &[u8]) {
    match fuzzing::parse_token_response(body) {
        Ok(t) => {
            let v: Value = serde_json::from_slice(body).unwrap_or_default();
            assert_eq!(v["status"]["token"].as_str(), Some(t.expose()));
            assert!(!t.expose().is_empty());
            assert_eq!(
                format!("{t:?} {t}"),
                "Secret(<redacted>) Secret(<redacted>)"
            );
        }
        Err(e) => {
            let shown = e.to_string();
            assert!(
                shown.ends_with(": unexpected answer: the TokenRequest answer is not JSON")
                    || shown.ends_with(
                        ": unexpected answer: the TokenRequest answer has no status.token"
                    ),
                "{shown}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 5 {
        0 => raw(rest),
        1 => built(rest),
        2 => status(rest),
        3 => service_account(rest),
        _ => token(rest),
    }
});
