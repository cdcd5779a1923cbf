#!/usr/bin/env python3
"""Writes the seed corpora under fuzz/corpus/<target>/ from the unit tests' vectors.

Every target's first byte is a mode/chunking byte (see each target's doc comment); the seeds
use 0 (one chunk) and a few other values. Run from anywhere: python3 fuzz/make_seeds.py
"""
import os
import struct
import zlib

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(bytes(data))


def be32(n):
    return struct.pack(">i", n)


# ---- PostgreSQL startup packets ------------------------------------------------------------
def pg_packet(body):
    return be32(len(body) + 4) + body


def pg_startup(minor, params):
    body = struct.pack(">HH", 3, minor)
    for k, v in params:
        body += k.encode() + b"\0" + v.encode() + b"\0"
    return pg_packet(body + b"\0")


ssl = pg_packet(be32(80877103))
gss = pg_packet(be32(80877104))
cancel30 = pg_packet(be32(80877102) + be32(1234) + be32(0x5EC2E7))
cancel32 = pg_packet(be32(80877102) + be32(42) + bytes(range(32)))
startup = pg_startup(0, [("user", "alice@contoso.com"), ("database", "orders"),
                         ("application_name", "psql"), ("options", "-c search_path=s")])
startup32 = pg_startup(2, [("user", "u"), ("_pq_.protocol_managed", "1")])
for name, data in [("ssl", ssl), ("gssenc", gss), ("cancel30", cancel30), ("cancel32", cancel32),
                   ("startup", startup), ("startup32", startup32)]:
    write("pg_startup", name, b"\0" + data)
write("pg_startup", "ssl_then_startup_bytewise", b"\x01" + ssl + startup)
write("pg_startup", "gss_then_startup_chunked", b"\x17" + gss + startup32)
write("pg_startup", "unsupported_version", b"\0" + pg_packet(struct.pack(">HH", 2, 0) + b"\0"))


# ---- PostgreSQL upstream login (server messages) -------------------------------------------
def pg_msg(tag, body):
    return tag + be32(len(body) + 4) + body


def auth(code, data=b""):
    return pg_msg(b"R", be32(code) + data)


tail = (pg_msg(b"S", b"server_version\x0016.4\x00") + pg_msg(b"K", be32(7) + be32(99))
        + pg_msg(b"Z", b"I"))
error = pg_msg(b"E", b"SFATAL\0C28P01\0Mpassword authentication failed for user \"u\"\0\0")
notice = pg_msg(b"N", b"SNOTICE\0C00000\0Mhello\0\0")
negotiate = pg_msg(b"v", be32(0) + be32(1) + b"_pq_.unknown\0")
seeds = {
    "trust": auth(0) + tail,
    "cleartext": auth(3) + auth(0) + tail,
    "md5": auth(5, b"\x01\x02\x03\x04") + auth(0) + tail,
    "sasl": auth(10, b"SCRAM-SHA-256\0\0"),
    "sasl_plus_only": auth(10, b"SCRAM-SHA-256-PLUS\0\0"),
    "rejected": auth(3) + error,
    "notice_negotiate": negotiate + notice + auth(3) + auth(0) + tail,
    "sasl_continue_early": auth(11, b"r=abc,s=c2FsdA==,i=4096"),
    "gss": auth(7),
}
for name, data in seeds.items():
    write("pg_login", name, b"\0" + data)
write("pg_login", "cleartext_bytewise", b"\x01" + seeds["cleartext"])


# ---- CQL frames -----------------------------------------------------------------------------
def cql_string(s):
    s = s.encode() if isinstance(s, str) else s
    return struct.pack(">H", len(s)) + s


def cql_long_string(s):
    s = s.encode() if isinstance(s, str) else s
    return be32(len(s)) + s


def string_map(pairs):
    return struct.pack(">H", len(pairs)) + b"".join(cql_string(k) + cql_string(v) for k, v in pairs)


def string_multimap(pairs):
    out = struct.pack(">H", len(pairs))
    for k, vs in pairs:
        out += cql_string(k) + struct.pack(">H", len(vs)) + b"".join(cql_string(v) for v in vs)
    return out


def frame(version, response, flags, stream, opcode, body):
    first = version | (0x80 if response else 0)
    if version < 3:
        head = struct.pack(">BBbB", first, flags, stream, opcode)
    else:
        head = struct.pack(">BBhB", first, flags, stream, opcode)
    return head + be32(len(body)) + body


def crc24(data):
    crc = 0x875060
    for b in data:
        crc ^= b << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1974F0B
    return crc & 0xFFFFFF


def crc32(data):
    return zlib.crc32(b"\xfa\x2d\x55\xca" + data) & 0xFFFFFFFF


def segment(payload, self_contained=True, lz4=False):
    """A segment; with lz4 the payload is stored uncompressed (uncompressed length 0)."""
    if lz4:
        header = len(payload) | ((1 << 34) if self_contained else 0)
        hb = header.to_bytes(8, "little")[:5]
    else:
        header = len(payload) | ((1 << 17) if self_contained else 0)
        hb = header.to_bytes(8, "little")[:3]
    return hb + crc24(hb).to_bytes(4, "little")[:3] + payload + crc32(payload).to_bytes(4, "little")


def lz4_block_literals(data):
    assert len(data) < 15
    return bytes([len(data) << 4]) + data


def cql_lz4(data):
    return be32(len(data)) + lz4_block_literals(data)


def snappy_literals(data):
    assert 0 < len(data) <= 60 and len(data) < 128
    return bytes([len(data), (len(data) - 1) << 2]) + data


options = frame(4, False, 0, 0, 0x05, b"")
startup4 = frame(4, False, 0, 1, 0x01, string_map([("CQL_VERSION", "3.0.0"),
                                                    ("DRIVER_NAME", "gocql")]))
startup5_lz4 = frame(5, False, 0, 1, 0x01, string_map([("CQL_VERSION", "3.0.0"),
                                                        ("COMPRESSION", "lz4")]))
startup3_snappy = frame(3, False, 0, 1, 0x01, string_map([("CQL_VERSION", "3.0.0"),
                                                           ("COMPRESSION", "snappy")]))
ready4 = frame(4, True, 0, 1, 0x02, b"")
v2_options = frame(2, False, 0, 0, 0x05, b"")
query = frame(4, False, 0, 3, 0x07, cql_long_string("SELECT * FROM system.local") + b"\x00\x01\x00")
lz4_query = frame(4, False, 1, 4, 0x07, cql_lz4(b"\x00\x00\x00\x01x\x00\x01\x00"))
snappy_query = frame(4, False, 1, 5, 0x07, snappy_literals(b"\x00\x00\x00\x01x\x00\x01\x00"))
v5_query = frame(5, False, 0, 3, 0x07, cql_long_string("SELECT 1") + b"\x00\x01\x00\x00\x00\x00")
big = frame(5, False, 0, 9, 0x07, cql_long_string("x" * 200) + b"\x00\x01\x00\x00\x00\x00")

# cql_frame: mode byte (0 legacy, 1 v5 plain, 2 v5 lz4; bits 2-3 bound; bits 4-5 compression),
# then the chunking byte.
write("cql_frame", "legacy_options_startup", b"\x00\x00" + options + startup4)
write("cql_frame", "legacy_bytewise", b"\x00\x01" + options + query)
write("cql_frame", "legacy_v2", b"\x00\x00" + v2_options)
write("cql_frame", "legacy_lz4_body", b"\x00\x00" + lz4_query)
write("cql_frame", "legacy_snappy_body", b"\x10\x00" + snappy_query)
write("cql_frame", "legacy_too_large", b"\x08\x00" + big)
write("cql_frame", "v5_plain", b"\x01\x00" + segment(v5_query + v5_query))
write("cql_frame", "v5_lz4", b"\x02\x00" + segment(v5_query, lz4=True))
write("cql_frame", "v5_multi_segment",
      b"\x01\x03" + segment(big[:100], False) + segment(big[100:], False))

# cql_segment: chunking byte, bit 0 = lz4.
write("cql_segment", "plain", b"\x00" + segment(v5_query))
write("cql_segment", "plain_not_self_contained", b"\x02" + segment(big[:50], False))
write("cql_segment", "lz4_stored", b"\x01" + segment(v5_query, lz4=True))
lz4_payload = lz4_block_literals(b"hello world!")
hb = (len(lz4_payload) | (12 << 17) | (1 << 34)).to_bytes(8, "little")[:5]
write("cql_segment", "lz4_compressed",
      b"\x01" + hb + crc24(hb).to_bytes(4, "little")[:3] + lz4_payload
      + crc32(lz4_payload).to_bytes(4, "little"))

# cql_handshake: chunking byte (max version 3 + byte % 3, compression from bits 2-3).
write("cql_handshake", "options_startup", b"\x02" + options + startup4)
write("cql_handshake", "startup_v5_lz4", b"\x06" + startup5_lz4)
write("cql_handshake", "startup_v3_snappy", b"\x08" + startup3_snappy)
write("cql_handshake", "v2_refused", b"\x00" + v2_options)
write("cql_handshake", "query_before_startup", b"\x00" + query)
write("cql_handshake", "response_from_client", b"\x00" + ready4)
write("cql_handshake", "register", b"\x02" + frame(4, False, 0, 2, 0x0B, struct.pack(">H", 1)
                                                 + cql_string("TOPOLOGY_CHANGE")))

# cql_login, raw mode (bit 0 clear): version 3 + (bits 1-2) % 3, compression bits 3-4.
authenticate = frame(4, True, 0, 0, 0x03, cql_string("org.apache.cassandra.auth.PasswordAuthenticator"))
challenge = frame(4, True, 0, 0, 0x0E, be32(4) + b"abcd")
success = frame(4, True, 0, 0, 0x10, be32(-1))
err = frame(4, True, 0, 0, 0x00, be32(0x0100) + cql_string("Provided username and/or password are incorrect"))
write("cql_login", "ready", b"\x02\x00" + ready4)
write("cql_login", "password_flow", b"\x02\x00" + authenticate + challenge + success)
write("cql_login", "password_bytewise", b"\x02\x01" + authenticate + success)
write("cql_login", "bad_credentials", b"\x02\x00" + authenticate + err)
# framed mode (bit 0 set), v5 (bits 1-2 = 2): op byte, flags, length, body
auth_body = cql_string("org.apache.cassandra.auth.PasswordAuthenticator")
write("cql_login", "framed_v5_auth", bytes([0x05, 0x02, 0x00, len(auth_body)]) + auth_body
      + bytes([0x04, 0x00, 0x04]) + be32(-1))
write("cql_login", "framed_v4_lz4_ready", bytes([0x0B, 0x01, 0x01, 0x00]))

# cql_topology: mode (version 3 + m % 3, compression bits 2-3), then commands:
#   cmd, flags, stream(+1), ...: 0 QUERY (query sel, query flags), 1 PREPARE (query sel),
#   2 EXECUTE (id), 3 RESULT Rows, 4 RESULT Prepared, 5 EVENT, 6/7 raw frames.
def text_cell(t):
    return bytes([4, len(t)]) + t


local_cells = (text_cell(b"local") + text_cell(b"COMPLETED") + b"\x01" + text_cell(b"cosmos")
               + text_cell(b"West US") + b"\x02" + b"\x01"
               + text_cell(b"org.apache.cassandra.dht.Murmur3Partitioner") + text_cell(b"rack1")
               + text_cell(b"3.11.0") + b"\x00" + text_cell(b"\x00\x00\x28\x6e") + b"\x03")
# metadata flags (global spec), 13 columns of system.local, 1 row
rows = bytes([0x01, 13, 0x00]) + bytes(range(13)) + bytes([1]) + local_cells
write("cql_topology", "query_local_rows", b"\x01" + bytes([0, 0, 3, 0, 0]) + bytes([3, 0, 3]) + rows)
write("cql_topology", "query_peers_rows", b"\x01" + bytes([0, 0, 2, 1, 0])
      + bytes([3, 0, 2, 0x01, 6, 1, 13, 4, 5, 8, 10, 12, 1, 1, 0, 2, 4, 1, 0, 3]))
write("cql_topology", "prepare_execute_local", b"\x01" + bytes([1, 0, 4, 0]) + bytes([4, 0, 4, 2, 0xAB, 0xCD, 1, 0x01, 3, 0, 0, 1, 2])
      + bytes([2, 0, 5, 2, 0xAB, 0xCD]) + bytes([3, 0, 5, 0x05, 3, 0, 1, 4, 1, b"x"[0], 0, 2]))
write("cql_topology", "compressed_lz4", b"\x05" + bytes([0, 1, 3, 0, 0]) + bytes([3, 1, 3]) + rows)
write("cql_topology", "events", b"\x01" + bytes([5, 0, 0, 0, 4]) + b"\x00\x00\x00\x00" + bytes([5, 0, 0, 2, 4]) + b"abcd")
write("cql_topology", "stream_reuse", b"\x02" + bytes([0, 0, 3, 0, 0, 6, 0, 3, 0x07, 0]) + bytes([3, 0, 3]) + rows)

# ---- Service Connector connection strings --------------------------------------------------
for name, s in [
    ("libpq", "dbname=db host=srv.postgres.database.azure.com port=5432 sslmode=require user=aad_app"),
    ("libpq_quoted", "host='my srv' user='a\\'b' dbname=x"),
    ("dotnet", "Server=srv.postgres.database.azure.com;Database=db;Port=5432;Ssl Mode=Require;User Id=aad_app;"),
    ("jdbc", "jdbc:postgresql://srv.postgres.database.azure.com:5432/db?sslmode=require&user=aad%40app"),
    ("jdbc_ipv6", "jdbc:postgresql://[::1]:5433/db"),
    ("host_port", "[2001:db8::1]:5432"),
]:
    write("service_connector", name, s.encode())

# ---- TOML configuration --------------------------------------------------------------------
write("config_toml", "postgres", b"""[[listener]]
name = "orders"
protocol = "postgres"
listen = "127.0.0.1:5432"
upstream = "srv.postgres.database.azure.com:5432"
""")
example = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "proxy.toml.example")
if os.path.exists(example):
    with open(example, "rb") as f:
        write("config_toml", "proxy_toml_example", f.read())

# ---- Credential responses (token endpoint, IMDS, App Service, az, listKeys, errors) --------
# Byte 0: 0 Entra, 1 IMDS, 2 App Service, 3 az, 4 listKeys (+ kind << 3), 5 error body (byte 1:
# secret length, then the secret, then the body), 6 Retry-After, 7 any JSON.
JWT = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.eyJhdWQiOiJodHRwczovL29zc3JkYm1zIn0.c2lnbmF0dXJl"
KEY = "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
KEY2 = "Zm9vYmFyYmF6cXV4eHl6enk0MjQyNDI0MjQyNDI0MjQyNDI0MjQyNDI0MjQyNDI0MjQyNDI0MjQyNDI0MjQyNA=="
for mode, name, body in [
    (1, "imds_strings", '{"access_token":"%s","refresh_token":"","expires_in":"3599","expires_on":"1506484173",'
        '"not_before":"1506480273","resource":"https://ossrdbms-aad.database.windows.net","token_type":"Bearer"}' % JWT),
    (1, "imds_numbers", '{"access_token":"tok","expires_in":3599,"expires_on":1506484173}'),
    (2, "app_service", '{"access_token":"%s","expires_on":"1586984735","resource":"https://ossrdbms-aad.database.windows.net",'
        '"token_type":"Bearer","client_id":"00000000-0000-0000-0000-000000000000"}' % JWT),
    (0, "entra_v2", '{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"%s"}' % JWT),
    (0, "no_expiry", '{"access_token":"tok"}'),
    (0, "huge_expiry", '{"access_token":"tok","expires_in":18446744073709551615}'),
    (0, "float_expiry", '{"access_token":"tok","expires_on":1.5e9}'),
    (0, "not_json", 'not json with s3cret'),
    (3, "az", '{"accessToken":"%s","expiresOn":"2030-01-02 03:04:05.000000","expires_on":2147385600,'
        '"subscription":"s","tenant":"t","tokenType":"Bearer"}' % JWT),
    (3, "az_local_time", '{"accessToken":"x","expiresOn":"2030-01-02 03:04:05.000000"}'),
    (3, "az_iso_time", '{"accessToken":"x","expiresOn":"2030-01-02T03:04:05"}'),
    (3, "az_truncated", '{"accessToken":"leaky"'),
    (4, "list_keys", '{"primaryMasterKey":"%s","secondaryMasterKey":"%s","primaryReadonlyMasterKey":"%s",'
        '"secondaryReadonlyMasterKey":"%s"}' % (KEY, KEY2, KEY2, KEY)),
    (4 | 1 << 3, "list_keys_secondary_only", '{"secondaryMasterKey":"%s","primaryMasterKey":""}' % KEY2),
    (4 | 2 << 3, "readonly_keys", '{"primaryReadonlyMasterKey":"%s","secondaryReadonlyMasterKey":"%s"}' % (KEY, KEY2)),
    (4 | 3 << 3, "readonly_missing", '{"primaryReadonlyMasterKey":"%s"}' % KEY),
    (6, "retry_after", ' 7 '),
    (6, "retry_after_date", 'Wed, 21 Oct 2015 07:28:00 GMT'),
    (7, "json", '{"error":{"code":"AuthorizationFailed","message":"no"}}'),
]:
    write("credential_responses", name, bytes([mode]) + body.encode())
for name, secret, body in [
    ("entra_error", "s3cret-value", '{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client secret '
        's3cret-value is provided.\\r\\nTrace ID: 1","error_codes":[7000215],"timestamp":"2020-04-07 16:28:05Z"}'),
    ("imds_error", "", '{"error":"invalid_request","error_description":"Identity not found"}'),
    ("app_service_error", "IDENTITY-HEADER-sentinel", '{"statusCode":400,"message":"No Managed Identity found for '
        'IDENTITY-HEADER-sentinel","correlationId":"x"}'),
    ("arm_error", KEY, '{"error":{"code":"AuthorizationFailed","message":"The client does not have authorization '
        'to perform action \'Microsoft.DocumentDB/databaseAccounts/listKeys/action\' %s\\nline 2"}}' % KEY),
    ("multiline_secret", "abcd\nefgh", '{"error":"x","error_description":"bad abcd\\nefgh."}'),
    ("html", "", '<html>'),
]:
    s = secret.encode()
    write("credential_responses", name, bytes([5, len(s)]) + s + body.encode())

# ---- Cosmos DB: throttled ERRORs, request charges, the retry tracker -----------------------
# Byte 0: 0 built ERROR (flags, code selector, compression, message start, message), 1 raw
# response (flags, opcode, compression, body), 2 built custom payload, 3 RetryTracker.
RATE = ("Request rate is large: ActivityID=0a1b, RetryAfterMs=12, Additional details='Response "
        "status code does not indicate success: TooManyRequests (429); Substatus: 3200; ActivityId: "
        "0a1b; Reason: ({ \"Errors\": [ \"Request rate is large.\" ] });")
write("cosmos_responses", "rate_limit", bytes([0, 0, 0, 0, 3]) + RATE.encode())
write("cosmos_responses", "rate_limit_no_wait", bytes([0, 0, 0, 0, 3])
      + b"Request rate is large: ActivityID=x, Additional details='TooManyRequests (429)")
write("cosmos_responses", "rate_limit_prefixes_lz4", bytes([0, 0x0E, 0, 1, 0]) + b"34, x")
write("cosmos_responses", "rate_limit_huge_wait", bytes([0, 0x04, 0, 2, 0]) + b"18446744073709551615")
write("cosmos_responses", "overloaded_not_rate", bytes([0, 0, 0, 0, 2]))
write("cosmos_responses", "other_code", bytes([0, 0, 2, 0, 3]) + RATE.encode())


def charged_body(flags_extra, charge, rest):
    body = b""
    if flags_extra & 0x08:
        body += struct.pack(">H", 1) + cql_string("warn")
    body += struct.pack(">H", 2) + cql_string("foo") + be32(1) + b"\x09"
    body += cql_string("RequestCharge") + be32(len(charge)) + charge + rest
    return body


write("cosmos_responses", "raw_charge", bytes([1, 0x04, 0x08, 0])
      + charged_body(0, struct.pack(">d", 2.79), b"\x00\x00\x00\x01"))
write("cosmos_responses", "raw_charge_warning", bytes([1, 0x0C, 0x08, 0])
      + charged_body(0x08, struct.pack(">d", 5.5), b""))
write("cosmos_responses", "raw_charge_short", bytes([1, 0x04, 0x08, 0]) + charged_body(0, b"\x01\x02\x03", b""))
write("cosmos_responses", "raw_error", bytes([1, 0x00, 0x00, 0]) + be32(0x1001) + cql_string(RATE))
write("cosmos_responses", "raw_garbage_error", bytes([1, 0, 0, 0, 0, 0, 0x10, 1, 0xff]))
# built payload: flags, count, then (key selector, value selector, value) per entry
write("cosmos_responses", "payload", bytes([2, 0x00, 2, 1, 2, 1, 9, 0, 1]) + struct.pack(">d", 2.79))
write("cosmos_responses", "payload_warning_tracing", bytes([2, 0x0A, 1, 0, 1]) + struct.pack(">d", 5.5))
write("cosmos_responses", "payload_negative", bytes([2, 0, 1, 0, 1]) + struct.pack(">d", -1.0))
write("cosmos_responses", "payload_null", bytes([2, 0, 2, 0, 0, 0, 1]) + struct.pack(">d", 1.0))
# RetryTracker: policy (retries, wait/4 ms, fixed backoff ms, cap/8 bytes), then (op, stream, arg)
write("cosmos_responses", "retry_budget", bytes([3, 2, 25, 30, 128, 0, 1, 20, 1, 1, 13, 1, 1, 13, 1, 1, 13]))
write("cosmos_responses", "retry_total_wait", bytes([3, 10, 25, 30, 128, 0, 1, 20] + [1, 1, 0] * 5))
write("cosmos_responses", "retry_cap_and_kinds", bytes([3, 2, 25, 30, 4, 0, 2, 40, 12, 3, 5, 0, 1, 1,
                                                       1, 2, 1, 2, 1, 0, 3, 1, 0, 1, 1]))
write("cosmos_responses", "retry_off", bytes([3, 0, 25, 30, 128, 0, 1, 20, 1, 1, 13]))
write("cosmos_responses", "retry_unbounded", bytes([3, 0xff, 0xff, 0xff, 0xff, 0, 0, 9]
                                                   + [1, 0, 2] * 40 + [1, 0, 0] * 2))

# ---- Kubernetes API answers: pod list + watch, Status, ServiceAccount, TokenRequest ---------
# Byte 0: 0 raw list + watch (chunking byte, list line, event lines), 1 built pods, 2 Status
# body, 3 ServiceAccount, 4 TokenRequest.
POD = ('{"metadata":{"name":"a","namespace":"n","uid":"u","resourceVersion":"7"},"spec":'
       '{"serviceAccountName":"sa","nodeName":"node1","hostNetwork":false},"status":{"phase":'
       '"Running","podIP":"10.0.0.5","podIPs":[{"ip":"10.0.0.5"}]}}')
HOST_POD = ('{"metadata":{"name":"h","namespace":"kube-system","uid":"uh"},"spec":{"hostNetwork":true},'
            '"status":{"phase":"Running","podIP":"10.224.0.4"}}')
OTHER_SA = ('{"metadata":{"name":"b","namespace":"n","uid":"ub"},"spec":{"serviceAccountName":"other"},'
            '"status":{"phase":"Running","podIPs":[{"ip":"10.0.0.6"},{"ip":"fd00::6"}]}}')
LIST = '{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1234"},"items":[%s,%s]}' % (POD, HOST_POD)
EVENTS = "\n".join([
    '{"type":"ADDED","object":%s}' % OTHER_SA,
    '{"type":"MODIFIED","object":%s}' % POD.replace('"Running"', '"Succeeded"'),
    '{"type":"BOOKMARK","object":{"kind":"Pod","metadata":{"resourceVersion":"9"}}}',
    '{"type":"DELETED","object":%s}' % HOST_POD,
    '{"type":"ERROR","object":{"kind":"Status","code":410,"message":"too old resource version"}}',
]) + "\n"
write("kube_responses", "list_watch", b"\x00\x00" + (LIST + "\n" + EVENTS).encode())
write("kube_responses", "list_watch_chunked", b"\x00\x13" + (LIST + "\n" + EVENTS).encode())
write("kube_responses", "list_only", b"\x00\x00" + LIST.encode())
write("kube_responses", "watch_bad_line", b"\x00\x00{}\n" + b'{"type":"NOPE","object":{}}\n')
# built: cmd % 5 (0 ADDED, 1 MODIFIED, 2 DELETED, 3 list of (cmd >> 3) % 5 pods, 4 failure),
# each pod 3 bytes (uid | name << 3; ns | sa << 1 | phase << 3 | host << 7; podIP | podIPs << 3)
def kcmd(kind, count=0):
    """A built-mode command: kind % 5 is the command, (byte >> 3) % 5 a list's pod count."""
    return next(b for b in range(256) if b % 5 == kind and (b >> 3) % 5 == count)


def kpod(uid, name, ns=0, sa=0, phase=0, host=False, ip=0, ips=0):
    return bytes([uid | name << 3, ns | sa << 1 | phase << 3 | (0x80 if host else 0), ip | ips << 3])


# Three pods on 10.0.0.2: a running one, a host-network one, then another running one added.
write("kube_responses", "built_same_ip", b"\x01" + bytes([kcmd(3, 2)]) + kpod(0, 0, ip=1)
      + kpod(1, 1, host=True, ip=1) + bytes([kcmd(0)]) + kpod(2, 2, ip=1, ips=0b0011))
# A running pod of another service account (u0, "a") first by name: preferring it for ns/sa
# must still give sa's own pod.
write("kube_responses", "built_other_sa", b"\x01" + bytes([kcmd(3, 3)]) + kpod(0, 0, sa=1)
      + kpod(1, 3, ip=2) + kpod(2, 1, host=True, ip=3) + bytes([kcmd(1)]) + kpod(3, 2, ns=1, ip=2))
# A pending pod without a service account, one with an empty one, an API failure, a new list.
write("kube_responses", "built_pending_default_sa", b"\x01" + bytes([kcmd(3, 1)])
      + kpod(0, 0, sa=2, phase=1, ip=1) + bytes([kcmd(0)]) + kpod(1, 1, sa=3, ip=2)
      + bytes([kcmd(4), kcmd(3, 0), kcmd(2)]) + kpod(1, 1))
for name, body in [
    ("status_forbidden", '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":'
        '"pods is forbidden: User \\"system:serviceaccount:p:p\\" cannot list resource \\"pods\\"",'
        '"reason":"Forbidden","details":{"kind":"pods"},"code":403}'),
    ("status_reason", '{"reason":"NotFound"}'),
    ("status_html", '<html><body>502 Bad Gateway</body></html>'),
]:
    write("kube_responses", name, b"\x02" + body.encode())
for name, body in [
    ("service_account", '{"kind":"ServiceAccount","apiVersion":"v1","metadata":{"name":"sa","namespace":"n",'
        '"annotations":{"azure.workload.identity/client-id":"00000000-0000-0000-0000-000000000001",'
        '"azure.workload.identity/tenant-id":"t","entra-db-proxy/postgres-user":"app"}}}'),
    ("service_account_bare", '{}'),
    ("service_account_bad", '{"metadata":{"annotations":{"a":1}}}'),
]:
    write("kube_responses", name, b"\x03" + body.encode())
for name, body in [
    ("token_request", '{"kind":"TokenRequest","apiVersion":"authentication.k8s.io/v1","spec":{"audiences":'
        '["api://AzureADTokenExchange"],"expirationSeconds":3600},"status":{"token":"%s",'
        '"expirationTimestamp":"2030-01-01T00:00:00Z"}}' % JWT),
    ("token_empty", '{"status":{"token":""}}'),
    ("token_truncated", '{"status":{"token":"eyJ.secret'),
]:
    write("kube_responses", name, b"\x04" + body.encode())
# Not UTF-8 in a field the parser ignores: a ServiceAccount for the parser, no JSON Value
# (what the first 600 s run stopped on, a target bug).
write("kube_responses", "service_account_bad_utf8_ignored_field",
      b'\x03{"kind":"ServiceAcc\x9dount","metadata":{"annotations":{"a":"b"}}}')
