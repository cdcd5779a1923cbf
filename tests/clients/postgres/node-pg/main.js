// node-postgres (pg) through entra-db-proxy: the seed's Node sample without @azure/identity:
// host, port and database only, user "app-user", no password, no ssl option.
'use strict';
const { Client, Pool } = require('pg');

const STACK = 'node-pg';
const TABLE = 'compat_node_pg';

function fail(reason) {
  console.log(`FAIL ${STACK} ${reason}`);
  process.exit(1);
}

async function main() {
  const cfg = {
    host: process.env.PGHOST,
    port: Number(process.env.PGPORT),
    database: process.env.PGDATABASE,
    user: 'app-user',
  };
  const client = new Client(cfg);
  await client.connect();
  await client.query(`drop table if exists ${TABLE}`);
  await client.query(`create table ${TABLE} (id int primary key, name text not null, tags jsonb)`);
  // Parameterised (extended protocol, unnamed statement).
  await client.query(`insert into ${TABLE} values ($1, $2, $3), ($4, $5, $6)`,
    [1, 'one', { a: 1 }, 2, 'two', null]);
  // A named prepared statement, reused.
  for (const [id, name] of [[3, 'three'], [4, 'four']]) {
    await client.query({ name: 'compat-ins', text: `insert into ${TABLE} (id, name) values ($1, $2)`, values: [id, name] });
  }
  // Duplicate key: SQLSTATE 23505 on err.code, then carry on.
  try {
    await client.query({ name: 'compat-ins', text: `insert into ${TABLE} (id, name) values ($1, $2)`, values: [1, 'again'] });
    fail('duplicate key was accepted');
  } catch (e) {
    if (e.code !== '23505') fail(`duplicate key gave SQLSTATE ${e.code}, want 23505: ${e.message}`);
  }
  // A transaction.
  await client.query('begin');
  await client.query(`update ${TABLE} set name = $1 where id = $2`, ['uno', 1]);
  await client.query('commit');

  const r = await client.query(`select id, name, tags from ${TABLE} where id <= $1 order by id`, [2]);
  const got = JSON.stringify(r.rows);
  if (got !== JSON.stringify([{ id: 1, name: 'uno', tags: { a: 1 } }, { id: 2, name: 'two', tags: null }])) {
    fail(`read back ${got}`);
  }
  const u = await client.query('select current_user');
  if (u.rows[0].current_user !== process.env.EXPECT_USER) {
    fail(`current_user is ${u.rows[0].current_user}, want ${process.env.EXPECT_USER}`);
  }
  // Multi-statement simple query.
  const multi = await client.query('select 1 as a; select 2 as b');
  if (!Array.isArray(multi) || multi.length !== 2) fail('multi-statement query');
  await client.query(`drop table ${TABLE}`);
  await client.end();

  // A pool, several connections at once.
  const pool = new Pool({ ...cfg, max: 4 });
  const vals = await Promise.all([...Array(8).keys()].map(async (i) =>
    (await pool.query('select $1::int as v from pg_sleep(0.1)', [i])).rows[0].v));
  if (vals.join(',') !== '0,1,2,3,4,5,6,7') fail(`pool results ${vals}`);
  await pool.end();

  const version = require('pg/package.json').version;
  // pg-protocol's "exports" hides its package.json from require(): read the file.
  const proto = JSON.parse(require('fs').readFileSync(
    require('path').join(__dirname, 'node_modules', 'pg-protocol', 'package.json'), 'utf8')).version;
  console.log(`ok ${STACK} pg ${version} pure JS (pg-protocol ${proto}); extended protocol, named prepared statement, jsonb, transaction, multi-statement simple query, Pool x4`);
}

main().catch((e) => fail(`${e.code ? e.code + ' ' : ''}${e.message}`));
