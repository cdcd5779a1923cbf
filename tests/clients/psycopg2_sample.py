# The seed's Python sample (psycopg2) with its azure-identity token code removed: the
# application connects to the proxy with no password.
import os

import psycopg2

conn_string = os.environ["CONN"]  # e.g. "host=127.0.0.1 port=5432 dbname=orders"
conn = psycopg2.connect(conn_string)
with conn:
    with conn.cursor() as cur:
        cur.execute("create table if not exists py_items (id int primary key, name text)")
        cur.executemany("insert into py_items values (%s, %s)", [(1, "a"), (2, "b"), (3, "c")])
        cur.execute("select count(*) from py_items where id > %s", (0,))
        (count,) = cur.fetchone()
        cur.execute("select current_user")
        (user,) = cur.fetchone()
conn.close()
print(f"ok user={user} rows={count}")
