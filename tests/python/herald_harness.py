"""Starts the real herald binary on free 127.0.0.1 ports with a temp TOML config,
and gives tests the official Python SDK and raw WebSockets pointed at it."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pusher
import websocket

HOST = "127.0.0.1"
HERE = os.path.dirname(os.path.abspath(__file__))
HERALD_BIN = os.path.abspath(
    os.environ.get("HERALD_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "herald"))
TIMEOUT = float(os.environ.get("CONFORMANCE_TIMEOUT_S", "3"))

# The Python SDK only accepts numeric app ids.
APPS = {
    "main": {"id": "101", "key": "pykey1", "secret": "pysecret1", "client_events": True},
    "extras": {"id": "102", "key": "pykey2", "secret": "pysecret2",
               "subscription_count_events": True, "watchlist_events": True, "cache_ttl": 60},
}


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(v)


def config_toml(port, admin_port):
    out = ["[server]", f'listen = "{HOST}:{port}"', f'admin_listen = "{HOST}:{admin_port}"',
           "activity_timeout = 120"]
    for app in APPS.values():
        out.append("")
        out.append("[[apps]]")
        out.extend(f"{k} = {_toml_value(v)}" for k, v in app.items())
    return "\n".join(out) + "\n"


def herald_env():
    """herald reads every HERALD_* variable as a config override (and rejects unknown
    keys), so none of the caller's may leak in: the temp file is the only config."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("HERALD_")}
    env.setdefault("RUST_LOG", "info")
    return env


class Herald:
    def __init__(self):
        self.proc = None
        self.dir = None

    def start(self):
        if not os.path.exists(HERALD_BIN):
            raise RuntimeError(f"herald binary not found at {HERALD_BIN} (build it or set HERALD_BIN)")
        last = None
        for _ in range(3):  # retry on a port race with another process
            try:
                self._start_once()
                return self
            except RuntimeError as e:
                last = e
                if "in use" not in str(e).lower():
                    raise
        raise last

    def _start_once(self):
        self.port = _free_port()
        self.admin_port = _free_port()
        while self.admin_port == self.port:
            self.admin_port = _free_port()
        self.dir = tempfile.mkdtemp(prefix="herald-py-")
        self.config_path = os.path.join(self.dir, "herald.toml")
        with open(self.config_path, "w") as f:
            f.write(config_toml(self.port, self.admin_port))
        self.log_path = os.path.join(self.dir, "herald.log")
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([HERALD_BIN, "--config", self.config_path],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=herald_env())
        log.close()
        deadline = time.time() + 15
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herald exited early ({self.proc.returncode}); log:\n{self.read_log()}")
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    break
            except OSError:
                pass
            if time.time() > deadline:
                self.proc.kill()
                raise RuntimeError(f"herald did not listen on {self.port} within 15 s; log:\n{self.read_log()}")
            time.sleep(0.05)

    def read_log(self):
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.dir and os.environ.get("CONFORMANCE_KEEP_LOGS") != "1":
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- clients ------------------------------------------------------------

    def sdk(self, app="main", **overrides):
        a = APPS[app]
        kw = dict(app_id=a["id"], key=a["key"], secret=a["secret"], ssl=False, host=HOST,
                  port=self.port, timeout=5)
        kw.update(overrides)
        return pusher.Pusher(**kw)

    def ws(self, app="main"):
        return RawWS(self.port, APPS[app]["key"])


class RawWS:
    """A raw Pusher-protocol WebSocket that records every frame (parsed JSON)."""

    def __init__(self, port, key):
        url = f"ws://{HOST}:{port}/app/{key}?protocol=7&client=python-conformance&version=0.1&flash=false"
        self.sock = websocket.create_connection(url, timeout=TIMEOUT)
        self.frames = []
        self.closed = None
        est = self.next(lambda f: f.get("event") == "pusher:connection_established",
                        what="connection_established")
        self.socket_id = json.loads(est["data"])["socket_id"]

    def _read_one(self, timeout):
        self.sock.settimeout(max(timeout, 0.01))
        try:
            op, data = self.sock.recv_data(control_frame=False)
        except websocket.WebSocketTimeoutException:
            return False
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            self.closed = self.closed or {"code": None}
            return False
        if op == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            self.closed = {"code": code, "reason": data[2:].decode("utf-8", "replace")}
            return False
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        try:
            self.frames.append(json.loads(text))
        except ValueError:
            self.frames.append({"raw": text})
        return True

    def next(self, pred, timeout=TIMEOUT, start=0, what="frame"):
        """First frame (index >= start) matching pred; reads until found or timeout."""
        deadline = time.time() + timeout
        checked = start
        while True:
            for i in range(checked, len(self.frames)):
                if pred(self.frames[i]):
                    return self.frames[i]
            checked = max(checked, len(self.frames))
            left = deadline - time.time()
            if left <= 0 or self.closed:
                raise AssertionError(f"timed out waiting for {what}; frames: {json.dumps(self.frames)}; "
                                     f"closed: {self.closed}")
            self._read_one(left)

    def wait_close(self, timeout=TIMEOUT):
        deadline = time.time() + timeout
        while not self.closed:
            left = deadline - time.time()
            if left <= 0:
                raise AssertionError(f"timed out waiting for close; frames: {json.dumps(self.frames)}")
            self._read_one(left)
        return self.closed

    def send(self, obj):
        self.sock.send(obj if isinstance(obj, str) else json.dumps(obj))

    def ping(self):
        start = len(self.frames)
        self.send({"event": "pusher:ping", "data": {}})
        return self.next(lambda f: f.get("event") == "pusher:pong", start=start, what="pusher:pong")

    def subscribe(self, channel, **extra):
        start = len(self.frames)
        self.send({"event": "pusher:subscribe", "data": {"auth": "", **extra, "channel": channel}})
        return self.next(lambda f: f.get("event") == "pusher_internal:subscription_succeeded"
                         and f.get("channel") == channel, start=start,
                         what=f"subscription_succeeded for {channel}")

    def events(self, name):
        return [f for f in self.frames if f.get("event") == name]

    def close(self):
        try:
            self.sock.close()
        except Exception:
            pass
