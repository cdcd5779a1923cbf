// lib/pq through entra-db-proxy: no password, user "app-user".
//
// lib/pq defaults to sslmode=require (unlike libpq's prefer); the proxy offers TLS on the local
// hop with a self-signed certificate, so the default DSN works unchanged.
package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"github.com/lib/pq"
)

const stack = "go-libpq"
const table = "compat_go_libpq"

func fail(format string, a ...any) {
	fmt.Printf("FAIL %s %s\n", stack, fmt.Sprintf(format, a...))
	os.Exit(1)
}

func main() {
	base := fmt.Sprintf("host=%s port=%s dbname=%s user=app-user",
		os.Getenv("PGHOST"), os.Getenv("PGPORT"), os.Getenv("PGDATABASE"))
	ctx := context.Background()

	// The library default, sslmode=require: the proxy offers TLS on the local hop (a
	// self-signed certificate, which require does not verify), so the DSN needs no change.
	defaultNote := "default sslmode=require"
	db, err := sql.Open("postgres", base)
	if err != nil {
		fail("open: %v", err)
	}
	db.SetMaxOpenConns(2)
	mustExec := func(q string, args ...any) {
		if _, err := db.ExecContext(ctx, q, args...); err != nil {
			fail("%s: %v", q, err)
		}
	}
	mustExec("drop table if exists " + table)
	mustExec("create table " + table + " (id int primary key, name text not null)")
	mustExec("insert into "+table+" values ($1, $2), ($3, $4)", 1, "one", 2, "two")

	// A named prepared statement, used several times.
	ins, err := db.PrepareContext(ctx, "insert into "+table+" values ($1, $2)")
	if err != nil {
		fail("prepare: %v", err)
	}
	for i := 3; i <= 5; i++ {
		if _, err := ins.ExecContext(ctx, i, fmt.Sprintf("n%d", i)); err != nil {
			fail("prepared insert %d: %v", i, err)
		}
	}
	// Duplicate key through the prepared statement: SQLSTATE 23505, then carry on.
	_, err = ins.ExecContext(ctx, 1, "again")
	var pqErr *pq.Error
	if !errors.As(err, &pqErr) || pqErr.Code != "23505" {
		fail("duplicate key: want SQLSTATE 23505, got %v", err)
	}
	ins.Close()

	// A transaction.
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		fail("begin: %v", err)
	}
	if _, err := tx.ExecContext(ctx, "update "+table+" set name = $1 where id = $2", "uno", 1); err != nil {
		fail("update: %v", err)
	}
	if err := tx.Commit(); err != nil {
		fail("commit: %v", err)
	}

	rows, err := db.QueryContext(ctx, "select id, name from "+table+" where id <= $1 order by id", 2)
	if err != nil {
		fail("select: %v", err)
	}
	var got []string
	for rows.Next() {
		var id int
		var name string
		if err := rows.Scan(&id, &name); err != nil {
			fail("scan: %v", err)
		}
		got = append(got, fmt.Sprintf("%d=%s", id, name))
	}
	rows.Close()
	if strings.Join(got, ",") != "1=uno,2=two" {
		fail("read back %v", got)
	}

	var user string
	if err := db.QueryRowContext(ctx, "select current_user").Scan(&user); err != nil {
		fail("current_user: %v", err)
	}
	if user != os.Getenv("EXPECT_USER") {
		fail("current_user is %q, want %q", user, os.Getenv("EXPECT_USER"))
	}

	// Context timeout: lib/pq sends a CancelRequest on a new connection.
	cctx, cancel := context.WithTimeout(ctx, time.Second)
	_, err = db.ExecContext(cctx, "select pg_sleep(20)")
	cancel()
	if !errors.As(err, &pqErr) || pqErr.Code != "57014" {
		if err == nil || !strings.Contains(err.Error(), "canceling statement") {
			fail("cancel: want SQLSTATE 57014, got %v", err)
		}
	}

	mustExec("drop table " + table)
	if err := db.Close(); err != nil {
		fail("close: %v", err)
	}
	fmt.Printf("ok %s lib/pq %s extended protocol (unnamed + named prepared), database/sql, context cancel forwarded (57014); %s\n",
		stack, modVersion("github.com/lib/pq"), defaultNote)
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
