#!/usr/bin/env python3
"""Writes the seed corpus, fuzz/seeds/<target>/<name>: hand-made valid inputs for each target.

The files are committed; run this again only to change them (python3 fuzz/make_seeds.py).
Input layouts are described at the top of each target in fuzz_targets/.
"""
import hashlib
import hmac
import json
import os
import shutil
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")

# The fixed credentials of fuzz_targets/api_request.rs.
KEY = "fuzz-key"
SECRET = "fuzz-secret"

shutil.rmtree(SEEDS, ignore_errors=True)


def write(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- ws_frames: [limit selector][read-cutting seed] + what a client sends -----------------

def frame(opcode, payload, fin=True, mask=b"\x37\xfa\x21\x3d", long_form=None):
    if isinstance(payload, str):
        payload = payload.encode()
    out = bytearray([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if long_form == 127 or n > 0xFFFF:
        out += bytes([0x80 | 127]) + struct.pack(">Q", n)
    elif long_form == 126 or n >= 126:
        out += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        out.append(0x80 | n)
    out += mask
    out += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(out)


TEXT, CONT, BINARY, CLOSE, PING, PONG = 1, 0, 2, 8, 9, 10
sub = json.dumps({"event": "pusher:subscribe", "data": {"channel": "my-channel"}})
ws = {
    "text": (2, frame(TEXT, "hello")),
    "subscribe": (2, frame(TEXT, sub)),
    "fragmented_with_ping": (
        2,
        frame(TEXT, '{"event":"pus', fin=False)
        + frame(PING, "are you there")
        + frame(CONT, 'her:ping",', fin=False)
        + frame(CONT, '"data":{}}'),
    ),
    "medium_126": (2, frame(TEXT, json.dumps({"event": "client-x", "channel": "private-a", "data": "x" * 300}))),
    "long_form_127": (1, frame(TEXT, "short in a long header", long_form=127)),
    "two_messages_and_pong": (3, frame(TEXT, '{"event":"pusher:ping","data":{}}') + frame(PONG, "") + frame(TEXT, sub)),
    "close_normal": (2, frame(TEXT, "bye") + frame(CLOSE, struct.pack(">H", 1000) + b"done")),
    "close_empty": (1, frame(CLOSE, b"")),
    "close_bad_code": (1, frame(CLOSE, struct.pack(">H", 1005))),
    "binary": (2, frame(BINARY, b"\x00\x01\x02")),
    "too_big_assembled": (0, frame(TEXT, "0123456789", fin=False) + frame(CONT, "0123456789")),
    "not_utf8": (2, frame(TEXT, b"\xff\xfe")),
}
for name, (limit, stream) in ws.items():
    write("ws_frames", name, bytes([limit, len(name)]) + stream)


# ---- http_request: [body limit selector] + raw bytes --------------------------------------

CRLF = "\r\n"


def request(method, target, headers=(), body=""):
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1:6001"] + list(headers)
    if body:
        lines.append(f"Content-Length: {len(body.encode())}")
    return CRLF.join(lines) + CRLF + CRLF + body


upgrade = request(
    "GET",
    "/app/app-key?protocol=7&client=js&version=8.4.0&flash=false",
    [
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
        "Origin: https://app.example.com",
    ],
)
trigger_body = '{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
http = {
    "upgrade": (2, upgrade),
    "trigger": (
        2,
        request(
            "POST",
            "/apps/3/events?auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0"
            "&body_md5=ec365a775a4cd0599faeb73354201b6f"
            "&auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c",
            ["Content-Type: application/json"],
            trigger_body,
        ),
    ),
    "channels_query": (
        1,
        request("GET", "/apps/3/channels?filter_by_prefix=presence-&info=user_count%2Csubscription_count"),
    ),
    "percent_path": (1, request("GET", "/apps/3/channels/presence-%C3%A9t%C3%A9/users")),
    "http10_up": (0, "GET /up HTTP/1.0\r\n\r\n"),
    "pipelined": (2, request("GET", "/up", ["Connection: keep-alive"]) + request("GET", "/metrics")),
    "close_with_body": (2, request("POST", "/apps/3/batch_events", ["Connection: close"], '{"batch":[]}')),
}
for name, (limit, raw) in http.items():
    write("http_request", name, bytes([limit]) + raw.encode())


# ---- client_message: the text of one WebSocket message -----------------------------------

channel_data = json.dumps({"user_id": 10, "user_info": {"name": "Mr. Channels"}})
user_data = json.dumps({"id": "12345", "user_info": {"name": "A", "tags": ["x", 1]}, "watchlist": ["u2", 3, "u2"]})
messages = {
    "subscribe": sub,
    "subscribe_private": {"event": "pusher:subscribe", "data": {"channel": "private-a", "auth": "app-key:" + "0" * 64}},
    "subscribe_presence": {
        "event": "pusher:subscribe",
        "data": {"channel": "presence-room", "auth": "app-key:" + "a" * 64, "channel_data": channel_data},
    },
    "subscribe_presence_string_id": {
        "event": "pusher:subscribe",
        "data": {"channel": "presence-room", "auth": "k:s", "channel_data": json.dumps({"user_id": "u\u00e9", "user_info": None})},
    },
    "subscribe_double_encoded": {"event": "pusher:subscribe", "data": json.dumps({"channel": "cache-x"})},
    "unsubscribe": {"event": "pusher:unsubscribe", "data": {"channel": "my-channel"}},
    "signin": {"event": "pusher:signin", "data": {"auth": "app-key:" + "b" * 64, "user_data": user_data}},
    "ping": {"event": "pusher:ping", "data": {}},
    "client_event": {"event": "client-typing", "channel": "private-chat", "data": {"a": [1, 2, {"b": None}], "s": "\u2603\\\""}},
    "nested_at_limit": '{"event":"client-x","channel":"private-a","data":' + "[" * 63 + "]" * 63 + "}",
}
for name, m in messages.items():
    write("client_message", name, m if isinstance(m, str) else json.dumps(m))


# ---- api_request: raw HTTP requests, signed with the target's key and secret --------------

def signed_request(method, path, params, body=""):
    params = dict(params)
    params.update({"auth_key": KEY, "auth_timestamp": "1353088179", "auth_version": "1.0"})
    if body:
        params["body_md5"] = hashlib.md5(body.encode()).hexdigest()
    to_sign = "\n".join([method, path, "&".join(f"{k.lower()}={v}" for k, v in sorted(params.items()))])
    params["auth_signature"] = hmac.new(SECRET.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    # Values here need no escaping except the comma.
    query = "&".join(f"{k}={v.replace(',', '%2C')}" for k, v in params.items())
    return request(method, f"{path}?{query}", ["Content-Type: application/json"] if body else [], body)


api = {
    "trigger": signed_request("POST", "/apps/fuzz-app/events", {}, trigger_body),
    "trigger_many_info": signed_request(
        "POST",
        "/apps/fuzz-app/events",
        {},
        json.dumps({"name": "e", "channels": ["presence-a", "b", "cache-c"], "data": {"k": [1, "x"]}, "info": "user_count,subscription_count", "socket_id": "123.456"}),
    ),
    "trigger_to_user": signed_request("POST", "/apps/fuzz-app/events", {}, json.dumps({"name": "e", "channel": "#server-to-user-u1", "data": "hi"})),
    "batch": signed_request(
        "POST",
        "/apps/fuzz-app/batch_events",
        {},
        json.dumps({"batch": [{"channel": "a", "name": "e", "data": "x"}, {"channel": "presence-b", "name": "e", "data": "{}", "info": "user_count"}]}),
    ),
    "channels": signed_request("GET", "/apps/fuzz-app/channels", {"filter_by_prefix": "presence-", "info": "user_count"}),
    "channel_info": signed_request("GET", "/apps/fuzz-app/channels/presence-room", {"info": "user_count,subscription_count"}),
    "channel_cache": signed_request("GET", "/apps/fuzz-app/channels/cache-xy", {"info": "cache"}),
    "users": signed_request("GET", "/apps/fuzz-app/channels/presence-room/users", {}),
    "connections": signed_request("GET", "/apps/fuzz-app/connections", {}),
    "terminate": signed_request("POST", "/apps/fuzz-app/users/u1/terminate_connections", {}),
    "terminate_unprefixed": signed_request("POST", "/users/u1/terminate_connections", {}),
    "disabled_app": signed_request("GET", "/apps/off-app/connections", {}),
    "get_with_body_md5": signed_request("GET", "/apps/fuzz-app/channels", {"body_md5": "d41d8cd98f00b204e9800998ecf8427e"}),
}
for name, raw in api.items():
    write("api_request", name, raw)
# Regression: a body that is not UTF-8 inside a lazily parsed value panicked sonic-rs.
bad = signed_request("POST", "/apps/fuzz-app/events", {}, '{"name":"e","channel":"a","data":{"~":1}}')
write("api_request", "regress_body_not_utf8", bad.encode().replace(b"~", b"\xeb"))


# ---- config_load: TOML, then NUL and environment overrides -------------------------------

with open(os.path.join(HERE, "..", "systemd", "ringpush.toml")) as f:
    write("config_load", "systemd_example", f.read())
write("config_load", "minimal", '[[apps]]\nid = "a"\nkey = "k"\nsecret = "s"\n')
write(
    "config_load",
    "webhooks_and_origins",
    """[server]
host = "::"
port = 0
workers = 2
max_request_body = 65536

[[apps]]
id = "1"
key = "key-1"
secret = "secret-1"
allowed_origins = ["https://app.example.com", "*.example.org"]
batch_webhooks = true
webhook_batch_ms = 100

[[apps.webhooks]]
url = "http://127.0.0.1:8080/hook"
event_types = ["channel_occupied", "member_added", "client_event"]
filter = { prefix = "presence-", suffix = "-x" }
headers = { "X-Token" = "t", "X-Other" = "o" }

[[apps]]
id = "2"
key = "key-2"
secret = "secret-2"
enabled = false
""",
)
write(
    "config_load",
    "cluster",
    '[cluster]\nadapter = "redis"\nurl = "redis://u:p@10.0.0.5:6380/2"\nprefix = "rp:test"\nnode_timeout = 5\n\n[[apps]]\nid = "a"\nkey = "k"\nsecret = "s"\n',
)
write(
    "config_load",
    "with_env",
    '[[apps]]\nid = "a"\nkey = "k"\nsecret = "s"\n\0SERVER__PORT=7000\nAPPS__0__CLIENT_EVENTS=false\nAPPS__1__ID=b\nAPPS__1__KEY=kb\nAPPS__1__SECRET=sb\nhttps://x.example.com:8443',
)

# Regression: an override with a huge list index grew the list until memory ran out.
write(
    "config_load",
    "regress_huge_env_index",
    '[[apps]]\nid = "a"\nkey = "k"\nsecret = "s"\n\0APPS__99999999999__CLIENT_EVENTS=false\n',
)


# ---- cluster_wire: encoded broker messages -----------------------------------------------

def s(v):
    v = v.encode() if isinstance(v, str) else v
    return struct.pack(">I", len(v)) + v


def opt(v):
    return b"\x00" if v is None else b"\x01" + s(v)


def msg(kind, body=b"", node=0x0123456789ABCDEF):
    return bytes([kind]) + struct.pack(">Q", node) + body


u32 = lambda n: struct.pack(">I", n)
ws_frame = b"\x81\x05hello"
wire = {
    "heartbeat": msg(1, u32(2) + s("app") + u32(3) + s("b") + u32(0)),
    "leaving": msg(2),
    "hello": msg(3),
    "publish": msg(4, s("app") + s("presence-\u00e9") + s(ws_frame) + opt("1.2") + opt(None) + struct.pack(">Q", 0)),
    "publish_cache": msg(
        4, s("app") + s("cache-x") + s(ws_frame) + opt(None) + opt('{"k":1}') + struct.pack(">Q", 1_700_000_000_000_000)
    ),
    "to_user": msg(5, s("app") + s("u1") + s(ws_frame) + opt(None)),
    "terminate": msg(6, s("app") + s("u1")),
    "change_subscribed": msg(7, s("app") + b"\x01" + s("c")),
    "change_joined": msg(7, s("app") + b"\x03" + s("presence-a") + s("7") + s("7") + opt("{}")),
    "change_left": msg(7, s("app") + b"\x04" + s("presence-a") + s("7")),
    "change_signed_out": msg(7, s("app") + b"\x06" + s("u")),
    "snapshot": msg(
        8,
        struct.pack(">HH", 1, 2)
        + u32(3)
        + b"\x01" + s("a") + s("c") + u32(4)
        + b"\x02" + s("a") + s("presence-c") + s("u") + s('"u"') + opt(None) + u32(2)
        + b"\x03" + s("a") + s("u") + u32(1),
    ),
}
for name, raw in wire.items():
    write("cluster_wire", name, raw)

if __name__ == "__main__":
    for t in sorted(os.listdir(SEEDS)):
        print(t, len(os.listdir(os.path.join(SEEDS, t))))
