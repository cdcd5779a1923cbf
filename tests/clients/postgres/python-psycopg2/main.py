"""psycopg2 through entra-db-proxy: the seed's Python sample with its token code removed.

Connects with host/port/dbname from PGHOST/PGPORT/PGDATABASE, user "app-user", no password,
sslmode left at libpq's default (prefer).
"""
import os
import sys

import psycopg2
import psycopg2.errorcodes
import psycopg2.extensions

STACK = "python-psycopg2"
TABLE = "compat_python_psycopg2"


def fail(reason):
    print(f"FAIL {STACK} {reason}")
    sys.exit(1)


def main():
    conn = psycopg2.connect(
        host=os.environ["PGHOST"],
        port=os.environ["PGPORT"],
        dbname=os.environ["PGDATABASE"],
        user="app-user",
    )
    with conn.cursor() as cur:
        cur.execute(f"drop table if exists {TABLE}")
        cur.execute(f"create table {TABLE} (id int primary key, name text not null)")
        cur.executemany(f"insert into {TABLE} values (%s, %s)", [(1, "one"), (2, "two")])
        conn.commit()

        # A server-side prepared statement (psycopg2 has no client API for one: SQL PREPARE).
        cur.execute(f"prepare ins (int, text) as insert into {TABLE} values ($1, $2)")
        cur.execute("execute ins (%s, %s)", (3, "three"))
        conn.commit()

        # Duplicate key: catch it by SQLSTATE, roll back, carry on.
        try:
            cur.execute("execute ins (%s, %s)", (1, "again"))
            fail("duplicate key was accepted")
        except psycopg2.Error as e:
            if e.pgcode != psycopg2.errorcodes.UNIQUE_VIOLATION:
                fail(f"duplicate key gave SQLSTATE {e.pgcode}, want 23505: {e}")
            conn.rollback()

        cur.execute(f"select id, name from {TABLE} where id >= %s order by id", (1,))
        rows = cur.fetchall()
        if rows != [(1, "one"), (2, "two"), (3, "three")]:
            fail(f"read back {rows}")

        cur.execute("select current_user")
        (user,) = cur.fetchone()
        if user != os.environ["EXPECT_USER"]:
            fail(f"current_user is {user!r}, want {os.environ['EXPECT_USER']!r}")

        # Cancel a running query: libpq sends a CancelRequest on a new connection.
        import threading

        timer = threading.Timer(1.0, conn.cancel)
        timer.start()
        try:
            cur.execute("select pg_sleep(20)")
            fail("pg_sleep(20) was not cancelled")
        except psycopg2.extensions.QueryCanceledError:
            conn.rollback()
        finally:
            timer.cancel()

        cur.execute(f"drop table {TABLE}")
        conn.commit()
    conn.close()
    if not conn.closed:
        fail("connection not closed")
    libpq = psycopg2.extensions.libpq_version()
    print(
        f"ok {STACK} psycopg2 {psycopg2.__version__.split()[0]} "
        f"libpq {libpq // 10000}.{libpq % 10000}; simple query protocol with client-side parameters, "
        f"SQL PREPARE/EXECUTE, conn.cancel() forwarded (57014)"
    )


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001 - any other error is the row's failure
        fail(f"{type(e).__name__}: {str(e).strip()}")
