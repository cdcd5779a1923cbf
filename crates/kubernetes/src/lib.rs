//! Per-pod identity for a node-local entra-db-proxy (a DaemonSet): each pod logs in to the
//! database as its own Entra workload identity, and pods the listener's policy does not admit
//! are refused.
//!
//! 1. [`PodTable`] lists and watches the pods of this node (`fieldSelector=spec.nodeName=NODE`)
//!    and maps pod IPs to namespace, service account, phase and `hostNetwork`.
//! 2. At accept, [`PodIdentities`] (a [`dbproxy_runtime::Admission`]) looks the client's
//!    source IP up, checks the [`Policy`], reads the service account's annotations
//!    (`azure.workload.identity/client-id`, `…/tenant-id`, and the database user in
//!    [`POSTGRES_USER_ANNOTATION`] / [`CASSANDRA_USER_ANNOTATION`] unless the policy maps it),
//!    and hands back a service for that identity.
//! 3. Each identity's credential is a [`dbproxy_credentials::TokenCache`] over the
//!    federated-assertion flow whose assertion is a TokenRequest for the service account,
//!    audience `api://AzureADTokenExchange`, bound to a running pod of it on this node
//!    ([`TokenRequestAssertion`]). Caches are bounded in number and dropped when their
//!    service account has no pod left on the node.
//!
//! # Layout
//! - `client`: [`KubeClient`], a small client of the four calls needed, on reqwest (the
//!   proxy's one TLS stack), with the in-cluster configuration ([`KubeConfig`]); its
//!   `parse` module reads the answers without I/O.
//! - `pods`: [`PodTable`] and its list+watch task.
//! - `policy`: [`Policy`]: allowed namespaces and service accounts, user mappings.
//! - `identity`: [`PodIdentities`] and [`TokenRequestAssertion`].
//! - `fuzzing` (only with the `fuzzing` feature, for `fuzz/`): the response parsers and the
//!   pod table's list/watch updates.
//!
//! Why not kube-rs: `kube` 2.x/5.x with `rustls-tls` + `aws-lc-rs` does fit the dependency
//! policy (checked with `cargo tree`: no ring, no OpenSSL), but it brings a second HTTP and
//! TLS stack (hyper-rustls, tower) and `k8s-openapi`'s long compile for four REST calls.

#![warn(missing_docs)]

mod client;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
mod identity;
mod pods;
mod policy;

pub use client::{KubeClient, KubeConfig, KubeError, PodObject, ServiceAccount, WatchEvent};
pub use identity::{
    CASSANDRA_USER_ANNOTATION, CLIENT_ID_ANNOTATION, IdentityOptions, MakeService,
    POSTGRES_USER_ANNOTATION, PodIdentities, SeenIdentity, TENANT_ID_ANNOTATION,
    TokenRequestAssertion, WrapCredential,
};
pub use pods::{Lookup, PodInfo, PodTable};
pub use policy::Policy;
