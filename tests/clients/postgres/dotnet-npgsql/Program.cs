// Npgsql through entra-db-proxy: the seed's .NET sample without Azure.Identity: no Password in
// the connection string, Username "app-user", Npgsql's default SslMode (Prefer).
// NOT RUN on this project's machines (no .NET SDK); kept ready for a machine that has one.
using Npgsql;

const string Stack = "dotnet-npgsql";
const string Table = "compat_dotnet_npgsql";

static void Fail(string reason)
{
    Console.WriteLine($"FAIL {Stack} {reason.Replace('\n', ' ')}");
    Environment.Exit(1);
}

try
{
    var cs = new NpgsqlConnectionStringBuilder
    {
        Host = Environment.GetEnvironmentVariable("PGHOST"),
        Port = int.Parse(Environment.GetEnvironmentVariable("PGPORT") ?? "5432"),
        Database = Environment.GetEnvironmentVariable("PGDATABASE"),
        Username = "app-user",
    }.ConnectionString;
    await using var dataSource = NpgsqlDataSource.Create(cs);
    await using (var conn = await dataSource.OpenConnectionAsync())
    {
        async Task Exec(string sql, params object[] args)
        {
            await using var cmd = new NpgsqlCommand(sql, conn);
            foreach (var a in args) cmd.Parameters.Add(new NpgsqlParameter { Value = a });
            await cmd.ExecuteNonQueryAsync();
        }
        await Exec($"drop table if exists {Table}");
        await Exec($"create table {Table} (id int primary key, name text not null)");
        await Exec($"insert into {Table} values ($1, $2), ($3, $4)", 1, "one", 2, "two");

        await using (var ins = new NpgsqlCommand($"insert into {Table} values ($1, $2)", conn))
        {
            ins.Parameters.Add(new NpgsqlParameter<int>());
            ins.Parameters.Add(new NpgsqlParameter<string>());
            await ins.PrepareAsync();
            foreach (var (id, name) in new[] { (3, "three"), (4, "four"), (1, "again") })
            {
                ((NpgsqlParameter<int>)ins.Parameters[0]).TypedValue = id;
                ((NpgsqlParameter<string>)ins.Parameters[1]).TypedValue = name;
                try
                {
                    await ins.ExecuteNonQueryAsync();
                    if (id == 1) Fail("duplicate key was accepted");
                }
                catch (PostgresException e) when (id == 1)
                {
                    if (e.SqlState != PostgresErrorCodes.UniqueViolation)
                        Fail($"duplicate key gave SQLSTATE {e.SqlState}, want 23505");
                }
            }
        }

        await using (var tx = await conn.BeginTransactionAsync())
        {
            await Exec($"update {Table} set name = $1 where id = $2", "uno", 1);
            await tx.CommitAsync();
        }
        var names = new List<string>();
        await using (var q = new NpgsqlCommand($"select name from {Table} where id <= $1 order by id", conn))
        {
            q.Parameters.Add(new NpgsqlParameter { Value = 2 });
            await using var r = await q.ExecuteReaderAsync();
            while (await r.ReadAsync()) names.Add(r.GetString(0));
        }
        if (string.Join(",", names) != "uno,two") Fail($"read back {string.Join(",", names)}");

        await using (var u = new NpgsqlCommand("select current_user", conn))
        {
            var user = (string?)await u.ExecuteScalarAsync();
            if (user != Environment.GetEnvironmentVariable("EXPECT_USER"))
                Fail($"current_user is {user}, want {Environment.GetEnvironmentVariable("EXPECT_USER")}");
        }

        // CommandTimeout: Npgsql sends a CancelRequest on a new connection.
        await using (var slow = new NpgsqlCommand("select pg_sleep(20)", conn) { CommandTimeout = 1 })
        {
            try
            {
                await slow.ExecuteNonQueryAsync();
                Fail("pg_sleep(20) was not cancelled");
            }
            catch (NpgsqlException e) when (e.InnerException is TimeoutException || e is PostgresException { SqlState: "57014" })
            {
            }
        }
        await Exec($"drop table {Table}");
    }
    var v = typeof(NpgsqlConnection).Assembly.GetName().Version;
    Console.WriteLine($"ok {Stack} Npgsql {v} (.NET {Environment.Version}); extended protocol, PrepareAsync, PostgresException 23505, transaction, CommandTimeout cancel");
}
catch (Exception e)
{
    Fail($"{e.GetType().Name}: {e.Message}");
}
