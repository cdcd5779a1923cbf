-- pgbench custom script (-M prepared: named prepared statements through the proxy).
\set id random(1, 9000000000)
insert into compat_pgbench (id, client, who) values (:id, :client_id, current_user) on conflict (id) do nothing;
select count(*) from compat_pgbench where client = :client_id;
