package compat;

import com.zaxxer.hikari.HikariDataSource;
import java.sql.SQLException;
import java.util.List;
import java.util.Map;
import javax.sql.DataSource;
import org.springframework.boot.SpringApplication;
import org.springframework.boot.SpringBootVersion;
import org.springframework.boot.autoconfigure.SpringBootApplication;
import org.springframework.context.ConfigurableApplicationContext;
import org.springframework.dao.DuplicateKeyException;
import org.springframework.jdbc.core.JdbcTemplate;
import org.springframework.jdbc.core.namedparam.NamedParameterJdbcTemplate;
import org.springframework.transaction.support.TransactionTemplate;

/** Spring Boot's auto-configured DataSource (HikariCP) and JdbcTemplate through the proxy. */
@SpringBootApplication
public class App {
  static final String STACK = "java-spring-boot";
  static final String TABLE = "compat_java_spring_boot";

  static void fail(String reason) {
    System.out.println("FAIL " + STACK + " " + String.valueOf(reason).replace('\n', ' '));
    System.exit(1);
  }

  public static void main(String[] args) {
    String line = null;
    try (ConfigurableApplicationContext ctx = SpringApplication.run(App.class, args)) {
      line = check(ctx);
    } catch (Exception e) {
      fail(e.getClass().getSimpleName() + ": " + e.getMessage());
    }
    System.out.println(line);
  }

  static String check(ConfigurableApplicationContext ctx) throws Exception {
    DataSource ds = ctx.getBean(DataSource.class);
    if (!(ds instanceof HikariDataSource)) {
      fail("DataSource is " + ds.getClass().getName() + ", want HikariDataSource");
    }
    JdbcTemplate jdbc = ctx.getBean(JdbcTemplate.class);
    NamedParameterJdbcTemplate named = ctx.getBean(NamedParameterJdbcTemplate.class);
    TransactionTemplate tx = ctx.getBean(TransactionTemplate.class);

    jdbc.execute("drop table if exists " + TABLE);
    jdbc.execute("create table " + TABLE + " (id int primary key, name text not null)");
    jdbc.batchUpdate("insert into " + TABLE + " values (?, ?)",
        List.of(new Object[] {1, "one"}, new Object[] {2, "two"}, new Object[] {3, "three"}));
    for (int i = 4; i <= 9; i++) {
      named.update("insert into " + TABLE + " values (:id, :name)", Map.of("id", i, "name", "n" + i));
    }
    try {
      jdbc.update("insert into " + TABLE + " values (?, ?)", 1, "again");
      fail("duplicate key was accepted");
    } catch (DuplicateKeyException e) {
      String state = e.getMostSpecificCause() instanceof SQLException se ? se.getSQLState() : null;
      if (!"23505".equals(state)) {
        fail("duplicate key gave SQLSTATE " + state + ", want 23505");
      }
    }
    tx.executeWithoutResult(s -> jdbc.update("update " + TABLE + " set name = ? where id = ?", "uno", 1));
    try {
      tx.executeWithoutResult(s -> {
        jdbc.update("update " + TABLE + " set name = ? where id = ?", "rolled back", 2);
        s.setRollbackOnly();
      });
    } catch (RuntimeException e) {
      fail("rollback: " + e);
    }
    List<String> names = jdbc.queryForList(
        "select name from " + TABLE + " where id <= ? order by id", String.class, 2);
    if (!names.equals(List.of("uno", "two"))) {
      fail("read back " + names);
    }
    String user = jdbc.queryForObject("select current_user", String.class);
    if (!user.equals(System.getenv("EXPECT_USER"))) {
      fail("current_user is " + user + ", want " + System.getenv("EXPECT_USER"));
    }
    jdbc.execute("drop table " + TABLE);
    return "ok " + STACK + " Spring-Boot " + SpringBootVersion.getVersion()
        + " (spring-boot-starter-jdbc, HikariCP " + hikariVersion()
        + ", pgjdbc " + org.postgresql.util.DriverInfo.DRIVER_VERSION
        + "); datasource without password, JdbcTemplate batch, NamedParameterJdbcTemplate,"
        + " TransactionTemplate commit + rollback, DuplicateKeyException 23505";
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
