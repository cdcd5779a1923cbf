package compat;

import com.zaxxer.hikari.HikariConfig;
import com.zaxxer.hikari.HikariDataSource;
import java.io.StringReader;
import java.sql.Connection;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import org.postgresql.PGConnection;
import org.postgresql.util.PSQLState;

/**
 * pgjdbc behind HikariCP through entra-db-proxy: the seed's Java sample without the Azure
 * authentication plugin. JDBC URL with host, port and database only, user "app-user", no
 * password, pgjdbc's default sslmode (prefer).
 */
public final class Main {
  static final String STACK = "java-pgjdbc-hikari";
  static final String TABLE = "compat_java_pgjdbc";

  static void fail(String reason) {
    System.out.println("FAIL " + STACK + " " + reason.replace('\n', ' '));
    System.exit(1);
  }

  public static void main(String[] args) {
    try {
      run();
    } catch (Exception e) {
      fail(e.getClass().getSimpleName() + ": " + e.getMessage());
    }
  }

  static void run() throws Exception {
    HikariConfig cfg = new HikariConfig();
    cfg.setJdbcUrl(String.format("jdbc:postgresql://%s:%s/%s",
        System.getenv("PGHOST"), System.getenv("PGPORT"), System.getenv("PGDATABASE")));
    cfg.setUsername("app-user");
    // no password
    cfg.setMaximumPoolSize(4);
    cfg.setPoolName("compat");
    String cancelNote;
    try (HikariDataSource ds = new HikariDataSource(cfg)) {
      try (Connection c = ds.getConnection(); Statement st = c.createStatement()) {
        st.execute("drop table if exists " + TABLE);
        st.execute("create table " + TABLE + " (id int primary key, name text not null)");

        // A PreparedStatement run 7 times: pgjdbc switches to a named server-side statement
        // after prepareThreshold (5) executions.
        try (PreparedStatement ps = c.prepareStatement("insert into " + TABLE + " values (?, ?)")) {
          for (int i = 1; i <= 7; i++) {
            ps.setInt(1, i);
            ps.setString(2, "n" + i);
            ps.executeUpdate();
          }
          // A batch.
          for (int i = 100; i < 110; i++) {
            ps.setInt(1, i);
            ps.setString(2, "batch" + i);
            ps.addBatch();
          }
          ps.executeBatch();
          // Duplicate key: SQLSTATE 23505, then carry on.
          ps.setInt(1, 1);
          ps.setString(2, "again");
          try {
            ps.executeUpdate();
            fail("duplicate key was accepted");
          } catch (SQLException e) {
            if (!PSQLState.UNIQUE_VIOLATION.getState().equals(e.getSQLState())) {
              fail("duplicate key gave SQLSTATE " + e.getSQLState() + ", want 23505: " + e.getMessage());
            }
          }
        }

        // A transaction.
        c.setAutoCommit(false);
        try (PreparedStatement up = c.prepareStatement("update " + TABLE + " set name = ? where id = ?")) {
          up.setString(1, "uno");
          up.setInt(2, 1);
          up.executeUpdate();
        }
        c.commit();
        c.setAutoCommit(true);

        // COPY FROM STDIN.
        long copied = c.unwrap(PGConnection.class).getCopyAPI().copyIn(
            "copy " + TABLE + " (id, name) from stdin", new StringReader("200\tc200\n201\tc201\n"));
        if (copied != 2) {
          fail("COPY copied " + copied);
        }

        try (PreparedStatement q = c.prepareStatement(
            "select count(*), min(name) from " + TABLE + " where id <= ?")) {
          q.setInt(1, 2);
          try (ResultSet rs = q.executeQuery()) {
            rs.next();
            if (rs.getInt(1) != 2 || !"n2".equals(rs.getString(2))) {
              fail("read back " + rs.getInt(1) + " " + rs.getString(2));
            }
          }
        }
        try (ResultSet rs = st.executeQuery("select count(*) from " + TABLE)) {
          rs.next();
          if (rs.getInt(1) != 19) {
            fail("row count " + rs.getInt(1) + ", want 19");
          }
        }
        try (ResultSet rs = st.executeQuery("select current_user")) {
          rs.next();
          String user = rs.getString(1);
          if (!user.equals(System.getenv("EXPECT_USER"))) {
            fail("current_user is " + user + ", want " + System.getenv("EXPECT_USER"));
          }
        }

        // Query timeout: pgjdbc sends a CancelRequest on a new connection.
        try (Statement slow = c.createStatement()) {
          slow.setQueryTimeout(1);
          slow.execute("select pg_sleep(20)");
          fail("pg_sleep(20) was not cancelled");
        } catch (SQLException e) {
          if (!PSQLState.QUERY_CANCELED.getState().equals(e.getSQLState())) {
            fail("cancel: want SQLSTATE 57014, got " + e.getSQLState() + ": " + e.getMessage());
          }
        }
        cancelNote = "setQueryTimeout cancel forwarded (57014)";
        st.execute("drop table " + TABLE);
      }

      // The pool under concurrent use: 8 tasks on 4 connections.
      ExecutorService ex = Executors.newFixedThreadPool(8);
      List<Future<Integer>> fs = new ArrayList<>();
      for (int i = 0; i < 8; i++) {
        final int v = i;
        fs.add(ex.submit(() -> {
          try (Connection c = ds.getConnection();
               PreparedStatement ps = c.prepareStatement("select ?::int from pg_sleep(0.1)")) {
            ps.setInt(1, v);
            try (ResultSet rs = ps.executeQuery()) {
              rs.next();
              return rs.getInt(1);
            }
          }
        }));
      }
      for (int i = 0; i < 8; i++) {
        if (fs.get(i).get() != i) {
          fail("pool task " + i);
        }
      }
      ex.shutdown();
    }
    System.out.println("ok " + STACK + " pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION
        + " + HikariCP " + hikariVersion()
        + "; extended protocol, server-side prepare after prepareThreshold, executeBatch, COPY,"
        + " transaction, pool x4; " + cancelNote);
  }
  /** HikariCP's jar has no Implementation-Version: read its Maven pom.properties. */
  static String hikariVersion() {
    try (java.io.InputStream in = com.zaxxer.hikari.HikariConfig.class.getResourceAsStream(
        "/META-INF/maven/com.zaxxer/HikariCP/pom.properties")) {
      java.util.Properties p = new java.util.Properties();
      p.load(in);
      return p.getProperty("version");
    } catch (Exception e) {
      return "unknown";
    }
  }
}
