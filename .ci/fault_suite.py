#!/usr/bin/env python3
"""Fault and attack suite for stage 3, run against the real executables (release builds).

Each scenario starts its own stage3-server and stage3-client on free loopback ports, a local
app (an HTTP server inside this script), and a canary user that fetches a small page through
the tunnel every 0.5 s. Then it breaks something: kills, pauses, floods, guesses, junk. It
checks that the canary keeps getting through (or that its outage is bounded and expected),
that the scenario's own expectation holds (a reset, a refusal, a log line), and that the
server's and the client's descriptors and threads return to their baseline afterwards.
A table at the end says what was tried and what held; the exit status is 1 if anything failed.

Attacks come from 127.0.0.2 (Linux routes all of 127.0.0.0/8 to lo), the canary and the client
from 127.0.0.1, so the per-address limits can show that one address cannot take another's room;
one scenario attacks from 127.0.0.1 to show the documented limit of that defence.

Usage: .ci/fault-suite [--no-build] [--only a,b] [--skip a,b] [--keep-logs] [--list]
Linux only (it reads /proc). Needs root for the thread-limit scenario (a pids cgroup); without
one that scenario is skipped, except with CI=true, where a skip is a failure.
"""
import argparse
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CI = os.environ.get("CI") == "true"
ATTACKER = "127.0.0.2"
CANARY_BODY = b"canary-" + os.urandom(4).hex().encode()
BIG_SIZE = 50 * 1024 * 1024
SUITE_LIMIT = 600  # seconds: past this the suite interrupts itself (and cleans up)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
T0 = time.monotonic()
BIN = {}  # "server"/"client" -> path, set after the build


def say(message):
    print(f"[{time.monotonic() - T0:6.1f}s] {message}", flush=True)


class Failed(Exception):
    """An expectation that makes the rest of a scenario pointless."""


class Skipped(Exception):
    """The scenario cannot run on this machine."""


def wait_for(predicate, timeout, step=0.05):
    """Polls `predicate` until it returns something true or `timeout` seconds pass."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= end:
            return value
        time.sleep(step)


def free_ports(count):
    """Ports the kernel says are free now (bound to port 0, read back, released)."""
    sockets = []
    for _ in range(count):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# ---------------------------------------------------------------- processes, by PID

PROCS = []


class Proc:
    """One executable, its output in a log file, stopped by PID."""

    def __init__(self, name, argv, logdir, env=None):
        self.name = name
        self.path = os.path.join(logdir, f"{name}.log")
        self.log = open(self.path, "ab")
        self.popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT,
                                      env=env, start_new_session=True)  # Ctrl-C is ours to pass on, not theirs
        self.pid = self.popen.pid
        PROCS.append(self)

    def alive(self):
        return self.popen.poll() is None

    def size(self):
        return os.path.getsize(self.path)

    def text(self, start=0):
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read().decode("utf-8", "replace")

    def wait_line(self, pattern, timeout, start=0):
        """The first match of `pattern` in the log after byte `start`, waiting up to `timeout` s."""
        return wait_for(lambda: re.search(pattern, self.text(start)), timeout)

    def count(self, pattern, start=0):
        return len(re.findall(pattern, self.text(start)))

    def tail(self, lines=8):
        return "\n".join("    " + line for line in self.text().splitlines()[-lines:])

    def fds(self):
        try:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        except OSError:
            return None

    def threads(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("Threads:"):
                        return int(line.split()[1])
        except OSError:
            return None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self):
        """Interrupt (as Ctrl-C would), then kill if it has not exited within 5 s."""
        if self.alive():
            os.kill(self.pid, signal.SIGCONT)  # a stopped process cannot handle SIGINT
            os.kill(self.pid, signal.SIGINT)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        self.log.close()


def stop_all_processes():
    for proc in PROCS:
        try:
            proc.stop()
        except Exception as error:  # keep cleaning up the others
            print(f"fault-suite: could not stop {proc.name} (pid {proc.pid}): {error}", file=sys.stderr)
    PROCS.clear()


# ---------------------------------------------------------------- the local app

class App:
    """The app behind the tunnel: /canary answers a short body, /big streams 50 MB with a length."""

    def __init__(self):
        self.port = free_ports(1)[0]
        self.server = None

    def start(self):
        class Handler(BaseHTTPRequestHandler):
            timeout = 60  # a silent user joined to the app holds one of our threads at most this long

            def do_GET(self):
                body = CANARY_BODY if self.path != "/big" else None
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) if body else BIG_SIZE))
                self.end_headers()
                if body:
                    self.wfile.write(body)
                    return
                chunk = b"b" * (256 * 1024)
                for _ in range(BIG_SIZE // len(chunk)):
                    self.wfile.write(chunk)

            def handle(self):
                try:
                    super().handle()
                except OSError:  # users cut off mid-answer are what this suite is about
                    pass

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request, client_address):
                pass

        self.server = Server(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def stop(self):
        if self.server:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


# ---------------------------------------------------------------- the canary user

class Canary:
    """Fetches /canary through the tunnel every 0.5 s and records (start, end, ok, error)."""

    def __init__(self, port):
        self.port = port
        self.records = []
        self.busy = threading.Lock()
        self.paused = threading.Event()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def probe(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=3) as s:
                s.settimeout(3)
                s.sendall(b"GET /canary HTTP/1.0\r\n\r\n")
                data, end = b"", time.monotonic() + 3
                while time.monotonic() < end:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            if data.startswith(b"HTTP/1.0 200") and data.endswith(CANARY_BODY):
                return None
            return f"reply {data[:30]!r}" if data else "closed without a reply"
        except OSError as error:
            return str(error) or type(error).__name__

    def loop(self):
        while not self.done.is_set():
            start = time.monotonic()
            if not self.paused.is_set():
                with self.busy:
                    error = self.probe()
                    self.records.append((start, time.monotonic(), error is None, error))
            self.done.wait(max(0.0, 0.5 - (time.monotonic() - start)))

    def pause(self):
        self.paused.set()
        with self.busy:  # wait out a probe in flight
            pass

    def resume(self):
        self.paused.clear()

    def stop(self):
        self.done.set()
        self.thread.join(5)

    def success_after(self, moment, timeout):
        """Waits for a probe that started after `moment` and succeeded; its start time, or None."""
        def find():
            return next((r[0] for r in list(self.records) if r[0] >= moment and r[2]), None)
        return wait_for(find, timeout)


# ---------------------------------------------------------------- descriptors and threads

class Meter:
    """Samples each watched process's descriptors and threads every 0.1 s and keeps the peaks."""

    def __init__(self):
        self.watched = {}  # role -> Proc
        self.peak = {}  # role -> [fds, threads]
        self.tcp_memory_peak = 0  # the whole machine's, in pages
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def watch(self, role, proc):
        with self.lock:
            self.watched[role] = proc

    def loop(self):
        while not self.done.wait(0.1):
            self.sample()

    def sample(self):
        """Samples now too: a state that lasts less than 0.1 s still shows in the peaks."""
        self.tcp_memory_peak = max(self.tcp_memory_peak, tcp_memory_pages())
        with self.lock:
            for role, proc in self.watched.items():
                fds, threads = proc.fds(), proc.threads()
                peak = self.peak.setdefault(role, [0, 0])
                peak[0] = max(peak[0], fds or 0)
                peak[1] = max(peak[1], threads or 0)

    def stop(self):
        self.done.set()
        self.thread.join(2)


def sample(proc):
    return proc.fds(), proc.threads()


def settled(proc, timeout=5):
    """Descriptors and threads once two samples 0.3 s apart agree (the baseline)."""
    last = sample(proc)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.3)
        now = sample(proc)
        if now == last:
            return now
        last = now
    return last


def tcp_memory_pages():
    """Pages of memory the kernel's TCP sockets hold now (/proc/net/sockstat, 'TCP: ... mem N')."""
    with open("/proc/net/sockstat") as f:
        match = re.search(r"^TCP:.* mem (\d+)", f.read(), re.M)
    return int(match.group(1)) if match else 0


def close_wait_on(ports):
    """Sockets in CLOSE-WAIT whose local port is one of `ports`: a peer left, nobody closed ours."""
    out = subprocess.run(["ss", "-tanH", "state", "close-wait"], capture_output=True, text=True, timeout=10).stdout
    # Each line: Recv-Q Send-Q Local-Address:Port Peer-Address:Port (a state filter drops the State column).
    return sum(1 for line in out.splitlines() if int(line.split()[-2].rsplit(":", 1)[1]) in ports)


# ---------------------------------------------------------------- attackers

def open_silent(count, port, source, timeout=1.0, give_up_after=10):
    """Opens up to `count` connections from `source` that never send a byte. Stops early after
    `give_up_after` connects in a row time out (the server's backlog is full)."""
    sockets, timeouts = [], 0
    for _ in range(count):
        s = socket.socket()
        try:
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)  # pick the port at connect: 4-tuple unique
            s.bind((source, 0))
            s.settimeout(timeout)
            s.connect(("127.0.0.1", port))
            sockets.append(s)
            timeouts = 0
        except socket.timeout:
            s.close()
            timeouts += 1
            if timeouts >= give_up_after:
                break
        except OSError:  # refused, or reset during the handshake: not held
            s.close()
    return sockets


def closed_by_peer(sockets):
    """How many of `sockets` the other side has closed or reset, by their TCP state (the first
    byte of TCP_INFO): anything but ESTABLISHED, even with unread data still queued."""
    established = 1
    return sum(1 for s in sockets if s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != established)


def close_all(sockets):
    for s in sockets:
        s.close()
    sockets.clear()


def exchange(port, payload, source="127.0.0.1", timeout=3.0):
    """Connects from `source`, sends `payload`, reads until the server closes; (reply, how it ended)."""
    with socket.socket() as s:
        s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        s.bind((source, 0))
        s.settimeout(timeout)
        s.connect(("127.0.0.1", port))
        s.sendall(payload)
        reply, end = b"", time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                chunk = s.recv(4096)
                if not chunk:
                    return reply, "closed"
                reply += chunk
        except ConnectionResetError:
            return reply, "reset"
        except socket.timeout:
            pass
        return reply, "still open"


# ---------------------------------------------------------------- one scenario

class Scenario:
    """What one scenario started, what it expects, and what it saw."""

    def __init__(self, name, logdir, app):
        self.name = name
        self.logdir = logdir
        self.app = app
        self.problems = []
        self.notes = []
        self.procs = {}  # role -> Proc currently in that role
        self.base = {}  # role -> (fds, threads)
        self.after = {}
        self.meter = Meter()
        self.canary = None
        self.outages = []  # (start, end): canary failures inside are expected
        self.sockets = []  # attackers' sockets, closed at cleanup
        self.cleanups = []
        self.ports = dict(zip(("control", "public", "proxy"), free_ports(3)))
        self.secret = None
        self.started = 0

    # -- expectations
    def expect(self, condition, problem):
        if not condition:
            self.problems.append(problem)
        return condition

    def note(self, text):
        self.notes.append(text)

    # -- processes
    def start_server(self, *args, prefix=(), role="server"):
        env = {k: v for k, v in os.environ.items() if k != "TUNNEL_SECRET"}
        if self.secret:
            env["TUNNEL_SECRET"] = self.secret
        self.started += 1
        argv = [*prefix, BIN["server"], "--control-port", str(self.ports["control"]),
                "--public-port", str(self.ports["public"]), "--proxy-port", str(self.ports["proxy"]), *args]
        proc = Proc(f"{self.name}.server{self.started}", argv, self.logdir, env)
        if not proc.wait_line(r"listening: control", 10):
            raise Failed(f"the server did not start:\n{proc.tail()}")
        self.procs[role] = proc
        self.meter.watch(role, proc)
        return proc

    def start_client(self, *args, role="client", app_port=None):
        env = {k: v for k, v in os.environ.items() if k != "TUNNEL_SECRET"}
        if self.secret:
            env["TUNNEL_SECRET"] = self.secret
        self.started += 1
        # Pings every second, so a server run with a short --timeout does not drop a healthy client.
        argv = [BIN["client"], f"127.0.0.1:{app_port or self.app.port}", "--control-port", str(self.ports["control"]),
                "--proxy-port", str(self.ports["proxy"]), "--interval", "1s", "--timeout", "4s", *args]
        proc = Proc(f"{self.name}.client{self.started}", argv, self.logdir, env)
        if not proc.wait_line(r"registered with server", 10):
            raise Failed(f"the client did not register:\n{proc.tail()}")
        self.procs[role] = proc
        self.meter.watch(role, proc)
        return proc

    @property
    def server(self):
        return self.procs["server"]

    @property
    def client(self):
        return self.procs["client"]

    def up(self, *server_args, prefix=(), client_args=(), app_port=None):
        """Server, client, canary (two good probes), and the baseline of both processes."""
        self.start_server(*server_args, prefix=prefix)
        self.start_client(*client_args, app_port=app_port)
        self.canary = Canary(self.ports["public"])
        if not self.canary.success_after(time.monotonic(), 5):
            raise Failed(f"the canary never got through; client log:\n{self.client.tail()}")
        self.canary.success_after(time.monotonic(), 3)
        self.measure_baseline()

    def measure_baseline(self):
        self.canary.pause()
        for role, proc in self.procs.items():
            self.base[role] = settled(proc)
        with self.meter.lock:
            self.meter.peak = {role: list(base) for role, base in self.base.items()}
        self.canary.resume()

    def outage(self, start, end):
        self.outages.append((start, end))

    def attack(self, sockets):
        self.sockets.extend(sockets)
        return sockets

    # -- the end of every scenario
    def back_to_baseline(self, timeout=20):
        """Pauses the canary and waits for every watched process to return to its baseline."""
        if self.canary:
            self.canary.pause()
        for role, proc in self.procs.items():
            if role not in self.base:
                continue
            fds0, threads0 = self.base[role]
            if not proc.alive():
                self.problems.append(f"the {role} died (exit {proc.popen.returncode}):\n{proc.tail()}")
                continue
            def at_baseline():
                fds, threads = sample(proc)
                return fds is not None and fds <= fds0 and threads <= threads0
            wait_for(at_baseline, timeout, step=0.2)
            now = self.after[role] = sample(proc)
            self.expect(at_baseline(), f"the {role} did not return to its baseline within {timeout} s: "
                                       f"fds {fds0} -> {now[0]}, threads {threads0} -> {now[1]}")
        # A socket whose peer has gone but that nobody closed: the leak of the unfixed server.
        ports = set(self.ports.values())
        if not wait_for(lambda: close_wait_on(ports) == 0, timeout, step=0.5):
            self.problems.append(f"{close_wait_on(ports)} sockets left in CLOSE-WAIT on the server's ports")

    def canary_report(self):
        """'total' or 'total (unexpected N)', and the unexpected count."""
        if not self.canary:
            return "-", 0
        records = list(self.canary.records)
        failures = [r for r in records if not r[2]]
        unexpected = [r for r in failures if not any(r[1] >= a and r[0] <= b for a, b in self.outages)]
        for r in unexpected[:3]:
            self.problems.append(f"canary failed outside an expected outage: {r[3]}")
        text = f"{len(failures)}/{len(records)}"
        if unexpected:
            text += f" ({len(unexpected)} unexpected)"
        return text, len(unexpected)

    def close(self):
        close_all(self.sockets)
        if self.canary:
            self.canary.stop()
        self.meter.stop()
        for proc in list(self.procs.values()) + [p for p in PROCS if p.name.startswith(self.name + ".")]:
            proc.stop()
        for cleanup in reversed(self.cleanups):
            try:
                cleanup()
            except Exception as error:
                self.problems.append(f"cleanup failed: {error}")


# ---------------------------------------------------------------- the scenarios

def read_head(sock, deadline):
    """Reads an HTTP response head; (content length, the body bytes already read)."""
    data = b""
    while b"\r\n\r\n" not in data and time.monotonic() < deadline:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"Content-Length: (\d+)", head)
    if not match:
        raise Failed(f"no Content-Length in the app's answer: {head[:80]!r}")
    return int(match.group(1)), len(body)


def drain(sock, deadline):
    """Reads until the end; (bytes read, 'reset' | 'end of stream' | 'still open')."""
    total = 0
    sock.settimeout(1)
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return total, "reset"
        except socket.timeout:
            continue
        if not chunk:
            return total, "end of stream"
        total += len(chunk)
    return total, "still open"


def start_download(s, moment_limit=5):
    """A user that asks for /big, reads 1 MiB and then stops reading: a transfer in mid-flight."""
    user = socket.create_connection(("127.0.0.1", s.ports["public"]), timeout=5)
    user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
    user.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    deadline = time.monotonic() + moment_limit
    length, got = read_head(user, deadline)
    while got < (1 << 20) and time.monotonic() < deadline:
        chunk = user.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    if got < (1 << 20):
        raise Failed(f"the download did not start: {got} bytes")
    s.sockets.append(user)
    s.meter.sample()
    return user, length, got


def kill_client_mid_download(s):
    """kill -9 of the client mid-download: the server resets the users joined through it; a
    stalled reader sees that reset, one that keeps up may see an end of stream first, but always
    a short body (the Content-Length tells); a new client then serves the canary."""
    s.up()
    user, length, got = start_download(s)
    mark = s.server.size()
    killed = time.monotonic()
    s.client.signal(signal.SIGKILL)
    # Either of two lines, whichever the server sees first: the control connection's end (then it
    # resets the users still joined through it), or the end of this user's stream from a client
    # that is gone (the relay asks, finds the control connection ended, and resets the user).
    reset_line = s.server.wait_line(r"control connection from .* closed: .*reset (\d+) user|finished: .*not a clean end",
                                    10, mark)
    s.expect(reset_line, "the server did not log resetting the users joined through the lost client")
    more, ending = drain(user, time.monotonic() + 15)
    total = got + more
    s.expect(total < length, f"the user got the whole body ({total} bytes) from a killed client?")
    s.expect(ending == "reset", f"the user saw '{ending}' after {total} of {length} bytes, not a reset")
    s.note(f"stalled reader: {total >> 20} of {length >> 20} MiB, then {ending}")
    s.start_client()
    back = s.canary.success_after(time.monotonic(), 5)
    s.expect(back, "the canary did not get through the new client")
    s.outage(killed, back or time.monotonic())
    s.note(f"outage {((back or time.monotonic()) - killed):.1f} s (no client until the new one registered)")
    # A reader that keeps up: the dead client's proxy connection ends with a FIN, which the
    # server passes on before it learns the client is gone; then only the length tells.
    user = socket.create_connection(("127.0.0.1", s.ports["public"]), timeout=5)
    s.sockets.append(user)
    user.sendall(b"GET /big HTTP/1.0\r\n\r\n")
    deadline = time.monotonic() + 15
    length, got = read_head(user, deadline)
    while got < (1 << 20) and time.monotonic() < deadline:
        got += len(user.recv(1 << 20) or b"")
    killed = time.monotonic()
    s.client.signal(signal.SIGKILL)
    more, ending = drain(user, deadline)
    s.expect(got + more < length, f"a reader that kept up got the whole body ({got + more} bytes) from a killed client")
    s.note(f"reader that keeps up: {(got + more) >> 20} MiB, then {ending} (the short body tells)")
    s.start_client()
    back = s.canary.success_after(time.monotonic(), 5)
    s.expect(back, "the canary did not get through the third client")
    s.outage(killed, back or time.monotonic())


def kill_server_and_restart(s):
    """kill -9 of the server, restarted on the same ports 2 s later: the client reconnects alone."""
    s.up()
    base = s.base["server"]
    killed = time.monotonic()
    s.server.signal(signal.SIGKILL)
    s.server.popen.wait(5)
    time.sleep(2)  # the outage being measured: the server is down this long
    client_mark = s.client.size()
    s.start_server()
    s.base["server"] = base  # the new server must come back to the old one's baseline
    s.meter.peak["server"] = list(base)
    registered = s.client.wait_line(r"registered with server", 35, client_mark)
    s.expect(registered, "the client did not reconnect within 35 s (its back-off caps at 30 s)")
    back = s.canary.success_after(killed, 35)
    s.expect(back, "the canary never got through again")
    s.outage(killed, back or time.monotonic())
    retries = s.client.count(r"reconnecting in", client_mark - 2000 if client_mark > 2000 else 0)
    s.note(f"outage {((back or time.monotonic()) - killed):.1f} s with the server down 2 s; "
           f"client retries logged: {retries}")
    s.expect(back and back - killed < 10, "outage longer than 10 s for a 2 s server restart")


def app_down_and_back(s):
    """The local app stops for 3 s: users fail at once (no hang), and the next ones succeed."""
    s.up()
    mark = s.client.size()
    down = time.monotonic()
    s.app.stop()
    time.sleep(3)
    s.app.start()
    up = time.monotonic()
    back = s.canary.success_after(up, 5)
    s.expect(back, "the canary did not get through after the app came back")
    s.outage(down, back or time.monotonic())
    s.expect(s.client.count(r"unreachable", mark) > 0, "the client did not log the app as unreachable")
    failed = [r for r in s.canary.records if not r[2] and r[0] >= down]
    slow = [r for r in failed if r[1] - r[0] > 1]
    s.expect(not slow, f"{len(slow)} canary probes hung instead of failing fast while the app was down")
    s.note(f"{len(failed)} probes failed fast while the app was down; back {((back or up) - up):.1f} s after")


def sigstop_client(s):
    """SIGSTOP of the client past the server's 3 s heartbeat timeout, then SIGCONT: the users
    joined through it are reset, and the client reconnects by itself."""
    s.up("--timeout", "3s")
    user, length, got = start_download(s)
    mark, client_mark = s.server.size(), s.client.size()
    stopped = time.monotonic()
    s.client.signal(signal.SIGSTOP)
    reset_line = s.server.wait_line(r"closed: silent for .*reset (\d+) user", 8, mark)
    s.expect(reset_line, "the server did not drop the silent client and reset its joined user within 8 s")
    more, ending = drain(user, time.monotonic() + 5)
    s.expect(ending == "reset", f"the user saw '{ending}' after {got + more} of {length} bytes, not a reset")
    time.sleep(max(0.0, stopped + 5 - time.monotonic()))  # stopped 5 s in all
    s.client.signal(signal.SIGCONT)
    resumed = time.monotonic()
    registered = s.client.wait_line(r"registered with server", 10, client_mark)
    s.expect(registered, "the client did not register again within 10 s of SIGCONT")
    back = s.canary.success_after(resumed, 10)
    s.expect(back, "the canary did not get through after SIGCONT")
    s.outage(stopped, back or time.monotonic())
    s.note(f"stalled reader: {(got + more) >> 20} MiB, then {ending}; outage {((back or resumed) - stopped):.1f} s "
           f"(5 s stopped)")


def silent_flood(s, source, per_port=2000, hold=3):
    """2,000 silent connections on each port from `source`, held `hold` s, then closed."""
    s.up()
    mark = s.server.size()
    begun = time.monotonic()
    held = {}
    for name in ("control", "public", "proxy"):
        sockets = s.attack(open_silent(per_port, s.ports[name], source))
        held[name] = sockets
    time.sleep(hold)
    summary = []
    for name, sockets in held.items():
        closed = closed_by_peer(sockets)
        summary.append(f"{name} {len(sockets) - closed}/{len(sockets)} held")
    close_all(s.sockets)
    ended = time.monotonic()
    over = s.server.count(r"closed at once", mark)
    left_out = sum(int(n) for n in re.findall(r"\((\d+) more line", s.server.text(mark)))
    s.note("; ".join(summary) + f"; server log: {over} 'closed at once' lines + {left_out} left out")
    return begun, ended


def silent_2000_other_address(s):
    """2,000 silent connections on each port from 127.0.0.2: the per-address caps keep the
    attacker to its share; the canary and the client (127.0.0.1) never notice."""
    silent_flood(s, ATTACKER)
    s.back_to_baseline()


def silent_2000_same_address(s):
    """The same flood from 127.0.0.1, the canary's and the client's own address: per-address
    caps cannot tell them apart (the documented limit), so the canary fails while it lasts;
    everything recovers once it ends."""
    begun, ended = silent_flood(s, "127.0.0.1")
    # Users still waiting for a proxy connection hold their place until --proxy-timeout (10 s)
    # even when they hang up: the server does not watch a waiting user's socket.
    back = s.canary.success_after(ended, 12)
    s.expect(back, "the canary did not recover within 12 s of the flood's end (--proxy-timeout is 10 s)")
    s.outage(begun, back or time.monotonic())
    failures = sum(1 for r in s.canary.records if not r[2])
    s.note(f"documented limit: {failures} canary failures during the flood; "
           f"back {((back or ended) - ended):.1f} s after")


def fd_flood(s):
    """Server with `ulimit -n 1024`; silent users from 12 addresses (100 each, the per-address
    cap) until it runs out of descriptors. It must survive, log it, and recover fully."""
    s.up(prefix=("prlimit", "--nofile=1024:1024", "--"))
    mark = s.server.size()
    begun = time.monotonic()
    for n in range(1, 13):
        s.attack(open_silent(100, s.ports["public"], f"127.0.1.{n}", timeout=0.5, give_up_after=5))
    time.sleep(3)
    attackers = len(s.sockets)
    close_all(s.sockets)
    ended = time.monotonic()
    back = s.canary.success_after(ended, 15)
    s.expect(back, "the canary did not recover within 15 s of the flood's end")
    s.outage(begun, back or time.monotonic())
    emfile = s.server.count(r"EMFILE", mark)
    s.expect(emfile > 0 or s.meter.peak["server"][0] >= 1000, "the flood did not reach the server's fd limit")
    s.note(f"{attackers} attackers connected; server peak {s.meter.peak['server'][0]} fds; {emfile} EMFILE log "
           f"lines (not rate-limited); canary back {((back or ended) - ended):.1f} s after the flood")


def stalled_and_idle_users(s):
    """50 users ask for 50 MB and never read, 20 more never send a byte; the server, run with
    --stall-timeout 2s --idle-timeout 4s, must cut them all by itself while they stay connected."""
    s.up("--stall-timeout", "2s", "--idle-timeout", "4s")
    memory0 = tcp_memory_pages()
    begun = time.monotonic()
    stalled = []
    for _ in range(50):
        user = socket.socket()
        # A fixed receive buffer (no autotuning to 32 MB): the memory measured is the tunnel's.
        user.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        user.bind((ATTACKER, 0))
        user.settimeout(2)
        user.connect(("127.0.0.1", s.ports["public"]))
        user.sendall(b"GET /big HTTP/1.0\r\n\r\n")
        stalled.append(s.attack([user])[0])
    silent = s.attack(open_silent(20, s.ports["public"], "127.0.0.3"))
    fds0, threads0 = s.base["server"]

    def server_freed():
        fds, threads = sample(s.server)
        return fds is not None and fds <= fds0 and threads <= threads0
    # First they hold the server (two descriptors per joined user; the first stalled ones may
    # be cut before the last silent ones join), then the server lets go of them all.
    joined = wait_for(lambda: s.meter.peak["server"][0] >= fds0 + 70, 10, 0.1)
    s.expect(joined, f"the 70 users never held 70 of the server's descriptors (peak {s.meter.peak['server'][0]})")
    freed = wait_for(server_freed, 20, 0.2)
    took = time.monotonic() - begun
    s.expect(freed, "the server did not free the stalled and idle users within 20 s while they stayed connected")
    cut_stalled, cut_silent = closed_by_peer(stalled), closed_by_peer(silent)
    s.expect(cut_silent == len(silent), f"only {cut_silent} of {len(silent)} silent users were cut")
    memory_after = tcp_memory_pages()
    close_all(s.sockets)
    stall_lines = s.server.count(r"stall timeout")
    idle_lines = s.server.count(r"idle timeout")
    s.note(f"server freed them after {took:.1f} s, users still connected; cut: {cut_stalled}/50 stalled, "
           f"{cut_silent}/20 silent; log: {stall_lines} stall + {idle_lines} idle lines (throttled); "
           f"machine's TCP memory {memory0 >> 8}->{s.meter.tcp_memory_peak >> 8}->{memory_after >> 8} MiB")


def pids_cgroup():
    """A fresh pids cgroup (v1, or v2 with the controller enabled); its path, or None."""
    v1 = "/sys/fs/cgroup/pids"
    if os.path.isdir(v1) and os.access(v1, os.W_OK):
        return v1
    try:
        with open("/sys/fs/cgroup/cgroup.subtree_control") as f:
            if "pids" in f.read().split() and os.access("/sys/fs/cgroup", os.W_OK):
                return "/sys/fs/cgroup"
    except OSError:
        pass
    return None


def thread_limit(s):
    """Server in a pids cgroup allowing 40 more threads than it idles with; silent control
    connections from 6 addresses (16 each get past the pending limits: 96 threads wanted; a
    user costs the server no thread, a control connection one until it authenticates). It must log the refusal, keep no socket it cannot serve (no CLOSE-WAIT),
    and serve the canary again once the load drops (every scenario checks CLOSE-WAIT too)."""
    parent = pids_cgroup()
    if not parent:
        raise Skipped("no writable pids cgroup (needs root and cgroup v1 pids, or v2 with pids enabled)")
    group = os.path.join(parent, f"fault-suite-{os.getpid()}")
    os.mkdir(group)

    def remove_group():
        wait_for(lambda: open(os.path.join(group, "pids.current")).read().strip() == "0", 5)
        os.rmdir(group)
    s.cleanups.append(remove_group)
    enter = f'echo $$ > {group}/cgroup.procs && exec "$@"'
    s.up(prefix=("sh", "-c", enter, "sh"))
    limit = s.base["server"][1] + 40
    with open(os.path.join(group, "pids.max"), "w") as f:
        f.write(str(limit))
    mark = s.server.size()
    begun = time.monotonic()
    for n in range(2, 8):
        s.attack(open_silent(30, s.ports["control"], f"127.0.0.{n}", timeout=0.5, give_up_after=5))
    time.sleep(3)
    attackers = len(s.sockets)
    close_all(s.sockets)
    ended = time.monotonic()
    refused_during = s.server.count(r"cannot start a thread", mark)
    back = s.canary.success_after(ended, 15)
    s.expect(back, "the canary did not recover within 15 s of the load's end")
    s.outage(begun, back or time.monotonic())
    refused = s.server.count(r"cannot start a thread", mark)
    s.expect(refused > 0, "the server logged no thread it could not start (was the limit reached?)")
    # Those lines are caused by strangers, so like every such line they must be rate-limited per
    # address (a burst of 20, then 5 a second): 6 attacking addresses, and the client's own.
    allowed = 7 * (20 + 5 * (ended - begun))
    s.expect(refused_during <= allowed,
             f"{refused_during} 'cannot start a thread' log lines in {ended - begun:.1f} s for {attackers} attacking "
             f"connections: not rate-limited per address (at most {allowed:.0f} expected)")
    events = open(os.path.join(group, "pids.events")).read().split()
    s.back_to_baseline()
    s.note(f"pids.max {limit}: {attackers} attackers, {refused} 'cannot start a thread' lines, "
           f"cgroup {' '.join(events)}; canary back {((back or ended) - ended):.1f} s after")


def stranger_register(s):
    """A stranger's `auth`/`register` without the secret is refused; the client keeps working.
    And a server asked to listen on 0.0.0.0 without a secret refuses to start (exit 2)."""
    s.secret = os.urandom(16).hex()
    s.up()
    client_mark = s.client.size()
    reply, ending = exchange(s.ports["control"], b"auth\nregister\n")
    s.expect(reply.startswith(b"closing wrong secret") or b"closing" in reply,
             f"the stranger was not refused: {reply[:60]!r}")
    s.expect(b"registered" not in reply, "the stranger was registered")
    time.sleep(1)
    s.expect(s.client.alive() and s.client.count(r"replaced|closing|lost", client_mark) == 0,
             f"the real client noticed the stranger:\n{s.client.tail(3)}")
    s.note(f"stranger got {reply.strip()[:40]!r}, then {ending}")
    env = {k: v for k, v in os.environ.items() if k != "TUNNEL_SECRET"}
    exposed = subprocess.Popen([BIN["server"], "--host", "0.0.0.0", "--control-port", "0", "--public-port", "0",
                                "--proxy-port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        output, _ = exposed.communicate(timeout=5)
    except subprocess.TimeoutExpired:
        exposed.kill()
        output, _ = exposed.communicate(timeout=5)
    s.expect(exposed.returncode == 2 and b"refusing to listen on 0.0.0.0" in output,
             f"--host 0.0.0.0 without a secret: exit {exposed.returncode}, {output[:200]!r}")
    s.note(f"--host 0.0.0.0 without a secret: exit {exposed.returncode}")
    s.back_to_baseline()


def wrong_secrets(s):
    """100 wrong secrets from 127.0.0.2 as fast as it can: at most ~10 a second are checked,
    the rest dropped unchecked; the real client (127.0.0.1) never notices."""
    s.secret = os.urandom(16).hex()
    s.up()
    mark = s.server.size()
    begun = time.monotonic()
    checked = dropped = 0
    for n in range(100):
        reply, _ = exchange(s.ports["control"], f"auth guess{n:03}\nregister\n".encode(), source=ATTACKER)
        if b"wrong secret" in reply:
            checked += 1
        else:
            dropped += 1
    elapsed = time.monotonic() - begun
    allowed = 10 + 10 * elapsed + 1
    s.expect(checked <= allowed, f"{checked} guesses checked in {elapsed:.2f} s (at most {allowed:.0f} allowed)")
    s.expect(checked >= 10, f"only {checked} guesses checked: the burst of 10 should be")
    # Another address's guesses must not lock the rightful client out: a restarted one registers.
    # A second later, so that its log lines also bring the throttle's summary of what it left
    # out about the attacker (printed only when another source logs, at most once a second).
    time.sleep(1.2)
    s.client.stop()
    s.start_client()
    logged_wrong = s.server.count(r"refused: wrong secret", mark)
    logged_many = s.server.count(r"too many wrong secrets", mark)
    left_out = sum(int(n) for n in re.findall(rf"\((\d+) more line\(s\) about {ATTACKER}", s.server.text(mark)))
    s.note(f"{checked} checked, {dropped} dropped in {elapsed:.2f} s; log: {logged_wrong} 'wrong secret', "
           f"{logged_many} 'too many wrong secrets', {left_out} lines about {ATTACKER} left out by the throttle")
    s.back_to_baseline()


def junk_after_auth(s):
    """1 MiB of `x` lines after `auth` and `claim`: closed after a few errors, and the log stays small."""
    s.up()
    mark = s.server.size()
    payload = b"auth\nclaim junk j 0\n" + b"x\n" * (512 * 1024)
    sent, replies, ending = 0, b"", "still open"
    with socket.socket() as sock:
        sock.bind((ATTACKER, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", s.ports["control"]))
        try:
            while sent < len(payload):
                sent += sock.send(payload[sent:sent + 65536])
        except OSError:
            pass  # the server closed on us: what we expect
        end = time.monotonic() + 5
        try:
            while time.monotonic() < end:
                chunk = sock.recv(65536)
                if not chunk:
                    ending = "closed"
                    break
                replies += chunk
        except ConnectionResetError:
            ending = "reset"
        except socket.timeout:
            pass
    closed = s.server.wait_line(r"closed: \d+ lines we do not understand", 5, mark)
    s.expect(closed, "the server did not close the junk connection")
    growth = s.server.size() - mark
    s.expect(growth < 4096, f"the log grew {growth} bytes for {len(payload)} bytes of junk")
    s.note(f"{sent} of {len(payload)} bytes sent, {replies.count(b'error')} error replies, then {ending}; "
           f"log +{growth} bytes ({growth / len(payload):.4f} per input byte)")
    s.back_to_baseline()


# ---------------------------------------------------------------- round two: what the attacker found

FULL = False  # --full: the sizes the figures were measured at; CI runs reduced sizes


class SideApp:
    """An app of the scenario's own, in a thread: answers /canary like the main app, and for
    anything else runs `handle(sock, first bytes)`. Stopped with the scenario."""

    def __init__(self, s, handle):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1024)
        self.port = self.listener.getsockname()[1]
        self.handle = handle
        self.held = []
        self.closed = threading.Event()
        threading.Thread(target=self.accept, daemon=True).start()
        s.cleanups.append(self.stop)

    def accept(self):
        while not self.closed.is_set():
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.serve, args=(sock,), daemon=True).start()

    def serve(self, sock):
        try:
            sock.settimeout(30)
            first = sock.recv(65536)
            if first.startswith(b"GET /canary"):
                sock.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(CANARY_BODY) + CANARY_BODY)
                sock.close()
                return
            self.handle(self, sock, first)
        except OSError:
            sock.close()

    def stop(self):
        self.closed.set()
        self.listener.close()
        for sock in self.held:
            sock.close()


def hold_half_closed(app, sock, first):
    """Reads to the end of the stream, then holds the half-closed connection without a word."""
    while first:
        first = sock.recv(65536)
    app.held.append(sock)


def echo(app, sock, first):
    """Writes back everything, until the peer finishes; then finishes too."""
    data = first
    while data:
        sock.sendall(data)
        data = sock.recv(1 << 20)
    sock.shutdown(socket.SHUT_WR)
    sock.close()


def half_open_reset(s, relay):
    s.app_side = SideApp(s, hold_half_closed)
    args = ("--relay", relay)
    s.up(*args, client_args=args, app_port=s.app_side.port)
    users = []
    for n in range(20):
        user = socket.create_connection(("127.0.0.1", s.ports["public"]), timeout=5)
        user.sendall(b"POST /long-poll HTTP/1.0\r\n\r\nrequest %d" % n)
        user.shutdown(socket.SHUT_WR)
        users.append(user)
    held = wait_for(lambda: len(s.app_side.held) == 20, 10)
    s.expect(held, f"the app holds {len(s.app_side.held)} of 20 half-closed connections")
    s.meter.sample()
    for user in users:
        user.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        user.close()
    reset = time.monotonic()
    s.back_to_baseline(timeout=10)
    freed = time.monotonic() - reset
    s.expect(freed <= 2.5, f"descriptors came back {freed:.1f} s after the resets, not within 2 s")
    s.note(f"relay {relay}: 20 half-closed pairs, then resets: server and client back to baseline {freed:.1f} s later")


def half_open_reset_events(s):
    """20 users send a request, half-close, then reset, while the app holds its half-closed side
    without a word (a long-poll endpoint): every pair is freed within 2 s, event relay."""
    half_open_reset(s, "events")


def half_open_reset_threads(s):
    """The same with --relay threads on both sides."""
    half_open_reset(s, "threads")


def bulk_and_echoes(s, relay):
    s.app_side = SideApp(s, echo)
    args = ("--relay", relay, "--max-users", "2000")  # every echo comes from 127.0.0.1: past the per-address 100
    s.up(*args, "--max-users-per-address", "2000", client_args=args, app_port=s.app_side.port)
    import hashlib
    size = (1 << 30) if FULL else (64 << 20)
    payload = os.urandom(1 << 20)
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    with socket.create_connection(("127.0.0.1", s.ports["public"]), timeout=30) as user:
        def send():
            for _ in range(size >> 20):
                user.sendall(payload)
                sent_hash.update(payload)
            user.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send, daemon=True)
        begun = time.monotonic()
        sender.start()
        got = 0
        while True:
            chunk = user.recv(1 << 20)
            if not chunk:
                break
            got_hash.update(chunk)
            got += len(chunk)
        sender.join(30)
        took = time.monotonic() - begun
    s.expect(got == size and got_hash.digest() == sent_hash.digest(),
             f"{got} of {size} bytes came back, sha256 {'equal' if got_hash.digest() == sent_hash.digest() else 'differs'}")
    count, each = (1000, 1 << 20) if FULL else (200, 64 << 10)
    failures = []

    def one(n):
        data = os.urandom(each)
        try:
            with socket.create_connection(("127.0.0.1", s.ports["public"]), timeout=30) as user:
                user.settimeout(30)
                threading.Thread(target=lambda: (user.sendall(data), user.shutdown(socket.SHUT_WR)), daemon=True).start()
                back = b""
                while chunk := user.recv(1 << 20):
                    back += chunk
            if back != data:
                failures.append(f"echo {n}: {len(back)} of {len(data)} bytes, {'wrong' if back else 'none'}")
        except OSError as error:
            failures.append(f"echo {n}: {error}")
    workers = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    s.expect(not failures, f"{len(failures)} of {count} concurrent echoes failed, e.g. {failures[:2]}")
    s.note(f"relay {relay}: {size >> 20} MiB each way, sha256 equal, {size * 2 / took / 1e6:.0f} MB/s; "
           f"{count} concurrent echoes of {each >> 10} KiB: {count - len(failures)} intact")


def bulk_events(s):
    """64 MiB each way through an echo app, sha256 checked, and 200 concurrent echoes (--full: 1 GiB
    and 1,000 of 1 MiB), with the event relay."""
    bulk_and_echoes(s, "events")


def bulk_threads(s):
    """The same with --relay threads on both sides."""
    bulk_and_echoes(s, "threads")


def pool_under_churn(s):
    """The client with --pool 4: 300 users one after another and 50 at once all get the canary's
    page through pooled proxy connections, and nothing is left behind."""
    s.up(client_args=("--pool", "4"))
    s.expect(s.server.wait_line(r"waits in the pool", 5), "no proxy connection was parked in the pool")
    failed = sum(1 for _ in range(300) if exchange(s.ports["public"], b"GET /canary HTTP/1.0\r\n\r\n")[0].find(CANARY_BODY) < 0)
    results = []
    workers = [threading.Thread(target=lambda: results.append(
        CANARY_BODY in exchange(s.ports["public"], b"GET /canary HTTP/1.0\r\n\r\n")[0]), daemon=True) for _ in range(50)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(20)
    s.expect(failed == 0 and all(results) and len(results) == 50,
             f"{failed} of 300 sequential and {results.count(False)} of 50 concurrent users failed")
    s.note("300 sequential + 50 concurrent users served")


def sigstop_app(s):
    """SIGSTOP of the app for 3 s (its kernel still accepts, nobody answers): users wait, none is
    lost for good, and after SIGCONT the canary is back; nothing leaks."""
    app = subprocess.Popen([sys.executable, "-c", (
        "import http.server,sys\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        b=sys.argv[1].encode(); self.send_response(200); self.send_header('Content-Length',str(len(b)));"
        " self.end_headers(); self.wfile.write(b)\n"
        "    def log_message(self,*a): pass\n"
        "http.server.ThreadingHTTPServer(('127.0.0.1',int(sys.argv[2])),H).serve_forever()\n"),
        CANARY_BODY.decode(), str(port := free_ports(1)[0])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    s.cleanups.append(lambda: (app.kill(), app.wait()))
    wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 5)
    s.up(app_port=port)
    stopped = time.monotonic()
    app.send_signal(signal.SIGSTOP)
    time.sleep(3)
    app.send_signal(signal.SIGCONT)
    back = s.canary.success_after(time.monotonic(), 10)
    s.expect(back, "the canary did not get through after the app was continued")
    s.outage(stopped, back or time.monotonic())
    s.note(f"app stopped 3 s; canary back {((back or time.monotonic()) - stopped - 3):.1f} s after SIGCONT")


def loopback_addresses(count):
    """`count` distinct loopback source addresses, 127.0.1.0 upwards (Linux routes all of 127/8 to lo)."""
    return [f"127.0.{1 + n // 250}.{1 + n % 250}" for n in range(count)]


def many_addresses(s):
    """Junk, wrong secrets and users from thousands of loopback addresses (4,000 with --full, 1,000
    in CI): the server's log grows by at most ~100 KB a second, at most ~50 secrets a second are
    checked in all, and the canary and the client never notice."""
    s.secret = os.urandom(16).hex()
    s.up()
    count = 4000 if FULL else 1000
    addresses = loopback_addresses(count)
    mark = s.server.size()
    begun = time.monotonic()
    checked = refused = served = errors = 0
    for n, address in enumerate(addresses):
        try:
            reply, _ = exchange(s.ports["control"], f"auth guess{n}\n".encode(), source=address, timeout=2)
            checked += b"wrong secret" in reply
            reply, _ = exchange(s.ports["control"], b"junk line\n" * 4, source=address, timeout=2)
            refused += b"closing" in reply
            reply, _ = exchange(s.ports["public"], b"GET /canary HTTP/1.0\r\n\r\n", source=address, timeout=2)
            served += CANARY_BODY in reply
        except OSError:
            errors += 1
    elapsed = time.monotonic() - begun
    growth = s.server.size() - mark
    allowed_checks = 50 + 50 * elapsed + 1
    s.expect(checked <= allowed_checks, f"{checked} secrets checked in {elapsed:.1f} s (at most {allowed_checks:.0f})")
    allowed_log = 40_000 + 20_000 * elapsed  # 200 lines at once, then 50 a second, ~200 bytes each
    s.expect(growth <= allowed_log, f"the log grew {growth} bytes in {elapsed:.1f} s (at most {allowed_log:.0f})")
    s.expect(served >= count * 0.9, f"only {served} of {count} users from the many addresses were served")
    s.note(f"{count} addresses in {elapsed:.1f} s: {checked} secrets checked ({checked / elapsed:.0f}/s), "
           f"{refused} junk lines refused, {served} users served, {errors} errors; "
           f"log +{growth >> 10} KiB ({growth / elapsed / 1024:.0f} KiB/s)")
    s.back_to_baseline()


def hostile_server(s):
    """A server of our own that floods the real client: `fill_pool` lines past the pool it asked
    for (100,000 with --full, 20,000 in CI) and `create_proxy` lines naming a new fake user each:
    the client's log grows by at most ~100 KB, and it serves on."""
    fake = socket.socket()
    fake.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    fake.bind(("127.0.0.1", s.ports["control"]))
    fake.listen(8)
    s.cleanups.append(fake.close)
    fills, creates = (100_000, 20_000) if FULL else (20_000, 5_000)
    done = threading.Event()

    def serve():
        control, _ = fake.accept()
        control.settimeout(10)
        control.recv(4096)  # auth, claim (it sends register once it has our answer, which we do not wait for)
        lines = [b"claimed hostile 60624\n", b"registered\n"] + [b"fill_pool %032x\n" % n for n in range(fills)]
        lines += [b"create_proxy %032x 10.%d.%d.%d:%d\n" % (n, n >> 16 & 255, n >> 8 & 255, n & 255, 1000 + n % 60000)
                  for n in range(creates)]
        try:
            control.sendall(b"".join(lines))
        except OSError:
            pass
        done.set()
        time.sleep(3)
        control.close()
    threading.Thread(target=serve, daemon=True).start()
    client = s.start_client("--pool", "1")
    s.expect(done.wait(30), "the flood was not all sent within 30 s")
    time.sleep(2)
    growth = client.size()  # its whole log, from its first line
    s.expect(client.alive(), f"the client died:\n{client.tail()}")
    s.expect(growth <= 100_000, f"the client's log grew {growth} bytes for {fills + creates} hostile lines")
    s.note(f"{fills} fill_pool + {creates} create_proxy lines: client log +{growth >> 10} KiB, client alive")


def inspect_lockout(s):
    """The live view under attack from 127.0.0.2: 16 pages that never read and 100 requests that
    never finish; a viewer from 127.0.0.3 gets the page within 6 s, and the tunnel serves on."""
    port = free_ports(1)[0]
    s.up("--inspect", f"127.0.0.1:{port}")
    pages = []
    for _ in range(16):
        page = socket.socket()
        page.bind((ATTACKER, 0))
        page.connect(("127.0.0.1", port))
        page.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        pages.append(page)
    s.attack(pages)
    half = []
    for _ in range(100):
        request = socket.socket()
        request.bind((ATTACKER, 0))
        try:
            request.connect(("127.0.0.1", port))
            request.sendall(b"GET / HTTP/1.1\r\nHost: slo")
        except OSError:
            pass
        half.append(request)
    s.attack(half)
    begun = time.monotonic()
    reply, _ = exchange(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", source="127.0.0.3", timeout=6)
    took = time.monotonic() - begun
    s.expect(reply.startswith(b"HTTP/1.1 200"), f"the viewer from elsewhere got {reply[:40]!r} within 6 s")
    stream, _ = exchange(port, b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n", source="127.0.0.3", timeout=2)
    s.expect(stream.startswith(b"HTTP/1.1 200") and b"snapshot" in stream,
             f"a page from elsewhere was not given a place: {stream[:40]!r}")
    s.note(f"page answered in {took:.2f} s; a stream from elsewhere took an idle page's place")
    close_all(pages)
    close_all(half)
    s.back_to_baseline()


def dripped_lines(s):
    """20 control and 20 proxy connections from 127.0.0.2 drip their first line a byte every
    0.3 s (slowloris): the server, run with --proxy-timeout 3s, closes each at that deadline,
    however the bytes keep coming; the canary never notices."""
    s.secret = os.urandom(16).hex()
    s.up("--proxy-timeout", "3s")
    drips = []
    for port in (s.ports["control"], s.ports["proxy"]):
        for _ in range(20):
            sock = socket.socket()
            sock.bind((ATTACKER, 0))
            sock.connect(("127.0.0.1", port))
            drips.append(sock)
    s.attack(drips)
    line = b"auth " + b"a" * 60 + b"\n"
    begun = time.monotonic()
    for n in range(len(line)):
        if time.monotonic() - begun > 6:
            break
        for sock in drips:
            try:
                sock.send(line[n:n + 1])
            except OSError:
                pass
        time.sleep(0.3)
    closed = closed_by_peer(drips)
    s.expect(closed == len(drips), f"{closed} of {len(drips)} dripping connections closed within 6 s (deadline 3 s)")
    s.note(f"{closed} of {len(drips)} dripping connections closed by their 3 s deadline")
    close_all(drips)
    s.back_to_baseline()


def pre_auth_junk(s):
    """Before authenticating: binary garbage, a 1 MiB line with no newline, and NUL bytes, on the
    control and proxy ports from 127.0.0.2: each closed, the log small, the canary untouched."""
    s.secret = os.urandom(16).hex()
    s.up()
    mark = s.server.size()
    endings = []
    for port in (s.ports["control"], s.ports["proxy"]):
        for payload in (os.urandom(4096), b"a" * (1 << 20), b"\x00" * 1000 + b"\n", b"auth\x00\xff\n"):
            try:
                endings.append(exchange(port, payload, source=ATTACKER, timeout=5)[1])
            except OSError as error:  # reset while sending: closed on us, as it should be
                endings.append(type(error).__name__)
    s.expect("still open" not in endings, f"a connection sending junk was left open: {endings}")
    growth = s.server.size() - mark
    s.expect(growth < 8192, f"the log grew {growth} bytes for 8 junk connections")
    s.note(f"8 junk connections: {', '.join(sorted(set(endings)))}; log +{growth} bytes")
    s.back_to_baseline()


def urgent_data(s):
    """A user sends TCP urgent data (MSG_OOB) in the middle of its request: the byte is dropped,
    the bytes around it arrive, the pair does not stall, with both relays."""
    for relay in ("events", "threads"):
        s.app_side = SideApp(s, echo)
        args = ("--relay", relay)
        if "server" in s.procs:
            s.server.stop()
            s.client.stop()
            s.canary.stop()
            s.procs.clear()
        s.up(*args, client_args=args, app_port=s.app_side.port)
        with socket.create_connection(("127.0.0.1", s.ports["public"]), timeout=5) as user:
            user.sendall(b"before ")
            user.send(b"!", socket.MSG_OOB)
            user.sendall(b"after")
            user.shutdown(socket.SHUT_WR)
            back = b""
            while chunk := user.recv(4096):
                back += chunk
        s.expect(back == b"before after", f"relay {relay}: the echo came back as {back!r}")
        s.note(f"relay {relay}: {back!r} back, the urgent byte dropped")
    s.back_to_baseline()


SCENARIOS = [
    ("kill-client", kill_client_mid_download),
    ("kill-server", kill_server_and_restart),
    ("app-down", app_down_and_back),
    ("sigstop-client", sigstop_client),
    ("silent-2000", silent_2000_other_address),
    ("silent-2000-same-addr", silent_2000_same_address),
    ("stalled-users", stalled_and_idle_users),
    ("fd-flood", fd_flood),
    ("thread-limit", thread_limit),
    ("stranger-register", stranger_register),
    ("wrong-secrets", wrong_secrets),
    ("junk-after-auth", junk_after_auth),
    ("half-open-reset", half_open_reset_events),
    ("half-open-reset-threads", half_open_reset_threads),
    ("bulk-events", bulk_events),
    ("bulk-threads", bulk_threads),
    ("pool-churn", pool_under_churn),
    ("sigstop-app", sigstop_app),
    ("many-addresses", many_addresses),
    ("hostile-server", hostile_server),
    ("inspect-lockout", inspect_lockout),
    ("dripped-lines", dripped_lines),
    ("pre-auth-junk", pre_auth_junk),
    ("urgent-data", urgent_data),
]


# ---------------------------------------------------------------- running and reporting

def run(name, body, logdir, app):
    s = Scenario(name, logdir, app)
    say(f"{name}: {' '.join(body.__doc__.split())}")
    status = "held"
    try:
        body(s)
        if not s.after:
            s.back_to_baseline()
    except Skipped as why:
        status = "FAILED (skipped, CI=true)" if CI else "skipped"
        s.note(str(why))
        if CI:
            s.problems.append(f"skipped under CI: {why}")
    except Failed as error:
        s.problems.append(str(error))
    except Exception:
        s.problems.append("the suite itself failed: " + traceback.format_exc())
    finally:
        canary, _ = s.canary_report()
        s.close()
    if s.problems and status == "held":
        status = "FAILED"
    for problem in s.problems:
        say(f"  {name}: {problem}")
    for note in s.notes:
        say(f"  {name}: {note}")

    def figures(index):
        cells = []
        for role in ("server", "client"):
            if role in s.base:
                before, after = s.base[role][index], s.after.get(role, (None, None))[index]
                peak = s.meter.peak.get(role, [None, None])[index]
                cells.append(f"{role[0]} {before}/{peak}/{after}")
        return " ".join(cells) or "-"
    return [name, status, canary, figures(0), figures(1), "; ".join(s.notes)], not s.problems or status == "skipped"


def table(rows):
    header = ["scenario", "held?", "canary fails/probes", "fds s/c before/peak/after", "threads s/c before/peak/after",
              "notes"]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(5)]
    lines = [" | ".join(str(c).ljust(w) for c, w in zip(header, widths)) + " | " + header[5]]
    lines.append("-+-".join("-" * w for w in widths) + "-+-" + "-" * 5)
    for r in rows:
        lines.append(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " | " + r[5])
    return "\n".join(lines)


def build():
    for product in ("stage3-server", "stage3-client"):
        say(f"building {product} (release)")
        subprocess.run(["swift", "build", "-c", "release", "--product", product], cwd=ROOT, check=True)
    path = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=ROOT, check=True,
                          capture_output=True, text=True).stdout.strip()
    return path


def interrupted(*_):
    raise KeyboardInterrupt


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-build", action="store_true", help="use the release executables already built")
    parser.add_argument("--only", default="", help="comma-separated scenario names to run")
    parser.add_argument("--skip", default="", help="comma-separated scenario names not to run")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs folder even when all held")
    parser.add_argument("--list", action="store_true", help="list the scenarios and exit")
    parser.add_argument("--full", action="store_true",
                        help="the full sizes (1 GiB each way, 1,000 echoes of 1 MiB, 4,000 addresses, 100,000 "
                             "hostile lines) instead of CI's reduced ones")
    options = parser.parse_args()
    global FULL
    FULL = options.full
    if options.list:
        for name, body in SCENARIOS:
            print(f"{name:22} {' '.join(body.__doc__.split())}")
        return 0
    names = [name for name, _ in SCENARIOS]
    only = [n for n in options.only.split(",") if n]
    skip = [n for n in options.skip.split(",") if n]
    unknown = [n for n in only + skip if n not in names]
    if unknown:
        print(f"fault-suite: unknown scenario(s) {', '.join(unknown)}; see --list", file=sys.stderr)
        return 2
    if not sys.platform.startswith("linux"):
        print("fault-suite: Linux only (it reads /proc and uses 127.0.0.2)", file=sys.stderr)
        return 1 if CI else 0

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 16384 if hard == resource.RLIM_INFINITY else min(hard, 16384)
    if wanted < 8000:
        print(f"fault-suite: needs 8000 descriptors for its attackers; the hard limit is {hard}", file=sys.stderr)
        return 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))

    # Ctrl-C and a CI runner's SIGTERM both end up in the `finally` below, which stops every process.
    # Set SIGINT too: a shell starting us in the background (a CI step, `&`) leaves it ignored,
    # and the watchdog below relies on it.
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    watchdog = threading.Timer(SUITE_LIMIT, lambda: os.kill(os.getpid(), signal.SIGINT))
    watchdog.daemon = True

    logdir = tempfile.mkdtemp(prefix="fault-suite-")
    app = App()
    rows, ok = [], True
    try:
        bin_path = os.path.join(ROOT, ".build", "release") if options.no_build else build()
        BIN["server"], BIN["client"] = (os.path.join(bin_path, p) for p in ("stage3-server", "stage3-client"))
        watchdog.start()
        app.start()
        say(f"logs in {logdir}; app on 127.0.0.1:{app.port}")
        for name, body in SCENARIOS:
            if (only and name not in only) or name in skip:
                continue
            row, held = run(name, body, logdir, app)
            rows.append(row)
            ok = ok and held
    except KeyboardInterrupt:
        say("interrupted: stopping every process started")
        ok = False
    finally:
        watchdog.cancel()
        stop_all_processes()
        app.stop()
    if rows:
        print("\n" + table(rows))
    skipped = sum(1 for row in rows if row[1] == "skipped")
    verdict = ("all held" + (f" ({skipped} skipped)" if skipped else "")) if ok else "FAILED"
    print(f"\nfault-suite: {verdict} in {time.monotonic() - T0:.0f} s")
    if ok and not options.keep_logs:
        shutil.rmtree(logdir, ignore_errors=True)
    else:
        print(f"fault-suite: logs in {logdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
