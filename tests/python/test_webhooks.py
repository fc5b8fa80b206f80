"""Webhooks from ringpush, validated with the official Python SDK (`validate_webhook`), which
checks the key, the HMAC signature, the JSON body and that time_ms is within 300 s."""
import http.server
import json
import os
import threading
import time

import pytest

from conftest import Server, disconnect, subscribe, uniq


def wait_until(fn, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timeout waiting for " + what)
        time.sleep(0.02)


class _Receiver:
    def __init__(self):
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length).decode()
                outer.requests.append((dict((k.lower(), v) for k, v in self.headers.items()), body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hook" % self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def find(self, name, channel):
        for headers, body in list(self.requests):
            for e in json.loads(body)["events"]:
                if e["name"] == name and e["channel"] == channel:
                    return headers, body
        return None

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def hooked():
    rec = _Receiver()
    app = {
        "id": "3001",
        "key": "hook-key",
        "secret": "hook-secret",
        "webhook_delay": 1,
    }
    # The webhook list goes through the environment override (RINGPUSH_APPS__0__WEBHOOKS),
    # which also exercises that configuration path.
    os.environ["RINGPUSH_APPS__0__WEBHOOKS"] = '[{ url = "%s" }]' % rec.url
    try:
        srv = Server(apps=[app]).start()
    finally:
        del os.environ["RINGPUSH_APPS__0__WEBHOOKS"]
    yield srv, rec
    srv.stop()
    rec.close()


def test_validate_webhook_accepts_ringpush_requests(hooked):
    srv, rec = hooked
    client = srv.pysher()
    name = uniq("py-hook-")
    subscribe(client, name)
    found = wait_until(lambda: rec.find("channel_occupied", name), what="channel_occupied webhook")
    headers, body = found
    assert headers["content-type"] == "application/json"
    sdk = srv.sdk()
    result = sdk.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body)
    assert result is not None, "the SDK rejected the webhook"
    assert abs(result["time_ms"] / 1000.0 - time.time()) < 300
    assert {"name": "channel_occupied", "channel": name} in result["events"]
    # Tampering with the body or using another secret must fail validation.
    assert sdk.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body + " ") is None
    other = srv.sdk(secret="wrong-secret")
    assert other.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body) is None

    disconnect(client)
    headers, body = wait_until(lambda: rec.find("channel_vacated", name), what="channel_vacated webhook")
    result = sdk.validate_webhook(headers["x-pusher-key"], headers["x-pusher-signature"], body)
    assert result is not None
    assert {"name": "channel_vacated", "channel": name} in result["events"]

    # Each event reaches the receiver once (in a cluster, one node sends a channel's webhooks):
    # give a duplicate a moment to show up, then count.
    time.sleep(0.5)
    names = [e["name"] for _, body in list(rec.requests) for e in json.loads(body)["events"]
             if e["channel"] == name]
    assert sorted(names) == ["channel_occupied", "channel_vacated"], names
