package local.edp;

import com.datastax.oss.driver.api.core.CqlSession;
import com.datastax.oss.driver.api.core.CqlSessionBuilder;
import com.datastax.oss.driver.api.core.ProtocolVersion;
import com.datastax.oss.driver.api.core.Version;
import com.datastax.oss.driver.api.core.config.DefaultDriverOption;
import com.datastax.oss.driver.api.core.config.DriverConfigLoader;
import com.datastax.oss.driver.api.core.config.ProgrammaticDriverConfigLoaderBuilder;
import com.datastax.oss.driver.api.core.cql.BatchStatement;
import com.datastax.oss.driver.api.core.cql.BoundStatement;
import com.datastax.oss.driver.api.core.cql.DefaultBatchType;
import com.datastax.oss.driver.api.core.cql.PreparedStatement;
import com.datastax.oss.driver.api.core.cql.ResultSet;
import com.datastax.oss.driver.api.core.cql.Row;
import com.datastax.oss.driver.api.core.cql.SimpleStatement;
import com.datastax.oss.driver.api.core.metadata.Node;
import com.datastax.oss.driver.api.core.servererrors.InvalidQueryException;
import com.datastax.oss.driver.api.core.session.Session;
import java.net.InetSocketAddress;
import java.time.Duration;
import java.util.BitSet;
import java.util.Collection;
import java.util.TreeSet;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.Semaphore;
import java.util.concurrent.atomic.AtomicReference;

/**
 * The seed's Java sample (DataStax Java driver 4.x) with its token, listKeys and TLS code removed:
 * AZURE_COSMOS_CONTACTPOINT / AZURE_COSMOS_PORT name entra-db-proxy, and the session is built
 * exactly as in the seed, minus withSslContext and withAuthCredentials.
 *
 * <p>Then a workload: a keyspace and a table, ROWS rows written with a prepared statement (async,
 * bounded concurrency), read back with paging, checked.
 *
 * <p>Then an error the app handles: a query on a missing table throws InvalidQueryException (CQL
 * code 0x2200), which is caught, and the session goes on.
 *
 * <p>Environment: AZURE_COSMOS_CONTACTPOINT, AZURE_COSMOS_PORT (the proxy), AZURE_COSMOS_KEYSPACE
 * (default ks_java), LOCAL_DATACENTER (default datacenter1, as in the seed), CQL_PROTOCOL_VERSION
 * (V4, V5...; unset: negotiate), ROWS (default 10000), FETCH_SIZE (default 500).
 *
 * <p>Prints one line: {@code ok java java-driver-core <version> protocol=v<N> hosts=<N> dc=<dc>
 * rows=<N> pages=<N> batch=logged error=<caught error>}; exits non-zero on any failure.
 */
public final class CassandraSample {
  private static String env(String name, String dflt) {
    String v = System.getenv(name);
    return v == null || v.isEmpty() ? dflt : v;
  }

  public static void main(String[] args) throws Exception {
    String cassandraHost = env("AZURE_COSMOS_CONTACTPOINT", "127.0.0.1");
    int cassandraPort = Integer.parseInt(env("AZURE_COSMOS_PORT", "9042"));
    String keyspace = env("AZURE_COSMOS_KEYSPACE", "ks_java");
    String localDc = env("LOCAL_DATACENTER", "datacenter1");
    int rows = Integer.parseInt(env("ROWS", "10000"));
    int fetchSize = Integer.parseInt(env("FETCH_SIZE", "500"));

    // Only test-machine tolerances (a shared 2-core machine also running Cassandra): DDL waits
    // for schema agreement, which can take longer than the 2 s default request timeout.
    ProgrammaticDriverConfigLoaderBuilder config =
        DriverConfigLoader.programmaticBuilder()
            .withDuration(DefaultDriverOption.REQUEST_TIMEOUT, Duration.ofSeconds(30));
    String forced = System.getenv("CQL_PROTOCOL_VERSION");
    if (forced != null && !forced.isEmpty()) {
      config.withString(
          DefaultDriverOption.PROTOCOL_VERSION,
          forced.toUpperCase().startsWith("V") ? forced.toUpperCase() : "V" + forced);
    }

    // Connect to Azure Cosmos DB for Cassandra, through entra-db-proxy: as in the seed, without
    // .withSslContext(sc) and .withAuthCredentials(cassandraUsername, cassandraPassword).
    CqlSessionBuilder builder =
        CqlSession.builder()
            .addContactPoint(new InetSocketAddress(cassandraHost, cassandraPort))
            .withLocalDatacenter(localDc)
            .withConfigLoader(config.build());
    try (CqlSession session = builder.build()) {
      session.execute(
          "CREATE KEYSPACE IF NOT EXISTS "
              + keyspace
              + " WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}");
      session.execute(
          "CREATE TABLE IF NOT EXISTS " + keyspace + ".items (id int PRIMARY KEY, name text)");

      PreparedStatement insert =
          session.prepare("INSERT INTO " + keyspace + ".items (id, name) VALUES (?, ?)");
      Semaphore inFlight = new Semaphore(64);
      AtomicReference<Throwable> failure = new AtomicReference<>();
      CompletableFuture<?>[] all = new CompletableFuture<?>[rows];
      for (int i = 0; i < rows && failure.get() == null; i++) {
        inFlight.acquire();
        all[i] =
            session
                .executeAsync(insert.bind(i, "item " + i))
                .toCompletableFuture()
                .whenComplete(
                    (rs, err) -> {
                      if (err != null) failure.compareAndSet(null, err);
                      inFlight.release();
                    });
      }
      if (failure.get() != null) throw new RuntimeException("insert failed", failure.get());
      CompletableFuture.allOf(all).join();

      PreparedStatement select = session.prepare("SELECT id, name FROM " + keyspace + ".items");
      BoundStatement bound = select.bind().setPageSize(fetchSize);
      ResultSet rs = session.execute(bound);
      BitSet seen = new BitSet(rows);
      int read = 0;
      for (Row row : rs) {
        int id = row.getInt("id");
        String name = row.getString("name");
        if (!("item " + id).equals(name)) {
          throw new IllegalStateException("row " + id + " has name " + name);
        }
        seen.set(id);
        read++;
      }
      int pages = rs.getExecutionInfos().size();
      if (read != rows || seen.cardinality() != rows) {
        throw new IllegalStateException(
            "read back " + read + " rows, " + seen.cardinality() + " distinct, want " + rows);
      }
      if (pages < rows / fetchSize) {
        throw new IllegalStateException("expected paging, got " + pages + " page(s)");
      }
      long count =
          session
              .execute(SimpleStatement.newInstance("SELECT count(*) FROM " + keyspace + ".items"))
              .one()
              .getLong(0);
      if (count != rows) {
        throw new IllegalStateException("count(*) = " + count + ", want " + rows);
      }

      // Logged batches of prepared statements: two rows in, read back, then out again (the
      // table is left as it was, so the program can run again on the same keyspace).
      PreparedStatement delete =
          session.prepare("DELETE FROM " + keyspace + ".items WHERE id = ?");
      SimpleStatement extra =
          SimpleStatement.newInstance(
              "SELECT id FROM " + keyspace + ".items WHERE id IN (?, ?)", rows, rows + 1);
      session.execute(
          BatchStatement.newInstance(
              DefaultBatchType.LOGGED,
              insert.bind(rows, "batched " + rows),
              insert.bind(rows + 1, "batched " + (rows + 1))));
      int batched = session.execute(extra).all().size();
      session.execute(
          BatchStatement.newInstance(
              DefaultBatchType.LOGGED, delete.bind(rows), delete.bind(rows + 1)));
      int left = session.execute(extra).all().size();
      if (batched != 2 || left != 0) {
        throw new IllegalStateException(
            "batches: " + batched + " rows after the insert (want 2), " + left + " after the delete");
      }

      // An error the app expects and handles: the session stays usable afterwards.
      String caught;
      try {
        session.execute(
            SimpleStatement.newInstance(
                "SELECT id FROM " + keyspace + ".no_such_table WHERE id = ?", 1));
        throw new IllegalStateException("a query on a missing table succeeded");
      } catch (InvalidQueryException e) {
        caught = "InvalidQueryException";
      }
      Row last =
          session
              .execute(
                  SimpleStatement.newInstance(
                      "SELECT name FROM " + keyspace + ".items WHERE id = ?", rows - 1))
              .one();
      if (last == null || !("item " + (rows - 1)).equals(last.getString(0))) {
        throw new IllegalStateException("row " + (rows - 1) + " after the error: " + last);
      }

      ProtocolVersion pv = session.getContext().getProtocolVersion();
      Collection<Node> nodes = session.getMetadata().getNodes().values();
      TreeSet<String> dcs = new TreeSet<>();
      for (Node n : nodes) {
        dcs.add(String.valueOf(n.getDatacenter()));
      }
      Version version = Session.OSS_DRIVER_COORDINATES.getVersion();
      System.out.println(
          "ok java java-driver-core "
              + version
              + " protocol=v"
              + pv.getCode()
              + " hosts="
              + nodes.size()
              + " dc="
              + String.join(",", dcs)
              + " rows="
              + read
              + " pages="
              + pages
              + " batch=logged"
              + " error="
              + caught);
    }
  }
}
