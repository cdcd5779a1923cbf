-- A short psql session through the proxy: no password, sslmode default (prefer).
drop table if exists compat_psql;
create table compat_psql (id int primary key, name text not null);
prepare ins (int, text) as insert into compat_psql values ($1, $2);
execute ins(1, 'one');
execute ins(2, 'two');
begin;
insert into compat_psql values (3, 'three');
commit;
-- The duplicate key must fail with 23505, and the session must go on.
\set ON_ERROR_STOP 0
execute ins(1, 'again');
\set ON_ERROR_STOP 1
select :'LAST_ERROR_SQLSTATE' as dup_state \gset
select count(*) as nrows from compat_psql where id > 0 \gset
select current_user as cu \gset
select coalesce((select ssl::text from pg_stat_ssl where pid = pg_backend_pid()), '?') as upstream_ssl \gset
deallocate ins;
drop table compat_psql;
select 'result|' || :'dup_state' || '|' || :'nrows' || '|' || :'cu' || '|' || :'upstream_ssl';
