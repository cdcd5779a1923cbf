//! A node's files: `cassandra.yaml` (auth, caches off, TLS-only native port, ring layout),
//! `logback.xml`, and the JVM command line (heap, GC and JIT settings for a small machine, the
//! JDK 17 module flags, the `-Dcassandra.*` properties, the jar classpath).
//!
//! They come from the cluster (name, ports, node dirs) and [`CassandraOptions`];
//! `process.rs` starts the JVM with them.

use anyhow::Context as _;

use super::{CassandraCluster, CassandraOptions, find_jar};
use crate::util;

/// Balanced Murmur3 tokens for three nodes (as ccm's `balanced_tokens`).
const TOKENS_3: [i64; 3] = [
    -9_223_372_036_854_775_808,
    -3_074_457_345_618_258_603,
    3_074_457_345_618_258_602,
];

impl CassandraCluster {
    /// Writes node `n`'s (0-based) dirs, `node.pem`, `cassandra.yaml` and `logback.xml`.
    pub(super) fn write_node_files(
        &self,
        n: usize,
        bundle: &str,
        opts: &CassandraOptions,
    ) -> anyhow::Result<()> {
        let node = &self.nodes[n];
        let d = &node.dir;
        for sub in [
            "data",
            "commitlog",
            "saved_caches",
            "hints",
            "cdc_raw",
            "logs",
            "tmp",
            "triggers",
        ] {
            std::fs::create_dir_all(d.join(sub))
                .with_context(|| format!("creating {}/{sub}", d.display()))?;
        }
        util::write_file(&d.join("node.pem"), bundle, 0o600, None)?;
        let token = if opts.nodes == 3 {
            format!("initial_token: '{}'\n", TOKENS_3[n])
        } else {
            String::new()
        };
        let authorizer = if opts.authorizer {
            "CassandraAuthorizer"
        } else {
            "AllowAllAuthorizer"
        };
        let yaml = format!(
            r#"cluster_name: '{name}'
partitioner: org.apache.cassandra.dht.Murmur3Partitioner
endpoint_snitch: SimpleSnitch
num_tokens: 1
{token}auto_bootstrap: false
authenticator:
  class_name: org.apache.cassandra.auth.PasswordAuthenticator
authorizer: {authorizer}
role_manager: CassandraRoleManager
roles_validity: 0ms
permissions_validity: 0ms
credentials_validity: 0ms
listen_address: {ip}
rpc_address: {ip}
storage_port: {storage}
native_transport_port: {native}
start_native_transport: true
client_encryption_options:
  enabled: true
  optional: false
  ssl_context_factory:
    class_name: org.apache.cassandra.security.PEMBasedSslContextFactory
  keystore: {dir}/node.pem
seed_provider:
  - class_name: org.apache.cassandra.locator.SimpleSeedProvider
    parameters:
      - seeds: "127.0.0.1:{storage}"
data_file_directories:
  - {dir}/data
commitlog_directory: {dir}/commitlog
saved_caches_directory: {dir}/saved_caches
hints_directory: {dir}/hints
cdc_raw_directory: {dir}/cdc_raw
commitlog_sync: periodic
commitlog_sync_period: 10s
auto_snapshot: false
memtable_allocation_type: heap_buffers
concurrent_reads: 4
concurrent_writes: 4
concurrent_counter_writes: 4
concurrent_compactors: 1
"#,
            name = self.name,
            ip = node.ip,
            storage = self.storage_port,
            native = self.native_port,
            dir = d.display(),
        );
        util::write_file(&d.join("cassandra.yaml"), yaml, 0o600, None)?;
        util::write_file(
            &d.join("logback.xml"),
            r#"<configuration>
  <appender name="FILE" class="ch.qos.logback.core.FileAppender">
    <file>${cassandra.logdir}/system.log</file>
    <encoder><pattern>%-5level [%thread] %date{ISO8601} %logger{20} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="FILE"/></root>
</configuration>
"#,
            0o600,
            None,
        )
    }

    /// The JVM arguments of node `n` (0-based), main class included.
    pub(super) fn jvm_args(
        &self,
        n: usize,
        opts: &CassandraOptions,
    ) -> anyhow::Result<Vec<String>> {
        let install = &self.install;
        let node = &self.nodes[n];
        let d = &node.dir;
        let jamm = find_jar(&install.lib, "jamm-").context("no jamm jar")?;
        // Only the last node of three creates the default superuser: by then the ring is
        // complete, so the row goes to the replicas that keep owning it (auto_bootstrap is off,
        // nothing would move it later).
        let superuser_delay = if opts.nodes == 3 && n + 1 < opts.nodes {
            3_600_000
        } else {
            100
        };
        let mut args: Vec<String> = vec![
            format!("-Xms{}", opts.heap),
            format!("-Xmx{}", opts.heap),
            "-Xss256k".into(),
            "-XX:+UseThreadPriorities".into(),
            "-XX:+PerfDisableSharedMem".into(),
            "-XX:+ExitOnOutOfMemoryError".into(),
            "-XX:+UseG1GC".into(),
            "-XX:+ParallelRefProcEnabled".into(),
            "-XX:MaxTenuringThreshold=1".into(),
            "-XX:G1HeapRegionSize=16m".into(),
            "-XX:ParallelGCThreads=2".into(),
            "-XX:ConcGCThreads=1".into(),
            // C1 only: starts much faster on 2 cores; tests need no peak throughput.
            "-XX:TieredStopAtLevel=1".into(),
            "-Djava.net.preferIPv4Stack=true".into(),
            "-Djdk.attach.allowAttachSelf=true".into(),
        ];
        for (flag, what) in JDK17_MODULE_FLAGS {
            args.push(format!("--{flag}"));
            args.push(format!("{what}=ALL-UNNAMED"));
        }
        args.extend([
            "-Dio.netty.tryReflectionSetAccessible=true".into(),
            "-Dio.netty.allocator.useCacheForAllThreads=true".into(),
            "-Dio.netty.allocator.maxOrder=11".into(),
            format!("-javaagent:{}", jamm.display()),
            format!("-Dcassandra.jmx.local.port={}", node.jmx_port),
            "-Dcom.sun.management.jmxremote.authenticate=false".into(),
            format!("-Dcassandra.config=file://{}/cassandra.yaml", d.display()),
            "-Dcassandra-foreground=yes".into(),
            format!("-Dcassandra.storagedir={}", d.display()),
            format!("-Dcassandra.logdir={}/logs", d.display()),
            format!("-Dcassandra.triggers_dir={}/triggers", d.display()),
            format!("-Dlogback.configurationFile={}/logback.xml", d.display()),
            format!("-Djava.io.tmpdir={}/tmp", d.display()),
            "-Dcassandra.available_processors=2".into(),
            format!("-Dcassandra.superuser_setup_delay_ms={superuser_delay}"),
            format!("-Dcassandra.system_auth.default_rf={}", opts.nodes),
            "-Dcassandra.skip_wait_for_gossip_to_settle=0".into(),
            // 5.0 refuses a second password change of a role within 5 s; key rotation tests
            // change them back to back.
            "-Dcassandra.role_password_update_min_interval_in_ms=0".into(),
            "-Dcassandra.unsafesystem=true".into(),
            "-cp".into(),
            format!("{}/*", install.lib.display()),
            "org.apache.cassandra.service.CassandraDaemon".into(),
        ]);
        Ok(args)
    }
}

/// JDK 17 module access Cassandra 5.0 needs (conf/jvm17-server.options).
const JDK17_MODULE_FLAGS: &[(&str, &str)] = &[
    ("add-exports", "java.base/jdk.internal.misc"),
    ("add-exports", "java.base/jdk.internal.ref"),
    ("add-exports", "java.base/sun.nio.ch"),
    ("add-exports", "java.base/java.lang.ref"),
    (
        "add-exports",
        "java.management.rmi/com.sun.jmx.remote.internal.rmi",
    ),
    ("add-exports", "java.management/com.sun.jmx.remote.security"),
    ("add-exports", "java.rmi/sun.rmi.registry"),
    ("add-exports", "java.rmi/sun.rmi.server"),
    ("add-exports", "java.sql/java.sql"),
    ("add-exports", "jdk.unsupported/sun.misc"),
    ("add-exports", "jdk.compiler/com.sun.tools.javac.file"),
    ("add-exports", "jdk.attach/sun.tools.attach"),
    ("add-opens", "java.base/java.lang.module"),
    ("add-opens", "java.base/jdk.internal.loader"),
    ("add-opens", "java.base/jdk.internal.ref"),
    ("add-opens", "java.base/jdk.internal.reflect"),
    ("add-opens", "java.base/jdk.internal.math"),
    ("add-opens", "java.base/jdk.internal.module"),
    ("add-opens", "java.base/jdk.internal.util.jar"),
    ("add-opens", "jdk.management/com.sun.management.internal"),
    ("add-opens", "java.base/sun.nio.ch"),
    ("add-opens", "java.base/java.io"),
    ("add-opens", "java.base/java.lang.reflect"),
    ("add-opens", "java.base/java.lang"),
    ("add-opens", "java.base/java.util"),
    ("add-opens", "java.base/java.nio"),
    ("add-opens", "jdk.compiler/com.sun.tools.javac"),
];
