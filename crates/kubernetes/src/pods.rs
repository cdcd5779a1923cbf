//! [`PodTable`]: the pods of this node by IP, kept current by list + watch.
//!
//! The task ([`PodTable::spawn`]) lists the node's pods, then watches from the list's resource
//! version, applying ADDED / MODIFIED / DELETED as they come; when the server ends a watch
//! (every few minutes) it watches again from the last version seen, and on 410 Gone it lists
//! again. When the API cannot be reached the table is marked **not synced** and every lookup
//! answers [`Lookup::NotSynced`] until a fresh list succeeds (retried with backoff, 1 s to
//! 30 s): while the proxy cannot see pod changes, an IP may have moved to another pod, so no
//! one is admitted on a stale table.
//!
//! Only pods in phase `Running` with an IP are looked up. Host-network pods are kept apart:
//! their IP is the node's, shared with every other host-network pod and the node's own
//! processes, so it identifies no one ([`Lookup::HostNetwork`]).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, RwLock},
    time::Duration,
};

use crate::client::{KubeClient, PodObject, WatchEvent};

/// What the proxy knows of one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID (for TokenRequest's `boundObjectRef`).
    pub uid: String,
    /// Service account (`default` when the spec names none).
    pub service_account: String,
    /// Phase.
    pub phase: String,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// Its IPs.
    pub ips: Vec<IpAddr>,
}

impl PodInfo {
    fn from_object(p: &PodObject) -> PodInfo {
        let mut ips: Vec<IpAddr> = p
            .status
            .pod_ips
            .iter()
            .filter_map(|i| i.ip.parse().ok())
            .collect();
        if let Some(ip) = p.status.pod_ip.as_deref().and_then(|i| i.parse().ok())
            && !ips.contains(&ip)
        {
            ips.push(ip);
        }
        PodInfo {
            namespace: p.metadata.namespace.clone(),
            name: p.metadata.name.clone(),
            uid: p.metadata.uid.clone(),
            service_account: p
                .spec
                .service_account_name
                .clone()
                .filter(|s| !s.is_empty())
                .unwrap_or_else(|| "default".into()),
            phase: p.status.phase.clone(),
            host_network: p.spec.host_network,
            ips,
        }
    }

    /// `namespace/name` of the pod.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// `namespace/serviceaccount`.
    pub fn service_account_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.service_account)
    }
}

/// The answer for one source IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A running pod of this node.
    Pod(Arc<PodInfo>),
    /// The IP of host-network pods.
    HostNetwork,
    /// No running pod of this node has this IP.
    Unknown,
    /// The table is not current (why).
    NotSynced(String),
}

#[derive(Default)]
struct State {
    synced: bool,
    last_error: Option<String>,
    /// By UID.
    pods: HashMap<String, Arc<PodInfo>>,
}

/// The node's pods (see the module docs).
pub struct PodTable {
    node: String,
    state: RwLock<State>,
}

impl std::fmt::Debug for PodTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodTable")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PodTable {
    /// An empty, not yet synced table for `node`.
    pub fn new(node: &str) -> Arc<PodTable> {
        Arc::new(PodTable {
            node: node.to_owned(),
            state: RwLock::new(State {
                last_error: Some("the pod list has not been read yet".into()),
                ..State::default()
            }),
        })
    }

    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Who has `ip`.
    pub fn lookup(&self, ip: IpAddr) -> Lookup {
        let s = self.read();
        if !s.synced {
            return Lookup::NotSynced(s.last_error.clone().unwrap_or_else(|| "not synced".into()));
        }
        let mut host = false;
        for p in s.pods.values() {
            if p.phase != "Running" || !p.ips.contains(&ip) {
                continue;
            }
            if p.host_network {
                host = true;
            } else {
                return Lookup::Pod(p.clone());
            }
        }
        if host {
            Lookup::HostNetwork
        } else {
            Lookup::Unknown
        }
    }

    /// A running pod of service account `namespace/sa` (for TokenRequest), preferring `uid`.
    pub fn pod_of(
        &self,
        namespace: &str,
        sa: &str,
        prefer_uid: Option<&str>,
    ) -> Option<Arc<PodInfo>> {
        let s = self.read();
        if !s.synced {
            return None;
        }
        // Never a host-network pod: it is never admitted, so a token bound to it is of no use.
        // The preferred pod too must be one of these: a running pod of `namespace/sa`, or the
        // token would be bound to (and last as long as) a pod of another service account.
        let usable = |p: &PodInfo| {
            p.phase == "Running"
                && !p.host_network
                && p.namespace == namespace
                && p.service_account == sa
        };
        if let Some(p) = prefer_uid.and_then(|u| s.pods.get(u))
            && usable(p)
        {
            return Some(p.clone());
        }
        // The first by name, so the choice does not depend on the table's hash order.
        s.pods
            .values()
            .filter(|p| usable(p))
            .min_by(|a, b| a.name.cmp(&b.name))
            .cloned()
    }

    /// Every pod known (for `check`), sorted by namespace and name.
    pub fn pods(&self) -> Vec<Arc<PodInfo>> {
        let mut v: Vec<_> = self.read().pods.values().cloned().collect();
        v.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        v
    }

    /// Whether the table is current.
    pub fn synced(&self) -> bool {
        self.read().synced
    }

    pub(crate) fn replace(&self, items: &[PodObject]) {
        let mut s = self.write();
        s.pods = items
            .iter()
            .map(|p| (p.metadata.uid.clone(), Arc::new(PodInfo::from_object(p))))
            .collect();
        s.synced = true;
        s.last_error = None;
    }

    pub(crate) fn apply(&self, event: &WatchEvent) {
        let mut s = self.write();
        match event {
            WatchEvent::Added(p) | WatchEvent::Modified(p) => {
                let info = PodInfo::from_object(p);
                tracing::debug!(pod = %info.pod(), service_account = %info.service_account, phase = %info.phase, ips = ?info.ips, "pod changed");
                s.pods.insert(p.metadata.uid.clone(), Arc::new(info));
            }
            WatchEvent::Deleted(p) => {
                tracing::debug!(pod = %format!("{}/{}", p.metadata.namespace, p.metadata.name), "pod deleted");
                s.pods.remove(&p.metadata.uid);
            }
            WatchEvent::Bookmark(_) | WatchEvent::Error { .. } => {}
        }
    }

    pub(crate) fn unsync(&self, why: String) {
        let mut s = self.write();
        if s.synced {
            tracing::warn!(node = %self.node, error = %why, "the pod table is no longer current: clients are refused until the Kubernetes API answers again");
        }
        s.synced = false;
        s.last_error = Some(why);
    }

    /// Starts the list + watch task; it ends when the table is dropped.
    pub fn spawn(self: &Arc<Self>, client: Arc<KubeClient>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_secs(1);
            loop {
                let Some(table) = weak.upgrade() else { return };
                let node = table.node.clone();
                match client.list_pods(&node).await {
                    Ok((items, rv)) => {
                        let was = table.synced();
                        table.replace(&items);
                        if !was {
                            tracing::info!(node = %node, pods = items.len(), "pod table synced from the Kubernetes API");
                        }
                        backoff = Duration::from_secs(1);
                        let mut rv = rv;
                        drop(table);
                        // Watch until the API fails or the version is too old.
                        loop {
                            let Some(table) = weak.upgrade() else { return };
                            let mut gone = false;
                            let mut last = rv.clone();
                            let r = client
                                .watch_pods(&node, &rv, |e| {
                                    match &e {
                                        WatchEvent::Error { code: 410, .. } => gone = true,
                                        WatchEvent::Error { code, message } => tracing::info!(code, message = %message, "watch error event"),
                                        WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p) => last = p.metadata.resource_version.clone(),
                                        WatchEvent::Bookmark(v) => last = v.clone(),
                                    }
                                    table.apply(&e);
                                })
                                .await;
                            rv = last;
                            match r {
                                Ok(()) if !gone => continue,
                                Ok(()) => break,
                                Err(e) if e.status() == Some(410) => break,
                                Err(e) => {
                                    table.unsync(e.to_string());
                                    break;
                                }
                            }
                        }
                    }
                    Err(e) => {
                        table.unsync(e.to_string());
                        drop(table);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(30));
                    }
                }
            }
        })
    }

    /// Test helper: fills the table as if listed.
    #[doc(hidden)]
    pub fn set_for_test(&self, pods: Vec<PodInfo>) {
        let mut s = self.write();
        s.pods = pods
            .into_iter()
            .map(|p| (p.uid.clone(), Arc::new(p)))
            .collect();
        s.synced = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, ip: &str, host: bool, phase: &str) -> PodInfo {
        PodInfo {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            service_account: "sa".into(),
            phase: phase.into(),
            host_network: host,
            ips: vec![ip.parse().unwrap()],
        }
    }

    #[test]
    fn lookups() {
        let t = PodTable::new("n");
        assert!(matches!(
            t.lookup("10.0.0.1".parse().unwrap()),
            Lookup::NotSynced(_)
        ));
        t.set_for_test(vec![
            pod("a", "10.0.0.1", false, "Running"),
            pod("h", "10.0.0.9", true, "Running"),
            pod("p", "10.0.0.2", false, "Pending"),
        ]);
        assert!(matches!(t.lookup("10.0.0.1".parse().unwrap()), Lookup::Pod(p) if p.name == "a"));
        assert_eq!(t.lookup("10.0.0.9".parse().unwrap()), Lookup::HostNetwork);
        assert_eq!(t.lookup("10.0.0.2".parse().unwrap()), Lookup::Unknown);
        assert_eq!(t.lookup("10.0.0.3".parse().unwrap()), Lookup::Unknown);
        t.unsync("down".into());
        assert_eq!(
            t.lookup("10.0.0.1".parse().unwrap()),
            Lookup::NotSynced("down".into())
        );
    }

    /// A TokenRequest is bound to a running pod that could be admitted, never to a
    /// host-network one, and the choice does not depend on hash order.
    #[test]
    fn pod_of_skips_host_network_and_pending_pods() {
        let t = PodTable::new("n");
        t.set_for_test(vec![
            pod("a-host", "10.0.0.9", true, "Running"),
            pod("a-pending", "10.0.0.8", false, "Pending"),
            pod("z", "10.0.0.2", false, "Running"),
            pod("m", "10.0.0.1", false, "Running"),
        ]);
        for _ in 0..3 {
            assert_eq!(
                t.pod_of("ns", "sa", None).map(|p| p.name.clone()),
                Some("m".into())
            );
        }
        assert_eq!(
            t.pod_of("ns", "sa", Some("uid-z")).map(|p| p.name.clone()),
            Some("z".into())
        );
        assert_eq!(
            t.pod_of("ns", "sa", Some("uid-a-host"))
                .map(|p| p.name.clone()),
            Some("m".into())
        );
        t.set_for_test(vec![pod("a-host", "10.0.0.9", true, "Running")]);
        assert!(t.pod_of("ns", "sa", None).is_none());
        assert!(t.pod_of("other", "sa", None).is_none());
    }

    /// The preferred UID is honoured only for a running, non-host-network pod of the service
    /// account asked for: a pod of another service account (or namespace) is never chosen.
    #[test]
    fn pod_of_honours_the_preferred_uid_only_for_the_service_account_asked_for() {
        let t = PodTable::new("n");
        let other_sa = PodInfo {
            service_account: "other".into(),
            ..pod("b-other-sa", "10.0.0.3", false, "Running")
        };
        let other_ns = PodInfo {
            namespace: "ns2".into(),
            ..pod("c-other-ns", "10.0.0.4", false, "Running")
        };
        t.set_for_test(vec![
            other_sa,
            other_ns,
            pod("a-host", "10.0.0.9", true, "Running"),
            pod("a-pending", "10.0.0.8", false, "Pending"),
            pod("m", "10.0.0.1", false, "Running"),
        ]);
        for uid in [
            "uid-b-other-sa",
            "uid-c-other-ns",
            "uid-a-host",
            "uid-a-pending",
        ] {
            assert_eq!(
                t.pod_of("ns", "sa", Some(uid)).map(|p| p.name.clone()),
                Some("m".into()),
                "preferring {uid}"
            );
        }
        // Asked for the other service account: its own pod, even when preferring another's.
        assert_eq!(
            t.pod_of("ns", "other", Some("uid-m"))
                .map(|p| p.name.clone()),
            Some("b-other-sa".into())
        );
        // No pod of the service account: none, whatever the preference.
        t.set_for_test(vec![PodInfo {
            service_account: "other".into(),
            ..pod("b", "10.0.0.3", false, "Running")
        }]);
        assert!(t.pod_of("ns", "sa", Some("uid-b")).is_none());
    }
}
