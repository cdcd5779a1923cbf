module entra-db-proxy/tests/clients/postgres/go-libpq

go 1.22

require github.com/lib/pq v1.12.3
