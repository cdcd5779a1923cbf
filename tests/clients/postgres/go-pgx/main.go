// pgx v5 through entra-db-proxy: no password, user "app-user", default sslmode (prefer).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
	"github.com/jackc/pgx/v5/pgxpool"
)

const stack = "go-pgx"
const table = "compat_go_pgx"

func fail(format string, a ...any) {
	fmt.Printf("FAIL %s %s\n", stack, fmt.Sprintf(format, a...))
	os.Exit(1)
}

func main() {
	ctx := context.Background()
	dsn := fmt.Sprintf("host=%s port=%s dbname=%s user=app-user",
		os.Getenv("PGHOST"), os.Getenv("PGPORT"), os.Getenv("PGDATABASE"))

	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		fail("connect: %v", err)
	}
	exec := func(q string, args ...any) {
		if _, err := conn.Exec(ctx, q, args...); err != nil {
			fail("%s: %v", q, err)
		}
	}
	exec("drop table if exists " + table)
	exec("create table " + table + " (id int primary key, name text not null, at timestamptz)")
	// Default mode: statements are prepared and cached per connection, binary formats.
	exec("insert into "+table+" values ($1, $2, $3)", 1, "one", time.Now())
	exec("insert into "+table+" values ($1, $2, $3)", 2, "two", time.Now())

	// An explicitly named prepared statement.
	if _, err := conn.Prepare(ctx, "ins", "insert into "+table+" (id, name) values ($1, $2)"); err != nil {
		fail("prepare: %v", err)
	}
	exec("ins", 3, "three")

	// Duplicate key: SQLSTATE 23505 on a *pgconn.PgError, then carry on.
	_, err = conn.Exec(ctx, "ins", 1, "again")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
		fail("duplicate key: want SQLSTATE 23505, got %v", err)
	}

	// COPY FROM STDIN (CopyFrom) and a pipelined batch.
	src := [][]any{}
	for i := 10; i < 20; i++ {
		src = append(src, []any{i, fmt.Sprintf("copied%d", i)})
	}
	if n, err := conn.CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "name"}, pgx.CopyFromRows(src)); err != nil || n != 10 {
		fail("CopyFrom: %d rows, %v", n, err)
	}
	b := &pgx.Batch{}
	b.Queue("update "+table+" set name = $1 where id = $2", "uno", 1)
	b.Queue("select count(*) from " + table)
	br := conn.SendBatch(ctx, b)
	if _, err := br.Exec(); err != nil {
		fail("batch update: %v", err)
	}
	var count int
	if err := br.QueryRow().Scan(&count); err != nil || count != 13 {
		fail("batch count: %d, %v", count, err)
	}
	if err := br.Close(); err != nil {
		fail("batch close: %v", err)
	}

	// The simple protocol too (as PgBouncer-era configs force).
	var name string
	if err := conn.QueryRow(ctx, "select name from "+table+" where id = $1", pgx.QueryExecModeSimpleProtocol, 2).Scan(&name); err != nil || name != "two" {
		fail("simple protocol read: %q, %v", name, err)
	}
	rows, _ := conn.Query(ctx, "select name from "+table+" where id <= $1 order by id", 2)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(names) != 2 || names[0] != "uno" || names[1] != "two" {
		fail("read back %v, %v", names, err)
	}

	var user string
	if err := conn.QueryRow(ctx, "select current_user").Scan(&user); err != nil {
		fail("current_user: %v", err)
	}
	if user != os.Getenv("EXPECT_USER") {
		fail("current_user is %q, want %q", user, os.Getenv("EXPECT_USER"))
	}

	// Context timeout, pgx's default handler: it sets a deadline on the socket and closes the
	// connection (no CancelRequest). The proxy must end that upstream session; the next one works.
	var oldPid int
	if err := conn.QueryRow(ctx, "select pg_backend_pid()").Scan(&oldPid); err != nil {
		fail("pg_backend_pid: %v", err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = conn.Exec(cctx, "select pg_sleep(3)")
	cancel()
	if err == nil || !pgconn.Timeout(err) || !conn.IsClosed() {
		fail("default context timeout: want a timeout and a closed connection, got %v (closed=%v)", err, conn.IsClosed())
	}

	// Context timeout with CancelRequestContextWatcherHandler: pgx sends a CancelRequest on a new
	// connection to the proxy, which must forward it; the server answers 57014.
	ccfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		fail("parse config: %v", err)
	}
	ccfg.BuildContextWatcherHandler = func(pc *pgconn.PgConn) ctxwatch.Handler {
		return &pgconn.CancelRequestContextWatcherHandler{Conn: pc, DeadlineDelay: 10 * time.Second}
	}
	conn, err = pgx.ConnectConfig(ctx, ccfg)
	if err != nil {
		fail("reconnect: %v", err)
	}
	cctx, cancel = context.WithTimeout(ctx, time.Second)
	_, err = conn.Exec(cctx, "select pg_sleep(20)")
	cancel()
	if !errors.As(err, &pgErr) || pgErr.Code != "57014" {
		fail("CancelRequest: want SQLSTATE 57014, got %v", err)
	}
	// The dropped session's upstream backend must go away (pg_sleep(3) ends, its write fails).
	gone := false
	for i := 0; i < 40 && !gone; i++ {
		var n int
		if err := conn.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = $1", oldPid).Scan(&n); err != nil {
			fail("pg_stat_activity: %v", err)
		}
		gone = n == 0
		if !gone {
			time.Sleep(250 * time.Millisecond)
		}
	}
	if !gone {
		fail("upstream backend %d of the connection pgx closed is still there after 10 s", oldPid)
	}
	cancelNote := "context timeout: default handler closes the connection (upstream backend then ends), CancelRequestContextWatcherHandler cancel forwarded (57014)"
	exec("drop table " + table)
	if err := conn.Close(ctx); err != nil {
		fail("close: %v", err)
	}

	// A pool: several connections at once, all logged in by the proxy.
	pool, err := pgxpool.New(ctx, dsn+" pool_max_conns=4")
	if err != nil {
		fail("pool: %v", err)
	}
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		go func(i int) {
			var v int
			err := pool.QueryRow(ctx, "select $1::int from pg_sleep(0.1)", i).Scan(&v)
			if err == nil && v != i {
				err = fmt.Errorf("got %d, want %d", v, i)
			}
			errs <- err
		}(i)
	}
	for i := 0; i < 8; i++ {
		if err := <-errs; err != nil {
			fail("pool query: %v", err)
		}
	}
	pool.Close()

	fmt.Printf("ok %s pgx %s extended protocol (statement cache, binary), named Prepare, simple protocol, CopyFrom, Batch pipeline, pgxpool x4; %s\n",
		stack, modVersion("github.com/jackc/pgx/v5"), cancelNote)
}

func modVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == path {
				return d.Version
			}
		}
	}
	return "unknown"
}
