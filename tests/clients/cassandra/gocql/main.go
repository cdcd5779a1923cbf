// The seed's Go sample (gocql) through entra-db-proxy: the same ClusterConfig (contact point and
// port from Service Connector's AZURE_COSMOS_* variables, ProtoVersion 4, gocql's defaults for
// everything else, i.e. consistency QUORUM) minus its Authenticator and SslOpts, and without the
// token and listKeys code. Then ordinary work on its own keyspace and table.
//
// Prints `ok gocql gocql <version> protocol=v4 hosts=<n> ...` or `FAIL gocql <reason>` (exit 1).
package main

import (
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gocql/gocql"
)

func env(name, dflt string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return dflt
}

func fail(format string, args ...any) {
	fmt.Printf("FAIL gocql "+format+"\n", args...)
	os.Exit(1)
}

func must(err error, what string) {
	if err != nil {
		fail("%s: %v", what, err)
	}
}

func libVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, d := range bi.Deps {
			if d.Path == "github.com/gocql/gocql" {
				if d.Replace != nil {
					return d.Replace.Version
				}
				return d.Version
			}
		}
	}
	return "unknown"
}

func main() {
	contactPoint := env("AZURE_COSMOS_CONTACTPOINT", "127.0.0.1")
	keyspace := env("AZURE_COSMOS_KEYSPACE", "ks_gocql")
	rows, _ := strconv.Atoi(env("ROWS", "1000"))

	// Hosts gocql learns from the ring (system.local + system.peers) pass through this filter.
	var mu sync.Mutex
	seen := map[string]bool{}
	filter := gocql.HostFilterFunc(func(h *gocql.HostInfo) bool {
		mu.Lock()
		seen[h.ConnectAddress().String()+":"+strconv.Itoa(h.Port())] = true
		mu.Unlock()
		return true
	})

	// Connect to Azure Cosmos DB for Cassandra, through entra-db-proxy (as in the seed, without
	// clusterConfig.Authenticator and clusterConfig.SslOpts).
	clusterConfig := gocql.NewCluster(contactPoint)
	port, err := strconv.Atoi(env("AZURE_COSMOS_PORT", "9042"))
	must(err, "AZURE_COSMOS_PORT")
	clusterConfig.Port = port
	clusterConfig.ProtoVersion = 4
	clusterConfig.HostFilter = filter
	// Test-machine tolerance only (a shared 2-core machine also running Cassandra): DDL waits
	// for schema agreement.
	clusterConfig.Timeout = 30 * time.Second

	session, err := clusterConfig.CreateSession()
	must(err, "CreateSession")

	must(session.Query("CREATE KEYSPACE IF NOT EXISTS "+keyspace+
		" WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}").Exec(), "CREATE KEYSPACE")
	must(session.Query("DROP TABLE IF EXISTS "+keyspace+".items").Exec(), "DROP TABLE")
	must(session.Query("CREATE TABLE "+keyspace+".items (id int PRIMARY KEY, name text, tags set<text>, at timestamp)").Exec(), "CREATE TABLE")

	// Parameterised inserts: gocql prepares every statement with bind markers (prepared
	// statement cache), from a few goroutines at once.
	start := time.Now().UTC().Truncate(time.Millisecond)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := w; i < rows; i += 8 {
				if err := session.Query("INSERT INTO "+keyspace+".items (id, name, tags, at) VALUES (?, ?, ?, ?)",
					i, fmt.Sprintf("item %d", i), []string{"t" + strconv.Itoa(i%3)}, start).Exec(); err != nil {
					errs <- err
					return
				}
			}
		}(w)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		fail("INSERT: %v", err)
	}

	// A logged batch with parameters.
	b := session.NewBatch(gocql.LoggedBatch)
	b.Query("UPDATE "+keyspace+".items SET name = ? WHERE id = ?", "batch 0", 0)
	b.Query("UPDATE "+keyspace+".items SET name = ? WHERE id = ?", "batch 1", 1)
	must(session.ExecuteBatch(b), "BATCH")

	// Read back with paging.
	iter := session.Query("SELECT id, name, tags, at FROM " + keyspace + ".items").PageSize(100).Iter()
	var (
		id   int
		name string
		tags []string
		at   time.Time
		read int
	)
	for iter.Scan(&id, &name, &tags, &at) {
		want := fmt.Sprintf("item %d", id)
		if id < 2 {
			want = fmt.Sprintf("batch %d", id)
		}
		if name != want || len(tags) != 1 || !at.Equal(start) {
			fail("row %d read back as %q %v %v", id, name, tags, at)
		}
		read++
	}
	must(iter.Close(), "SELECT")
	if read != rows {
		fail("read back %d rows, want %d", read, rows)
	}
	var one string
	must(session.Query("SELECT name FROM "+keyspace+".items WHERE id = ?", rows-1).Scan(&one), "SELECT one")
	if one != fmt.Sprintf("item %d", rows-1) {
		fail("row %d = %q", rows-1, one)
	}

	// An error the app expects and handles: a missing table is the server's Invalid (0x2200).
	caught := ""
	err = session.Query("SELECT id FROM "+keyspace+".no_such_table WHERE id = ?", 1).Exec()
	var re gocql.RequestError
	if errors.As(err, &re) && re.Code() == gocql.ErrCodeInvalid {
		caught = fmt.Sprintf("RequestErrInvalid/%x", re.Code())
	} else {
		fail("a query on a missing table: want an Invalid (0x2200) error, got %v", err)
	}
	var count int64
	must(session.Query("SELECT count(*) FROM "+keyspace+".items").Scan(&count), "count(*) after the error")
	if count != int64(rows) {
		fail("count(*) = %d, want %d", count, rows)
	}
	var peers int
	piter := session.Query("SELECT peer FROM system.peers").Iter()
	for piter.Scan(new(string)) {
		peers++
	}
	must(piter.Close(), "system.peers")
	consistency := session.Query("SELECT now() FROM system.local").GetConsistency()
	session.Close()

	mu.Lock()
	hosts := make([]string, 0, len(seen))
	for h := range seen {
		hosts = append(hosts, h)
	}
	mu.Unlock()
	sort.Strings(hosts)
	if len(hosts) == 0 {
		fail("gocql's HostFilter saw no host")
	}
	fmt.Printf("ok gocql gocql %s protocol=v%d hosts=%d peers=%d consistency=%s rows=%d batch error=%s (ring: %s)\n",
		libVersion(), clusterConfig.ProtoVersion, len(hosts), peers, consistency, read, caught, strings.Join(hosts, ","))
}
