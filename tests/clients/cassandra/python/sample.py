"""The seed's Python sample (cassandra-driver) with its token and listKeys code removed.

In the seed, the app gets an Entra token, POSTs AZURE_COSMOS_LISTKEYURL for the account key and
connects over TLS with PlainTextAuthProvider(username, key). Behind entra-db-proxy all of that
goes: AZURE_COSMOS_CONTACTPOINT / AZURE_COSMOS_PORT name the proxy, and the driver connects with
no auth provider and no SSL context.

Then a workload: a keyspace and a table, ROWS rows written with a prepared statement
(execute_concurrent_with_args), read back with paging, checked; logged batches of prepared
statements.

Environment:
  AZURE_COSMOS_CONTACTPOINT, AZURE_COSMOS_PORT  the proxy (default 127.0.0.1:9042)
  AZURE_COSMOS_KEYSPACE                          keyspace to create and use (default ks_python)
  CQL_PROTOCOL_VERSION                           force this protocol version (unset: negotiate)
  ROWS                                           rows to write (default 10000)
  FETCH_SIZE                                     page size of the read-back (default 500)
  CQL_DEBUG                                      set: the driver's debug log on stderr

Then an error the app handles: a query on a missing table raises the driver's InvalidRequest
(CQL code 0x2200), which is caught, and the session goes on (a parameterised simple statement).

Prints one line: `ok python cassandra-driver <version> protocol=v<N> hosts=<known hosts>
dc=<data center> rows=<N> pages=<N> batch=logged error=<caught error>`; exits non-zero with a traceback on
any failure.
"""

import logging
import os
import sys

import cassandra
from cassandra.cluster import Cluster
from cassandra.concurrent import execute_concurrent_with_args

contact_point = os.getenv("AZURE_COSMOS_CONTACTPOINT", "127.0.0.1")
port = int(os.getenv("AZURE_COSMOS_PORT", "9042"))
keyspace = os.getenv("AZURE_COSMOS_KEYSPACE", "ks_python")
rows = int(os.getenv("ROWS", "10000"))
fetch_size = int(os.getenv("FETCH_SIZE", "500"))

if os.getenv("CQL_DEBUG"):
    logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(name)s %(levelname)s %(message)s")

kwargs = {}
if os.getenv("CQL_COMPRESSION"):  # e.g. "lz4" (needs the lz4 package)
    kwargs["compression"] = os.getenv("CQL_COMPRESSION")
forced = os.getenv("CQL_PROTOCOL_VERSION")
if forced:
    kwargs["protocol_version"] = int(forced)

# Connect to Azure Cosmos DB for Cassandra, through entra-db-proxy: no credentials, no TLS.
cluster = Cluster([contact_point], port=port, **kwargs)
session = cluster.connect()
session.default_timeout = 30

session.execute(
    f"CREATE KEYSPACE IF NOT EXISTS {keyspace} "
    "WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}"
)
session.execute(f"CREATE TABLE IF NOT EXISTS {keyspace}.items (id int PRIMARY KEY, name text)")
session.set_keyspace(keyspace)

insert = session.prepare("INSERT INTO items (id, name) VALUES (?, ?)")
results = execute_concurrent_with_args(
    session,
    insert,
    [(i, f"item {i}") for i in range(rows)],
    concurrency=64,
    raise_on_first_error=True,
)
assert len(results) == rows and all(r.success for r in results), "some inserts failed"

select = session.prepare("SELECT id, name FROM items")
bound = select.bind(())
bound.fetch_size = fetch_size
result = session.execute(bound)
seen = set()
read = 0
pages = 0
page_sizes = []
while True:
    pages += 1
    page_sizes.append(len(result.current_rows))
    for row in result.current_rows:
        assert row.name == f"item {row.id}", row
        seen.add(row.id)
        read += 1
    if not result.has_more_pages:
        break
    result.fetch_next_page()
if seen != set(range(rows)) or read != rows:
    # Say what is missing, and whether it can be read on its own (a lost write or a paging gap).
    missing = sorted(set(range(rows)) - seen)
    from cassandra import ConsistencyLevel
    from cassandra.query import SimpleStatement

    lookups = {}
    for i in missing[:10]:
        for cl in (ConsistencyLevel.ONE, ConsistencyLevel.ALL):
            st = SimpleStatement("SELECT id, name, token(id) FROM items WHERE id = %s", consistency_level=cl)
            lookups[(i, ConsistencyLevel.value_to_name[cl])] = list(session.execute(st, (i,)))
    (n,) = session.execute("SELECT count(*) FROM items").one()
    raise AssertionError(
        f"read back {read} rows, {len(seen)} distinct ids of {rows}; missing {missing[:10]}; "
        f"direct lookups {lookups}; count(*)={n}; page sizes {page_sizes}"
    )
assert pages >= rows // fetch_size, f"expected paging, got {pages} page(s)"

(count,) = session.execute("SELECT count(*) FROM items").one()
assert count == rows, f"count(*) = {count}, want {rows}"

# Logged batches of prepared statements: two rows in, read back, then out again (the table is
# left as it was, so the program can run again on the same keyspace).
from cassandra.query import BatchStatement, BatchType

delete = session.prepare("DELETE FROM items WHERE id = ?")
extra = [rows, rows + 1]
for stmt, args, want in [(insert, lambda i: (i, f"batched {i}"), extra), (delete, lambda i: (i,), [])]:
    batch = BatchStatement(batch_type=BatchType.LOGGED)
    for i in extra:
        batch.add(stmt, args(i))
    session.execute(batch)
    got = sorted(r.id for r in session.execute("SELECT id FROM items WHERE id IN (%s, %s)", extra))
    assert got == want, f"after the batch: ids {got}, want {want}"

# An error the app expects and handles: the session stays usable afterwards.
from cassandra import InvalidRequest

try:
    session.execute("SELECT id FROM no_such_table WHERE id = %s", (1,))
    raise AssertionError("a query on a missing table succeeded")
except InvalidRequest as e:
    assert "code=2200" in str(e), e
    caught = "InvalidRequest/2200"
(name,) = session.execute("SELECT name FROM items WHERE id = %s", (rows - 1,)).one()
assert name == f"item {rows - 1}", name

hosts = cluster.metadata.all_hosts()
# Whether the driver compresses on its connections (private API, for the test's assertion only).
conn = getattr(cluster.control_connection, "_connection", None)
compressed = "lz4" if getattr(conn, "compressor", None) is not None else "none"
dcs = ",".join(sorted({str(h.datacenter) for h in hosts}))
print(
    f"ok python cassandra-driver {cassandra.__version__} protocol=v{cluster.protocol_version} "
    f"hosts={len(hosts)} dc={dcs} rows={read} pages={pages} batch=logged error={caught} "
    f"compression={compressed}"
)
sys.stdout.flush()
cluster.shutdown()
