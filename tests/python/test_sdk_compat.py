"""ringpush against the Python server SDK (pusher-http-python) and the pysher client."""
import json

import pytest
from pusher.errors import PusherBadAuth, PusherBadRequest, PusherBadStatus
from pusher.http import POST, Request

from conftest import disconnect, parse, shard_of, subscribe, uniq, wait_until


def test_pysher_connects_and_gets_pong(server):
    client = server.pysher()
    # pysher pings right after the socket opens, with "data": "" (a string, not an object)
    client.inbox.wait_event(None, "pusher:pong")
    assert client.connection.state == "connected"
    disconnect(client)


def test_trigger_reaches_pysher_subscriber(server):
    client = server.pysher()
    name = uniq("py-public-")
    subscribe(client, name)
    payload = {"id": 7, "text": "h\u00e9llo \"q\" \\ \u2603"}
    assert server.sdk().trigger(name, "created", payload) == {}
    assert parse(client.inbox.wait_event(name, "created")) == payload
    disconnect(client)


def test_trigger_several_channels_with_socket_id_exclusion(server):
    a, b = server.pysher_on_distinct_shards(2)
    assert shard_of(a.connection.socket_id, server.workers) != shard_of(b.connection.socket_id, server.workers)
    n1, n2 = uniq("py-multi-a-"), uniq("py-multi-b-")
    for c in (a, b):
        subscribe(c, n1)
        subscribe(c, n2)
    sdk = server.sdk()
    assert sdk.trigger([n1, n2], "fan", {"k": 1}, socket_id=a.connection.socket_id) == {}
    assert parse(b.inbox.wait_event(n1, "fan")) == {"k": 1}
    assert parse(b.inbox.wait_event(n2, "fan")) == {"k": 1}
    sdk.trigger(n1, "marker", {})
    a.inbox.wait_event(n1, "marker")
    assert a.inbox.events(n1, "fan") == [] and a.inbox.events(n2, "fan") == []
    disconnect(a)
    disconnect(b)


def test_trigger_batch(server):
    client = server.pysher()
    n1, n2 = uniq("py-batch-1-"), uniq("py-batch-2-")
    subscribe(client, n1)
    subscribe(client, n2)
    res = server.sdk().trigger_batch([
        {"channel": n1, "name": "one", "data": {"i": 1}},
        {"channel": n2, "name": "two", "data": "plain"},
    ])
    assert res == {}
    assert parse(client.inbox.wait_event(n1, "one")) == {"i": 1}
    assert client.inbox.wait_event(n2, "two") == "plain"
    disconnect(client)


def test_channels_info_with_prefix_filter(server):
    prefix = uniq("py-pfx") + "-"
    client = server.pysher()
    subscribe(client, prefix + "x")
    subscribe(client, prefix + "y")
    subscribe(client, uniq("py-elsewhere-"))
    want = {"channels": {prefix + "x": {}, prefix + "y": {}}}
    # Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    # consistent by design); wait until every node agrees. A no-op on one server.
    server.wait_replicated(lambda sdk: _assert_eq(sdk.channels_info(prefix_filter=prefix), want))
    res = server.sdk().channels_info(prefix_filter=prefix)
    assert res == want
    disconnect(client)


def test_channels_info_presence_user_count(server):
    prefix = uniq("presence-py") + "-"
    a = server.pysher(user_data={"user_id": "py-u1", "user_info": {"n": 1}})
    b = server.pysher(user_data={"user_id": "py-u2", "user_info": {"n": 2}})
    subscribe(a, prefix + "room")
    subscribe(b, prefix + "room")
    want = {"channels": {prefix + "room": {"user_count": 2}}}
    # Cluster mode: the joins reach the other nodes' replicas a moment later (eventually
    # consistent by design); wait until every node agrees. A no-op on one server.
    server.wait_replicated(
        lambda sdk: _assert_eq(sdk.channels_info(prefix_filter=prefix, attributes=["user_count"]), want))
    res = server.sdk().channels_info(prefix_filter=prefix, attributes=["user_count"])
    assert res == want
    disconnect(a)
    disconnect(b)


def test_channel_info(server):
    name = uniq("py-info-")
    a, b = server.pysher_on_distinct_shards(2)
    subscribe(a, name)
    subscribe(b, name)
    want = {"occupied": True, "subscription_count": 2}
    # Cluster mode: subscriptions reach the other nodes' replicas a moment later (eventually
    # consistent by design); wait until every node agrees. A no-op on one server.
    server.wait_replicated(lambda sdk: _assert_eq(sdk.channel_info(name, ["subscription_count"]), want))
    sdk = server.sdk()
    assert sdk.channel_info(name, ["subscription_count"]) == want
    assert sdk.channel_info(name) == {"occupied": True}
    assert sdk.channel_info(uniq("py-nobody-")) == {"occupied": False}
    disconnect(a)
    disconnect(b)


def test_channel_info_presence_and_users_info(server):
    name = uniq("presence-py-users-")
    a = server.pysher(user_data={"user_id": "py-alice", "user_info": {"name": "Alice"}})
    b1 = server.pysher(user_data={"user_id": "py-bob", "user_info": {"name": "Bob"}})
    b2 = server.pysher(user_data={"user_id": "py-bob", "user_info": {"name": "Bob"}})
    subscribe(a, name)
    subscribe(b1, name)
    # Cluster mode: the joins reach the other nodes' replicas a moment later (eventually
    # consistent by design); wait until every node lists both users before the second tab of
    # py-bob joins, wherever it lands. A no-op on one server.
    server.wait_replicated(lambda sdk: _assert_eq(
        sorted(str(u["id"]) for u in sdk.users_info(name)["users"]), ["py-alice", "py-bob"]))
    subscribe(b2, name)
    succeeded = json.loads(b2.inbox.events(name, "pusher_internal:subscription_succeeded")[0])
    assert succeeded["presence"]["count"] == 2
    assert sorted(str(i) for i in succeeded["presence"]["ids"]) == ["py-alice", "py-bob"]
    assert succeeded["presence"]["hash"]["py-alice"] == {"name": "Alice"}
    sdk = server.sdk()
    assert sdk.channel_info(name, ["user_count"]) == {"occupied": True, "user_count": 2}
    users = sdk.users_info(name)
    assert sorted(str(u["id"]) for u in users["users"]) == ["py-alice", "py-bob"]
    disconnect(a)
    disconnect(b1)
    disconnect(b2)


def test_users_info_on_non_presence_is_bad_request(server):
    client = server.pysher()
    name = uniq("py-notpresence-")
    subscribe(client, name)
    with pytest.raises(PusherBadRequest):
        server.sdk().users_info(name)
    disconnect(client)


def test_wrong_secret_is_rejected(server):
    bad = server.sdk(secret="not-the-secret")
    with pytest.raises(PusherBadAuth):
        bad.trigger("py-any", "x", {})
    with pytest.raises(PusherBadAuth):
        bad.channels_info()


def test_private_channel_and_client_events_with_pysher(server):
    name = uniq("private-py-chat-")
    a, b = server.pysher_on_distinct_shards(2)
    cha = subscribe(a, name)
    subscribe(b, name)
    cha.trigger("client-ping", {"from": "a"})
    assert b.inbox.wait_event(name, "client-ping") == {"from": "a"}
    server.sdk().trigger(name, "marker", {})
    a.inbox.wait_event(name, "marker")
    assert a.inbox.events(name, "client-ping") == [], "client events must not echo"
    disconnect(a)
    disconnect(b)


def test_private_channel_bad_auth_is_refused(server):
    client = server.pysher()
    name = uniq("private-py-denied-")
    client.subscribe(name, auth="%s:%s" % (server.app()["key"], "0" * 64))
    err = client.inbox.wait_event(None, "pusher:error")
    # The protocol allows code null (what the real service sends) or 4009. Note: pysher treats
    # any pusher:error code in 4000-4099 as fatal and closes the socket itself, so only a null
    # code keeps a pysher connection alive after a refused subscription.
    assert err.get("code") in (None, 4009), err
    assert "message" in err
    assert client.inbox.events(name, "pusher_internal:subscription_succeeded") == []
    assert server.sdk().channel_info(name) == {"occupied": False}
    disconnect(client)


def _assert_eq(got, want):
    assert got == want, "got %r, want %r" % (got, want)


def _signin(server, client, user_data):
    """Sign a pysher connection in: the auth comes from the SDK's authenticate_user."""
    auth = server.sdk().authenticate_user(client.connection.socket_id, user_data)
    client.connection.send_event("pusher:signin", auth)
    data = client.inbox.wait_event(None, "pusher:signin_success")
    data = parse(data)
    assert json.loads(data["user_data"])["id"] == user_data["id"]
    # pusher-js does this after sign-in; with pysher we subscribe by hand
    subscribe(client, "#server-to-user-%s" % user_data["id"], auth="")


def test_send_to_user(server):
    uid = uniq("py-user-")
    client = server.pysher()
    _signin(server, client, {"id": uid, "user_info": {"x": 1}})
    assert server.sdk().send_to_user(uid, "hello", {"to": uid}) == {}
    assert parse(client.inbox.wait_event("#server-to-user-" + uid, "hello")) == {"to": uid}
    disconnect(client)


def test_terminate_user_connections_sdk_method(server):
    """The SDK method as shipped. pusher-http-python 3.3.4 POSTs to
    /users/<id>/terminate_connections (no /apps/<app_id> prefix), signed over that path."""
    uid = uniq("py-term-")
    victim = server.pysher()
    keep = server.pysher()
    _signin(server, victim, {"id": uid})
    _signin(server, keep, {"id": uniq("py-keep-")})
    try:
        res = server.sdk().terminate_user_connections(uid)
    except PusherBadStatus as e:
        pytest.fail("pusher-http-python's terminate_user_connections() POSTs to "
                    "/users/%s/terminate_connections (no /apps/<id> prefix); the server answered %s"
                    % (uid, e))
    assert res == {}
    err = victim.inbox.wait_event(None, "pusher:error")
    assert err.get("code") == 4009, err
    wait_until(lambda: victim.connection.state == "disconnected", what="victim socket closed")
    subscribe(keep, uniq("py-keep-alive-"))
    disconnect(keep)


def test_terminate_user_connections_canonical_path(server):
    """Same call on the documented path /apps/<app_id>/users/<id>/terminate_connections,
    built and signed by the SDK's own Request class."""
    uid = uniq("py-term2-")
    victim = server.pysher()
    _signin(server, victim, {"id": uid})
    client = server.sdk()._pusher_client
    req = Request(client, POST, "/apps/%s/users/%s/terminate_connections" % (client.app_id, uid), {})
    assert client.http.send_request(req) == {}
    err = victim.inbox.wait_event(None, "pusher:error")
    assert err.get("code") == 4009, err
    wait_until(lambda: victim.connection.state == "disconnected", what="victim socket closed")


def test_unknown_app_is_not_found(server):
    ghost = server.sdk(id="9999")
    with pytest.raises(PusherBadStatus) as info:
        ghost.trigger("py-any", "x", {})
    assert "404" in str(info.value)


def test_private_encrypted_payload_is_forwarded_unchanged(server):
    """The SDK encrypts for private-encrypted- channels; the server must relay the envelope
    untouched, so the subscriber can open it with the shared secret from authenticate()."""
    import base64

    import nacl.secret

    name = uniq("private-encrypted-py-")
    client = server.pysher()
    sdk = server.sdk()
    auth = sdk.authenticate(name, client.connection.socket_id)
    assert "shared_secret" in auth
    subscribe(client, name, auth=auth["auth"])
    payload = {"card": "4242", "note": "secret"}
    assert sdk.trigger(name, "enc", payload) == {}
    envelope = parse(client.inbox.wait_event(name, "enc"))
    assert set(envelope) == {"nonce", "ciphertext"}
    box = nacl.secret.SecretBox(base64.b64decode(auth["shared_secret"]))
    plain = box.decrypt(base64.b64decode(envelope["ciphertext"]), base64.b64decode(envelope["nonce"]))
    assert json.loads(plain.decode()) == payload
    disconnect(client)


def test_server_pings_silent_pysher_and_accepts_its_pong(fast_server):
    """pysher pings only every 120 s; with activity_timeout = 1 the server pings it, pysher
    answers {"event":"pusher:pong","data":""} and the connection must survive pong_timeout."""
    client = fast_server.pysher()
    established = json.loads(client.inbox.wait_event(None, "pusher:connection_established"))
    assert established["activity_timeout"] == 1
    client.connection.bind("pusher:ping", lambda data: client.inbox.add(None, "pusher:ping", data))
    name = uniq("py-alive-")
    subscribe(client, name)
    # two server pings in a row prove the first pong was accepted (else 4201 close)
    client.inbox.wait_for(lambda it: it[1] == "pusher:ping", timeout=6, what="first server ping")
    client.inbox.wait_for(
        lambda it: sum(1 for x in client.inbox.items if x[1] == "pusher:ping") >= 2,
        timeout=8, what="second server ping")
    assert client.connection.state == "connected"
    assert fast_server.sdk().trigger(name, "still-here", {}) == {}
    client.inbox.wait_event(name, "still-here")
    disconnect(client)
