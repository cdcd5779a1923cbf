"""psycopg 3 through entra-db-proxy: no password, user "app-user", default sslmode (prefer)."""
import os
import sys
import threading

import psycopg
from psycopg import errors, pq

STACK = "python-psycopg3"
TABLE = "compat_python_psycopg3"


def fail(reason):
    print(f"FAIL {STACK} {reason}")
    sys.exit(1)


def main():
    conninfo = psycopg.conninfo.make_conninfo(
        host=os.environ["PGHOST"],
        port=os.environ["PGPORT"],
        dbname=os.environ["PGDATABASE"],
        user="app-user",
    )
    with psycopg.connect(conninfo) as conn:
        conn.execute(f"drop table if exists {TABLE}")
        conn.execute(f"create table {TABLE} (id int primary key, name text not null, data bytea)")
        # Server-side parameters (extended protocol), binary parameters too.
        with conn.cursor() as cur:
            cur.executemany(
                f"insert into {TABLE} values (%s, %s, %b)",
                [(1, "one", b"\x00\x01"), (2, "two", b"\xff")],
            )
        # An explicitly prepared statement (named, server side) used several times.
        for i in (3, 4, 5):
            conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (i, f"n{i}"), prepare=True)
        conn.commit()

        # COPY FROM STDIN through the proxy.
        with conn.cursor() as cur:
            with cur.copy(f"copy {TABLE} (id, name) from stdin") as copy:
                for i in range(10, 20):
                    copy.write_row((i, f"copied{i}"))
        conn.commit()

        # Pipeline mode: several queries in flight at once.
        with conn.pipeline():
            c1 = conn.execute(f"select count(*) from {TABLE}")
            c2 = conn.execute("select %s::int + 1", (41,))
        if c1.fetchone()[0] != 15 or c2.fetchone()[0] != 42:
            fail("pipeline results wrong")
        conn.commit()

        # Duplicate key: catch it by SQLSTATE and carry on.
        try:
            conn.execute(f"insert into {TABLE} (id, name) values (%s, %s)", (1, "again"))
            fail("duplicate key was accepted")
        except psycopg.Error as e:
            if e.sqlstate != "23505":
                fail(f"duplicate key gave SQLSTATE {e.sqlstate}, want 23505: {e}")
            conn.rollback()

        rows = conn.execute(
            f"select id, name, data from {TABLE} where id < %s order by id", (3,)
        ).fetchall()
        if rows != [(1, "one", b"\x00\x01"), (2, "two", b"\xff")]:
            fail(f"read back {rows}")

        (user,) = conn.execute("select current_user").fetchone()
        if user != os.environ["EXPECT_USER"]:
            fail(f"current_user is {user!r}, want {os.environ['EXPECT_USER']!r}")

        # Cancel from another thread (psycopg 3.2+: cancel_safe, a CancelRequest on a new socket).
        timer = threading.Timer(1.0, conn.cancel_safe)
        timer.start()
        try:
            conn.execute("select pg_sleep(20)")
            fail("pg_sleep(20) was not cancelled")
        except errors.QueryCanceled:
            conn.rollback()
        finally:
            timer.cancel()

        conn.execute(f"drop table {TABLE}")
        conn.commit()
    if not conn.closed:
        fail("connection not closed")

    # Startup parameters reach the server (options, application_name), and a client asking for
    # protocol 3.2 (libpq 18's max_protocol_version) is negotiated down as the server decides.
    extra = conninfo + " application_name=compat-psycopg3 options='-c search_path=compat,public'"
    with psycopg.connect(extra + " max_protocol_version=latest", autocommit=True) as c2:
        app, path = c2.execute(
            "select current_setting('application_name'), current_setting('search_path')"
        ).fetchone()
        if (app, path) != ("compat-psycopg3", "compat, public") and (app, path) != ("compat-psycopg3", "compat,public"):
            fail(f"startup parameters not forwarded: application_name={app!r} search_path={path!r}")
        proto = c2.pgconn.full_protocol_version
        # LISTEN/NOTIFY: an asynchronous NotificationResponse through the relay.
        c2.execute("listen compat_psycopg3")
        with psycopg.connect(conninfo, autocommit=True) as c3:
            c3.execute("select pg_notify('compat_psycopg3', 'hello')")
        got = [n.payload for n in c2.notifies(timeout=5, stop_after=1)]
        if got != ["hello"]:
            fail(f"NOTIFY payloads {got}")
    v = pq.version()
    print(
        f"ok {STACK} psycopg {psycopg.__version__} "
        f"({pq.__impl__} impl, libpq {v // 10000}.{v % 10000}); extended protocol, binary params, "
        f"prepare=True, COPY FROM STDIN, pipeline mode, LISTEN/NOTIFY, options + application_name forwarded, "
        f"max_protocol_version=latest -> {proto // 10000}.{proto % 10000}, cancel_safe() forwarded (57014)"
    )


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        fail(f"{type(e).__name__}: {str(e).strip()}")
