# The pg gem through entra-db-proxy: the seed's Ruby sample without the token request:
# host, port and dbname only, user "app-user", no password, libpq's default sslmode (prefer).
require 'pg'

STACK = 'ruby-pg'
TABLE = 'compat_ruby_pg'

def fail(reason)
  puts "FAIL #{STACK} #{reason.to_s.tr("\n", ' ')}"
  exit 1
end

begin
  conn = PG::Connection.new(host: ENV['PGHOST'], port: ENV['PGPORT'], dbname: ENV['PGDATABASE'],
                            user: 'app-user')
  conn.exec("drop table if exists #{TABLE}")
  conn.exec("create table #{TABLE} (id int primary key, name text not null)")
  conn.exec_params("insert into #{TABLE} values ($1, $2), ($3, $4)", [1, 'one', 2, 'two'])

  conn.prepare('ins', "insert into #{TABLE} values ($1, $2)")
  conn.exec_prepared('ins', [3, 'three'])
  begin
    conn.exec_prepared('ins', [1, 'again'])
    fail 'duplicate key was accepted'
  rescue PG::UniqueViolation => e
    state = e.result.error_field(PG::PG_DIAG_SQLSTATE)
    fail "duplicate key gave SQLSTATE #{state}, want 23505" unless state == '23505'
  end

  conn.transaction do |c|
    c.exec_params("update #{TABLE} set name = $1 where id = $2", ['uno', 1])
  end
  rows = conn.exec_params("select id, name from #{TABLE} where id <= $1 order by id", [2]).values
  fail "read back #{rows.inspect}" unless rows == [%w[1 uno], %w[2 two]]

  user = conn.exec('select current_user').getvalue(0, 0)
  fail "current_user is #{user}, want #{ENV['EXPECT_USER']}" unless user == ENV['EXPECT_USER']

  # Cancel: libpq sends a CancelRequest on a new connection.
  canceller = Thread.new { sleep 1; conn.cancel }
  begin
    conn.exec('select pg_sleep(20)')
    fail 'pg_sleep(20) was not cancelled'
  rescue PG::QueryCanceled
    nil
  end
  canceller.join

  conn.exec("drop table #{TABLE}")
  conn.close
  fail 'not closed' unless conn.finished?
  puts "ok #{STACK} pg #{PG::VERSION} (Ruby #{RUBY_VERSION}, libpq #{PG.library_version / 10_000}.#{PG.library_version % 10_000}); " \
       'exec_params, prepare/exec_prepared, PG::UniqueViolation 23505, transaction, cancel forwarded (57014)'
rescue PG::Error => e
  fail "#{e.class}: #{e.message.strip}"
end
