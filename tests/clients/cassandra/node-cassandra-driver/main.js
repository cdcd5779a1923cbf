// The seed's Node.js sample (cassandra-driver) through entra-db-proxy: the same Client options
// (contactPoints from AZURE_COSMOS_CONTACTPOINT:AZURE_COSMOS_PORT, localDataCenter 'datacenter1')
// minus authProvider and sslOptions, and without the token and listKeys code. Then ordinary
// work on its own keyspace and table.
//
// Prints `ok node-cassandra-driver cassandra-driver <version> protocol=v<N> hosts=<n> ...` or
// `FAIL node-cassandra-driver <reason>` (exit 1).
'use strict';
const cassandra = require('cassandra-driver');
const { version } = require('cassandra-driver/package.json');

const contactPoint = process.env.AZURE_COSMOS_CONTACTPOINT || '127.0.0.1';
const port = process.env.AZURE_COSMOS_PORT || '9042';
const keyspace = process.env.AZURE_COSMOS_KEYSPACE || 'ks_node';
const rows = parseInt(process.env.ROWS || '1000', 10);

function check(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function main() {
  // Connect to Azure Cosmos DB for Cassandra, through entra-db-proxy (as in the seed, without
  // authProvider and sslOptions).
  const client = new cassandra.Client({
    contactPoints: [`${contactPoint}:${port}`],
    localDataCenter: 'datacenter1',
    // Test-machine tolerance only (a shared 2-core machine also running Cassandra).
    socketOptions: { readTimeout: 30000 },
  });
  await client.connect();
  try {
    await client.execute(
      `CREATE KEYSPACE IF NOT EXISTS ${keyspace} WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}`);
    await client.execute(`DROP TABLE IF EXISTS ${keyspace}.items`);
    await client.execute(`CREATE TABLE ${keyspace}.items (id int PRIMARY KEY, name text, price decimal, at timestamp)`);

    // Parameterised inserts as prepared statements, many in flight (executeConcurrent).
    const at = new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 6));
    const params = [];
    for (let i = 0; i < rows; i++) params.push([i, `item ${i}`, cassandra.types.BigDecimal.fromString(`${i}.25`), at]);
    const res = await cassandra.concurrent.executeConcurrent(
      client, `INSERT INTO ${keyspace}.items (id, name, price, at) VALUES (?, ?, ?, ?)`, params,
      { concurrencyLevel: 32, raiseOnFirstError: true });
    check(res.totalExecuted === rows, `executed ${res.totalExecuted} inserts, want ${rows}`);

    // An unprepared statement with parameters (type hints: a JS number would be sent as a double)
    // and a prepared batch.
    await client.execute(`UPDATE ${keyspace}.items SET name = ? WHERE id = ?`, ['renamed 0', 0], { hints: ['text', 'int'] });
    await client.batch([
      { query: `UPDATE ${keyspace}.items SET name = ? WHERE id = ?`, params: ['renamed 1', 1] },
      { query: `UPDATE ${keyspace}.items SET name = ? WHERE id = ?`, params: ['renamed 2', 2] },
    ], { prepare: true });

    // Read back page by page (eachRow + nextPage), prepared.
    let read = 0;
    let pages = 0;
    const seen = new Set();
    await new Promise((resolve, reject) => {
      client.eachRow(`SELECT id, name, price, at FROM ${keyspace}.items`, [], { prepare: true, fetchSize: 100 },
        (n, row) => {
          const want = row.id < 3 ? `renamed ${row.id}` : `item ${row.id}`;
          if (row.name !== want || row.price.toString() !== `${row.id}.25` || row.at.getTime() !== at.getTime()) {
            reject(new Error(`row ${row.id} read back as ${row.name} ${row.price} ${row.at}`));
          }
          seen.add(row.id);
          read++;
        },
        (err, result) => {
          if (err) return reject(err);
          pages++;
          if (result && result.nextPage) return result.nextPage();
          resolve();
        });
    });
    check(read === rows && seen.size === rows, `read back ${read} rows (${seen.size} distinct), want ${rows}`);

    // An error the app expects and handles: a missing table is the server's Invalid (0x2200).
    let caught = '';
    try {
      await client.execute(`SELECT id FROM ${keyspace}.no_such_table WHERE id = ?`, [1]);
      throw new Error('a query on a missing table succeeded');
    } catch (e) {
      if (!(e instanceof cassandra.errors.ResponseError) || e.code !== cassandra.types.responseErrorCodes.invalid) throw e;
      caught = `ResponseError/${e.code.toString(16)}`;
    }
    const one = await client.execute(`SELECT name FROM ${keyspace}.items WHERE id = ?`, [rows - 1], { prepare: true });
    check(one.first() && one.first().name === `item ${rows - 1}`, `row ${rows - 1} after the error: ${JSON.stringify(one.rows)}`);

    const protocol = client.controlConnection.protocolVersion;
    const hosts = client.hosts.values();
    const dcs = [...new Set(hosts.map((h) => h.datacenter))].sort().join(',');
    const addrs = hosts.map((h) => h.address).sort().join(',');
    console.log(`ok node-cassandra-driver cassandra-driver ${version} protocol=v${protocol} hosts=${hosts.length} dc=${dcs} rows=${read} pages=${pages} batch error=${caught} (hosts: ${addrs})`);
  } finally {
    await client.shutdown();
  }
}

main().catch((e) => {
  console.error(e);
  console.log(`FAIL node-cassandra-driver ${String(e && e.message || e).split('\n')[0]}`);
  process.exit(1);
});
