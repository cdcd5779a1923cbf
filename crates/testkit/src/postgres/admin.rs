//! The superuser side: `postgres` over the unix socket (trust), for admin SQL and queries,
//! login roles with passwords hashed per the auth mode (never logged), and databases.

use anyhow::Context as _;

use super::{PgServer, pg_error_text};

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

impl PgServer {
    /// A superuser client over the unix socket.
    pub async fn admin_client(&self) -> anyhow::Result<tokio_postgres::Client> {
        self.admin_client_db("postgres").await
    }

    /// A superuser client over the unix socket, to database `dbname`.
    pub async fn admin_client_db(&self, dbname: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) = tokio_postgres::Config::new()
            .host_path(&self.dir)
            .port(self.port)
            .user("postgres")
            .dbname(dbname)
            .application_name("dbproxy-testkit-admin")
            .connect(tokio_postgres::NoTls)
            .await
            .context("admin connection over the unix socket")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL (one or more statements, simple protocol) as the superuser.
    pub async fn admin_execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.admin_client().await.with_context(|| self.log_tail())?;
        client
            .batch_execute(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            .with_context(|| format!("admin SQL failed: {sql}\n{}", self.log_tail()))
    }

    /// Runs a query as the superuser and returns the rows (simple protocol, text values).
    pub async fn admin_query(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let client = self.admin_client().await.with_context(|| self.log_tail())?;
        let msgs = client
            .simple_query(sql)
            .await
            .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            .with_context(|| format!("admin query failed: {sql}\n{}", self.log_tail()))?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect())
    }

    /// Creates the LOGIN role if missing and sets its password (hashed per the auth mode: md5 for
    /// [`PasswordAuth::Md5`](super::PasswordAuth::Md5), SCRAM otherwise). Also grants it CREATE/CONNECT on database
    /// `postgres` and all on schema `public` there. The password is never logged or put in errors.
    pub async fn set_role_password(&self, role: &str, password: &str) -> anyhow::Result<()> {
        anyhow::ensure!(!password.contains('\0'), "a password cannot contain NUL");
        let ctx = || {
            format!(
                "setting the password of role {role:?} (password of {} chars, redacted)\n{}",
                password.len(),
                self.log_tail()
            )
        };
        let client = self.admin_client().await.with_context(ctx)?;
        let run = |sql: String| {
            let client = &client;
            async move {
                client
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            }
        };
        run(format!(
            "SET log_min_error_statement = panic; SET log_statement = 'none'; SET password_encryption = '{}'",
            self.auth.password_encryption()
        ))
        .await
        .with_context(ctx)?;
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await
            .map_err(|e| anyhow::anyhow!("{}", pg_error_text(&e)))
            .with_context(ctx)?
            .is_some();
        if !exists && let Err(e) = run(format!("CREATE ROLE {} LOGIN", quote_ident(role))).await {
            // Another task may have created it just now.
            if !e.to_string().contains("already exists") {
                return Err(e).with_context(ctx);
            }
        }
        run(format!(
            "ALTER ROLE {} WITH LOGIN PASSWORD {}",
            quote_ident(role),
            quote_literal(password)
        ))
        .await
        .with_context(ctx)?;
        run(format!(
            "GRANT CREATE, CONNECT ON DATABASE postgres TO {r}; GRANT ALL ON SCHEMA public TO {r}",
            r = quote_ident(role)
        ))
        .await
        .with_context(ctx)?;
        Ok(())
    }

    /// Creates database `name` owned by `owner` (the role must exist), if it does not exist.
    pub async fn create_database(&self, name: &str, owner: &str) -> anyhow::Result<()> {
        let exists = !self
            .admin_query(&format!(
                "SELECT 1 FROM pg_database WHERE datname = {}",
                quote_literal(name)
            ))
            .await?
            .is_empty();
        if !exists {
            self.admin_execute(&format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(name),
                quote_ident(owner)
            ))
            .await?;
        }
        Ok(())
    }
}
