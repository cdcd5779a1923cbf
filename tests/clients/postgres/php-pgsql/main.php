<?php
// PHP's pgsql extension through entra-db-proxy: the seed's pg_connect() without the token:
// host, port and dbname only, user "app-user", no password, libpq's default sslmode (prefer).
const STACK = 'php-pgsql';
const TABLE = 'compat_php_pgsql';

function fail(string $reason): never {
    echo 'FAIL ' . STACK . ' ' . str_replace("\n", ' ', $reason) . "\n";
    exit(1);
}

function q($c, string $sql, array $params = []) {
    $r = $params ? pg_query_params($c, $sql, $params) : pg_query($c, $sql);
    if ($r === false) {
        fail("$sql: " . pg_last_error($c));
    }
    return $r;
}

$c = pg_connect(sprintf('host=%s port=%s dbname=%s user=app-user',
    getenv('PGHOST'), getenv('PGPORT'), getenv('PGDATABASE')), PGSQL_CONNECT_FORCE_NEW);
if ($c === false) {
    fail('pg_connect failed');
}
q($c, 'drop table if exists ' . TABLE);
q($c, 'create table ' . TABLE . ' (id int primary key, name text not null)');
q($c, 'insert into ' . TABLE . ' values ($1, $2), ($3, $4)', [1, 'one', 2, 'two']);

// A named prepared statement.
if (pg_prepare($c, 'ins', 'insert into ' . TABLE . ' values ($1, $2)') === false) {
    fail('pg_prepare: ' . pg_last_error($c));
}
foreach ([3 => 'three', 4 => 'four'] as $id => $name) {
    if (pg_execute($c, 'ins', [$id, $name]) === false) {
        fail('pg_execute: ' . pg_last_error($c));
    }
}
// Duplicate key: the SQLSTATE comes with the result of an asynchronous send.
pg_send_execute($c, 'ins', [1, 'again']);
$r = pg_get_result($c);
$state = pg_result_error_field($r, PGSQL_DIAG_SQLSTATE);
if ($state !== '23505') {
    fail("duplicate key gave SQLSTATE '$state', want 23505");
}
while (pg_get_result($c) !== false) {
}
// A transaction.
q($c, 'begin');
q($c, 'update ' . TABLE . ' set name = $1 where id = $2', ['uno', 1]);
q($c, 'commit');

$rows = pg_fetch_all(q($c, 'select id, name from ' . TABLE . ' where id <= $1 order by id', [2]));
if ($rows !== [['id' => '1', 'name' => 'uno'], ['id' => '2', 'name' => 'two']]) {
    fail('read back ' . json_encode($rows));
}
$user = pg_fetch_result(q($c, 'select current_user'), 0, 0);
if ($user !== getenv('EXPECT_USER')) {
    fail("current_user is $user, want " . getenv('EXPECT_USER'));
}

// Cancel an asynchronous query (libpq sends a CancelRequest on a new connection).
pg_send_query($c, 'select pg_sleep(20)');
usleep(500000);
$t0 = microtime(true);
if (!pg_cancel_query($c)) {
    fail('pg_cancel_query returned false');
}
if (microtime(true) - $t0 > 5) {
    fail('pg_cancel_query took ' . round(microtime(true) - $t0, 1) . ' s: the cancel did not reach the server');
}
q($c, 'drop table ' . TABLE);
$v = pg_version($c);
if (!pg_close($c)) {
    fail('pg_close');
}
printf("ok %s php-pgsql %s (PHP %s, libpq %s); pg_query_params, pg_prepare/pg_execute, SQLSTATE via pg_result_error_field, pg_cancel_query forwarded\n",
    STACK, phpversion('pgsql'), PHP_VERSION, $v['client']);
