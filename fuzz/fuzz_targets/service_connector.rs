//! Service Connector: the three forms of AZURE_POSTGRESQL_CONNECTIONSTRING (libpq key/values,
//! .NET `Key=Value;`, JDBC URL) and `host[:port]` splitting.
//!
//! Invariants: no panic; surrounding whitespace does not change the result (the parser trims).
#![no_main]

use entra_db_proxy::config::service_connector::{parse_connection_string, split_host_port};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let a = parse_connection_string(&s);
    let b = parse_connection_string(&format!("  {s}\n"));
    assert_eq!(
        a.as_ref()
            .map(|t| format!("{t:?}"))
            .map_err(|e| e.to_string()),
        b.as_ref()
            .map(|t| format!("{t:?}"))
            .map_err(|e| e.to_string()),
    );
    let _ = split_host_port(&s);
});
