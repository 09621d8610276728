#!/usr/bin/env python3
"""How fast is the tunnel? Two tables, measured in one run, every path against a direct connection.

Run it with `.ci/bench` (it installs wrk, haproxy, socat and nginx-light if missing, and builds
release first); this file is the driver. Not run by CI: speed is checked here, never by tests.

What is measured. nginx is the app (GETs of a 1 KiB file, keep-alive); a small sink/source
written here is the app for bulk transfers. Each path sits between the load and the app:
  direct            no relay: the baseline every ratio and "added" latency is taken against
  haproxy           one hop, C, epoll, one thread: what a production relay costs; and two
                    haproxies in series, the tunnel's shape (two hops) from a production relay
  socat             one hop, a process per connection
  stage0-forwarder  one hop, stage 0's relay
  stage 3           the tunnel: server + client, two hops (no secret: loopback only)
When the executables accept `--relay events|threads` (found in their --help) both relays are
measured; when stage3-client accepts `--pool N`, stage 3 is measured with the pool off and on.
The app and the relays share one CPU; the load (wrk, and this driver) runs on the other (but
for the second table's new conn on both cores, and its canary).

Columns:
  bulk up / down      1 transfer each way (user -> app, app -> user), MB/s; (×) of direct's
  keep-alive          `wrk -t1 -c1 --latency`: p50 / p99 of a request on an open connection;
                      direct shows its own figures, every other path what it adds (+µs)
  new conn            connect + GET + full response + close, one at a time (a Python client):
                      p50 / p99, added like keep-alive (the client's own cost cancels out)
  CPU/new conn        CPU time of every relay process during those connections, per connection
  -c64 req/s          `wrk -t1 -c64` keep-alive GETs: requests per second, (×) of direct's
  errors              wrk's socket errors + non-2xx responses during that run
  CPU/req             CPU time (user + system) of every relay process during the -c64 run,
                      divided by the requests served: µs per request, both hops together
  peak PSS            the peak of the relay processes' total proportional set size, sampled
                      every 0.1 s during the -c64 run (MiB)
  idle users          N users connect, each sends one GET and reads the answer (so each is
                      joined end to end), then all stay open and silent; held = how many got
                      their answer. Then RSS (MiB) / threads / open fds of the server (the
                      forwarder, or the haproxy users connect to) and of the stage 3 client
                      (or the second haproxy). Fewer users are asked for when the machine
                      would run out (the table says which limit): relays with a thread per
                      user need PIDs (`sysctl kernel.pid_max=4194304`), and every relay two
                      descriptors per user (`ulimit -n`, raised when allowed: the report's
                      first line says the limit every process got, and why if not higher).
The second table, under load, has the same rows. Its -c1000 and churn figures come from a fresh
instance of each path, so that they move no figure of the first table; its first column does
not (it needs the first table's new conn beside it):
  new conn, load on both cores
                      new conn again, right after the first, with this driver allowed on both
                      CPUs instead of the load's one: a relay that refills something (a pool)
                      after each user now competes with the next user's client for a CPU, so
                      a refill that costs the next user its latency shows here; added as above
  -c1000 req/s        `wrk -t1 -c1000` keep-alive GETs (wrk on the load CPU, like -c64): a
                      thousand users at once, through every hop; (×) of direct's
  -c1000 p99 ms       that run's p99 latency (its own, not added: at -c1000 it is queueing)
  -c1000 errors       wrk's socket errors (timeouts: 5 s) + non-2xx responses in that run
  CPU/req at -c1000   CPU of every relay process during that run / requests served, µs
  churn: users/s      N users (10,000; --quick 1,000) each connect, send a GET and leave at once
                      without reading (SO_LINGER 0: a reset, no TIME_WAIT), from one Python loop
                      on the load CPU keeping up to 100 handshakes in flight (so one user whose
                      SYN a full accept queue dropped, retried after 1 s, holds up nobody): users
                      connected per second. stage 3 and haproxy paths only; "(K failed)": K
                      users (the worst run's) refused, or not connected in the 60 s it may take
  server threads before / max / after
                      threads of the process users connect to (stage3-server, or the haproxy
                      in front) before the churn (the canary connected), its highest (sampled
                      every 20 ms), and 2 s after the last user left
  canary answered / asked
                      an existing user meanwhile: one keep-alive connection asking a GET every
                      50 ms from the churn's start until the 2 s after; an answer later than
                      1 s counts as failed (and the connection is replaced). It is a process of
                      its own allowed on both CPUs: it sleeps between GETs, so the scheduler
                      wakes it at once on whichever CPU, and it neither waits for the flood's
                      CPU nor shares its interpreter lock, so a late answer is the path's fault
Each table comes with a spread table: min–max of the same cells over the runs.
On a busy machine figures move by tens of percent between runs: compare rows of one table.
nginx answers headers and body in one write (sendfile off, its default); with two writes a
relay that leaves Nagle's algorithm on waits for a delayed ACK, 40 ms per request (socat does).
Linux only (taskset, /proc).
"""
import argparse
import errno
import functools
import os
import resource
import selectors
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BIN = os.path.join(ROOT, ".build", "release")
MIB = 1 << 20
REQUEST_KEEP_ALIVE = b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n"
REQUEST_CLOSE = b"GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
IP_BIND_ADDRESS_NO_PORT = 24  # Linux: choose the source port at connect(), per destination
CAP_SYS_RESOURCE = 24  # the capability that raises a hard limit (linux/capability.h)
CHURN_IN_FLIGHT = 100  # churn users in their handshake at once
CHURN_DEADLINE = 60    # seconds the churn may take in all
CHURN_TAIL = 2         # seconds the canary and the thread sampler go on after the last user
CANARY_EVERY, CANARY_PATIENCE = 0.05, 1.0  # seconds between its GETs; an answer later fails


def log(message):
    print(f"bench: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- processes, by PID

class Processes:
    """Every process the benchmark starts; each stopped by its PID (and its children's)."""

    def __init__(self, tmp):
        self.tmp, self.running = tmp, []

    def start(self, name, argv, core):
        logfile = open(os.path.join(self.tmp, f"{name}.log"), "ab")
        env = {k: v for k, v in os.environ.items() if k != "TUNNEL_SECRET"}  # loopback: no secret
        process = subprocess.Popen(["taskset", "-c", str(core)] + argv, stdin=subprocess.DEVNULL,
                                   stdout=logfile, stderr=logfile, env=env)
        process.name, process.logpath = name, logfile.name
        logfile.close()
        self.running.append(process)
        return process

    def stop(self, process):
        family = [process.pid] + sorted(descendants([process.pid]) - {process.pid})
        for pid in family:  # socat forks one child per connection: stop those too
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process in self.running:
            self.running.remove(process)

    def stop_all(self):
        for process in reversed(list(self.running)):
            self.stop(process)


def proc_stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def descendants(roots):
    """The roots and every process below them (read from /proc, one pass)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                children.setdefault(int(proc_stat(entry)[1]), []).append(int(entry))
            except (OSError, IndexError):
                pass
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, []))
    return found


def cpu_seconds(roots):
    """User + system CPU of the process trees. It waits (up to 3 s) until every child has
    been reaped first: socat's children exit as their connection closes, and a child read
    just before the parent reaps it would be counted twice, or not at all."""
    deadline = time.monotonic() + 3
    while descendants(roots) - set(roots) and time.monotonic() < deadline:
        time.sleep(0.02)
    ticks = 0
    for pid in descendants(roots):
        try:
            fields = proc_stat(pid)
            ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, IndexError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def pss_mib(roots):
    total = 0
    for pid in descendants(roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("Pss:"))
        except (OSError, StopIteration):
            pass
    return total / 1024


def footprint(pid):
    """RSS in MiB, threads, open descriptors of one process."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    return (int(status["VmRSS"].split()[0]) / 1024, int(status["Threads"]),
            len(os.listdir(f"/proc/{pid}/fd")))


def threads(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("Threads:")))


def threads_and_fds(pid):
    return threads(pid), len(os.listdir(f"/proc/{pid}/fd"))


def hard_descriptor_limit(pid):
    with open(f"/proc/{pid}/limits") as f:
        return int(next(line.split()[4] for line in f if line.startswith("Max open files")))


def listening(port):
    """True once something listens on the port (read from /proc: no probe connection)."""
    suffix = f":{port:04X}"
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in list(f)[1:]:
                fields = line.split()
                if fields[1].endswith(suffix) and fields[3] == "0A":
                    return True
    return False


def wait_until(what, predicate, process=None, deadline=15):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if predicate():
            return
        if process is not None and process.poll() is not None:
            break
        time.sleep(0.02)
    detail, exited = "", process is not None and process.poll() is not None
    if process is not None:
        detail = " — its log ends: " + log_tail(process)
    raise RuntimeError(f"{what} did not happen: " + ("it exited" if exited else f"not within {deadline} s") + detail)


def log_tail(process):
    with open(process.logpath, errors="replace") as f:
        return " | ".join(f.read().splitlines()[-3:])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the apps

NGINX_CONF = """\
daemon off;
master_process off;
worker_rlimit_nofile {nofile};
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
    access_log off;
    sendfile off;  # nginx's default: headers and a small body leave in one write
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    client_body_temp_path {tmp}/nginx-body;
    proxy_temp_path {tmp}/nginx-proxy;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {tmp}/www;
    }}
}}
"""


def start_nginx(procs, tmp, core):
    os.makedirs(os.path.join(tmp, "www"), exist_ok=True)
    with open(os.path.join(tmp, "www", "1k"), "wb") as f:
        f.write(b"x" * 1024)
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as f:
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        f.write(NGINX_CONF.format(tmp=tmp, port=port, nofile=nofile, connections=nofile - 64))
    nginx = procs.start("nginx", [shutil.which("nginx"), "-p", tmp, "-e", f"{tmp}/nginx-error.log",
                                  "-c", conf], core)
    wait_until("nginx listening", lambda: listening(port), nginx)
    return port


def bulk_app(port):
    """The bulk app (run as its own process): `U` + bytes -> answers the count; `D` + 8-byte
    size -> sends that many bytes, then closes."""
    listener = socket.create_server(("127.0.0.1", port), backlog=128)
    block = memoryview(bytearray(MIB))

    def serve(conn):
        with conn:
            kind = conn.recv(1)
            if kind == b"U":
                total, buffer = 0, bytearray(MIB)
                while n := conn.recv_into(buffer):
                    total += n
                conn.sendall(str(total).encode())
            elif kind == b"D":
                size = int.from_bytes(recv_exactly(conn, 8), "big")
                for _ in range(size // MIB):
                    conn.sendall(block)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def recv_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed early")
        data += chunk
    return data


# ---------------------------------------------------------------- the paths

class Path:
    """One way from the load to an app; `start` returns the port to use and its processes."""

    def __init__(self, label, kind, relay=None, pool=None, threads_per_user=0, idle=True):
        self.label, self.kind, self.relay, self.pool = label, kind, relay, pool
        self.threads_per_user, self.idle = threads_per_user, idle
        self.churn = kind in ("haproxy", "haproxy2", "stage3")  # the tunnel, and a production relay

    def start(self, procs, target, core, tag):
        name = f"{self.label}-{tag}".replace(" ", "_").replace(",", "").replace("(", "").replace(")", "")
        relay = ["--relay", self.relay] if self.relay else []
        if self.kind == "direct":
            return target, []
        port = free_port()
        if self.kind in ("haproxy", "haproxy2"):
            # Two hops: a second haproxy in front of the first, the shape of the tunnel (server
            # hop + client hop) built from a production relay.
            hops = [port]
            while self.kind == "haproxy2" and len(hops) < 2:
                hops += [p for p in [free_port()] if p != port]
            started = []
            for hop, (listen, forward) in reversed(list(enumerate(zip(hops, hops[1:] + [target])))):
                conf = os.path.join(procs.tmp, f"{name}-{hop}.cfg")
                with open(conf, "w") as f:
                    maxconn = (resource.getrlimit(resource.RLIMIT_NOFILE)[0] - 64) // 2  # two fds each
                    f.write(f"global\n  nbthread 1\n  maxconn {maxconn}\n"
                            f"defaults\n  mode tcp\n  timeout connect 5s\n"
                            f"  timeout client 10m\n  timeout server 10m\n"
                            f"listen relay\n  bind 127.0.0.1:{listen}\n  server app 127.0.0.1:{forward}\n")
                started.insert(0, procs.start(f"{name}-{hop}", ["haproxy", "-db", "-f", conf], core))
                wait_until(f"{self.label} listening", lambda: listening(listen), started[0])
            return port, started
        elif self.kind == "socat":
            started = [procs.start(name, ["socat", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,"
                                          f"backlog=4096", f"TCP:127.0.0.1:{target}"], core)]
        elif self.kind == "forwarder":
            started = [procs.start(name, [f"{BIN}/stage0-forwarder", "--listen", f"127.0.0.1:{port}"]
                                   + relay + [f"127.0.0.1:{target}"], core)]
        else:  # stage 3: the server, then the client; ready once the client has registered
            control, proxy = free_port(), free_port()
            ports = ["--control-port", str(control), "--proxy-port", str(proxy)]
            # Lift the user limits (1000 in all, 100 per address by default) where they exist.
            limits = ["--max-users", "40000", "--max-users-per-address", "40000"]
            server = procs.start(name + "-server", [f"{BIN}/stage3-server", "--public-port", str(port)]
                                 + (limits if accepts("stage3-server", "--max-users") else []) + ports + relay, core)
            wait_until("stage3-server listening", lambda: listening(control) and listening(port), server)
            pool = ["--pool", str(self.pool)] if self.pool is not None else []
            client = procs.start(name + "-client", [
                f"{BIN}/stage3-client", f"127.0.0.1:{target}", "127.0.0.1"]
                + (limits[:2] if accepts("stage3-client", "--max-users") else []) + ports + relay + pool, core)
            wait_until("stage3-client registered", lambda: b"registered with" in open(client.logpath, "rb").read(),
                       client)
            return port, [server, client]
        wait_until(f"{self.label} listening", lambda: listening(port), started[0])
        return port, started


# ---------------------------------------------------------------- the measurements

def wrk(port, connections, seconds):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "5s",
                          f"http://127.0.0.1:{port}/1k"], capture_output=True, text=True,
                         timeout=seconds + 60).stdout
    result = {"errors": 0}
    units = {"us": 1, "ms": 1e3, "s": 1e6}
    for line in out.splitlines():
        words = line.split()
        if words[:1] in (["50%"], ["99%"]):
            value = words[1]
            unit = next(u for u in ("us", "ms", "s") if value.endswith(u))
            result["p" + words[0][:2]] = float(value[:-len(unit)]) * units[unit]
        elif "requests in" in line:
            result["requests"] = int(words[0])
        elif line.startswith("Requests/sec:"):
            result["rps"] = float(words[1])
        elif line.strip().startswith("Socket errors:"):
            result["errors"] += sum(int(w.strip(",")) for w in words[3::2])
        elif line.strip().startswith("Non-2xx"):
            result["errors"] += int(words[-1])
    if "rps" not in result:
        raise RuntimeError(f"wrk printed no result: {out[-300:]!r}")
    return result


def read_response(sock):
    """Reads one HTTP response with a Content-Length (nginx's answer to GET /1k)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the response")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length:"))
    if len(body) < length:
        recv_exactly(sock, length - len(body))


def new_connection_latency(port, count):
    samples, failures = [], 0
    for _ in range(count):
        start = time.perf_counter()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                s.sendall(REQUEST_CLOSE)
                read_response(s)
            samples.append((time.perf_counter() - start) * 1e6)
        except OSError:
            failures += 1
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))], failures


def on_cores(cores, work):
    """Runs `work()` with this thread allowed on `cores`, then puts it back where it was."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        return work()
    finally:
        os.sched_setaffinity(0, before)


def bulk_up(port, size):
    block = memoryview(bytearray(MIB))
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"U")
        for _ in range(size // MIB):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64)
    if int(answer or 0) != size:
        raise RuntimeError(f"bulk up: the app received {answer!r} bytes, not {size}")
    return size / (time.perf_counter() - start) / 1e6


def bulk_down(port, size):
    buffer, total = bytearray(MIB), 0
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(b"D" + size.to_bytes(8, "big"))
        while n := s.recv_into(buffer):
            total += n
    if total != size:
        raise RuntimeError(f"bulk down: received {total} bytes, not {size}")
    return size / (time.perf_counter() - start) / 1e6


class PssSampler(threading.Thread):
    def __init__(self, roots):
        super().__init__(daemon=True)
        self.roots, self.peak, self.done = roots, 0.0, threading.Event()

    def run(self):
        while not self.done.wait(0.1):
            self.peak = max(self.peak, pss_mib(self.roots))


class ThreadSampler(threading.Thread):
    """The highest thread count of one process, sampled every 20 ms: a relay with a thread per
    user may hold thousands for a moment during a churn, and be back down a second later."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, threads(pid), threading.Event()

    def run(self):
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, threads(self.pid))
            except OSError:
                return  # it exited: the churn's other figures show it


def hold_idle_users(port, count, batch=250):
    """Opens `count` users in batches; each sends a GET and must get its answer. Returns the
    open sockets that did (the caller measures, then closes them). Stops after a batch in
    which nobody got an answer: the relay is full, and waiting on would only take time."""
    held, selector = [], selectors.DefaultSelector()
    for first in range(0, count, batch):
        if first and len(held) == held_before:
            break
        held_before, pending = len(held), {}
        for i in range(first, min(first + batch, count)):
            s = socket.socket()
            try:
                # 10,000 users from one address to one port fit in the ephemeral range; more
                # would not: spread them over 127.0.0.2, .3, ...
                s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                s.bind((f"127.0.0.{2 + i // 10000}", 0))
                s.settimeout(10)
                s.connect(("127.0.0.1", port))
                s.sendall(REQUEST_KEEP_ALIVE)
                s.setblocking(False)
                pending[s] = b""
                selector.register(s, selectors.EVENT_READ)
            except OSError:
                s.close()
        deadline = time.monotonic() + 15  # the server gives up on a proxy connection after 10 s
        while pending and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.5):
                s = key.fileobj
                try:
                    chunk = s.recv(65536)
                except OSError:
                    chunk = b""
                pending[s] += chunk
                if not chunk or answered(pending[s]):
                    selector.unregister(s)
                    if chunk:
                        held.append(s)
                    else:
                        s.close()
                    del pending[s]
        for s in pending:
            selector.unregister(s)
            s.close()
    return held


def answered(data):
    """True once `data` holds a whole response to GET /1k (headers, then 1 KiB)."""
    _, separator, body = data.partition(b"\r\n\r\n")
    return bool(separator) and len(body) >= 1024


def idle_capacity(path, wanted):
    """How many idle users this machine can give the path, and what limits it if not `wanted`:
    a relay with a thread per user runs out of PIDs (kernel.pid_max, keeping 4096 for
    everyone else), and every relay process needs two descriptors per user (ulimit -n)."""
    with open("/proc/sys/kernel/pid_max") as f:
        pid_max = int(f.read())
    with open("/proc/loadavg") as f:
        existing = int(f.read().split()[3].split("/")[1])
    limits = [(wanted, "")]
    if path.threads_per_user:
        limits.append(((pid_max - existing - 4096) // path.threads_per_user, "kernel.pid_max"))
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    limits.append(((nofile - 64) // 2, "ulimit -n"))
    users, reason = min(limits)
    return max(0, users), reason


def settle(pid, quiet=0.3, deadline=10):
    """Waits (up to `deadline` s) until the process's threads and descriptors have not moved for
    `quiet` s: the users of the step before are gone. Not until they are back to where they
    started: a relay may keep what the load made it grow (stage 3's events relay keeps a
    second event loop)."""
    end, last, since = time.monotonic() + deadline, None, time.monotonic()
    while time.monotonic() < end:
        now = threads_and_fds(pid)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.05)


def flood(port, users):
    """`users` users connect, send a GET and leave without reading, up to CHURN_IN_FLIGHT in
    their handshake at a time (a user whose SYN was dropped retries after 1 s: it must not hold
    up the others). Returns (users connected, users who could not, seconds)."""
    linger = struct.pack("ii", 1, 0)  # close = reset: no TIME_WAIT, so one address's ports suffice
    selector, started, connected, failed = selectors.DefaultSelector(), 0, 0, 0
    begin = time.monotonic()
    while (started < users or selector.get_map()) and time.monotonic() < begin + CHURN_DEADLINE:
        while started < users and len(selector.get_map()) < CHURN_IN_FLIGHT:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            s.setblocking(False)
            started += 1
            if s.connect_ex(("127.0.0.1", port)) in (0, errno.EINPROGRESS):
                selector.register(s, selectors.EVENT_WRITE)
            else:
                failed += 1
                s.close()
        for key, _ in selector.select(timeout=0.1):
            s = key.fileobj
            selector.unregister(s)
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                connected += 1
                try:
                    s.send(REQUEST_CLOSE)
                except OSError:
                    pass  # the relay turned it away already: it was leaving anyway
            else:
                failed += 1
            s.close()
    seconds = time.monotonic() - begin
    for key in list(selector.get_map().values()):  # still in their handshake at the deadline
        key.fileobj.close()
        failed += 1
    return connected, failed + users - started, seconds


def canary(port):
    """The canary (run as its own process): one user on one keep-alive connection, asking a GET
    every CANARY_EVERY s until SIGTERM. Prints `<time asked> ok|failed` per GET; CLOCK_MONOTONIC
    is one clock for every process, so the driver keeps the GETs asked during the churn."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    sock, next_ask = None, time.monotonic()
    while not stopping:
        asked = time.monotonic()
        try:
            if sock is None:
                sock = socket.create_connection(("127.0.0.1", port), timeout=CANARY_PATIENCE)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.sendall(REQUEST_KEEP_ALIVE)
            read_response(sock)
            ok = time.monotonic() - asked <= CANARY_PATIENCE
        except OSError:
            if sock is not None:
                sock.close()
            sock, ok = None, False  # a fresh connection for the next GET: this one's state is unknown
        print(f"{asked:.6f} {'ok' if ok else 'failed'}", flush=True)
        next_ask = max(next_ask + CANARY_EVERY, time.monotonic())
        time.sleep(max(0.0, next_ask - time.monotonic()))
    return 0


def logged(process, text):
    with open(process.logpath, "rb") as f:
        return text in f.read()


def churn(port, server, cfg, procs, tag):
    """The churn flood, with the canary and the server's thread count (see the docstring)."""
    helper = procs.start(f"canary-{tag}", [sys.executable, os.path.abspath(__file__), "--canary", str(port)],
                         ",".join(map(str, sorted(cfg.cores))))
    try:
        wait_until("the canary's first answer", lambda: logged(helper, b" ok\n"), helper)
        r = {"threads_before": threads(server.pid)}
        sampler = ThreadSampler(server.pid)
        begin = time.monotonic()
        sampler.start()
        try:
            connected, r["churn_failed"], seconds = flood(port, cfg.churn_users)
            time.sleep(CHURN_TAIL)
            r["threads_after"] = threads(server.pid)
        finally:
            sampler.done.set()
            sampler.join()
        end = time.monotonic()
        if helper.poll() is not None:
            raise RuntimeError(f"the canary exited early; its log ends: {log_tail(helper)}")
    finally:
        procs.stop(helper)
    with open(helper.logpath) as f:
        asks = [words[1] for words in map(str.split, f)
                if len(words) == 2 and words[1] in ("ok", "failed") and begin <= float(words[0]) <= end]
    r.update(churn_rate=connected / seconds, threads_max=sampler.peak,
             canary_asked=len(asks), canary_answered=asks.count("ok"))
    return r


def under_load(path, procs, cfg, apps, core, tag, r):
    """The second table's -c1000 and churn, on a fresh instance of the path: a thousand users and
    a flood leave threads, memory and sockets behind that would move the first table's figures."""
    port, started = path.start(procs, apps["nginx"], core, tag + "-load")
    roots = [p.pid for p in started]
    try:
        before = cpu_seconds(roots)
        load = wrk(port, 1000, cfg.seconds)
        cpu = cpu_seconds(roots) - before
        r["k_rps"], r["k_p99"], r["k_errors"] = load["rps"], load["p99"], load["errors"]
        if roots and load.get("requests"):
            r["k_cpu_us"] = cpu / load["requests"] * 1e6
        if path.churn:
            settle(roots[0])  # the thousand users' threads and sockets are gone
            r.update(churn(port, started[0], cfg, procs, tag))
    finally:
        for process in started:
            procs.stop(process)


def measure(path, procs, cfg, apps, core, tag, r):
    """Every figure of one path in one run, into `r` (kept so far if a step fails)."""
    port, started = path.start(procs, apps["nginx"], core, tag)
    roots = [p.pid for p in started]
    try:
        # Started with this driver's descriptor limit; none lowered its hard limit since.
        r["relay_nofile"] = min((hard_descriptor_limit(pid) for pid in roots), default=cfg.nofile)
        ka = wrk(port, 1, cfg.keepalive_seconds)
        r["ka_p50"], r["ka_p99"] = ka["p50"], ka["p99"]
        sampler = PssSampler(roots)
        sampler.start()
        try:
            before = cpu_seconds(roots)
            load = wrk(port, 64, cfg.seconds)
            cpu = cpu_seconds(roots) - before
        finally:
            sampler.done.set()
            sampler.join()
        r["rps"], r["errors"] = load["rps"], load["errors"]
        if roots and load.get("requests"):  # none: the app is gone, and wrk said so in errors
            r["cpu_us"] = cpu / load["requests"] * 1e6
            r["pss"] = sampler.peak
        before = cpu_seconds(roots)
        r["nc_p50"], r["nc_p99"], r["nc_failures"] = new_connection_latency(port, cfg.new_connections)
        if roots:
            r["nc_cpu_us"] = (cpu_seconds(roots) - before) / cfg.new_connections * 1e6
        # Again with the client on both CPUs, competing with the relay's own work (a refill).
        r["nc2_p50"], r["nc2_p99"], failures = on_cores(
            cfg.cores, lambda: new_connection_latency(port, cfg.new_connections))
        r["nc_failures"] += failures
        if path.idle and roots:
            users, r["idle_limit"] = idle_capacity(path, cfg.idle_users)
            r["idle_asked"] = users
            sockets = hold_idle_users(port, users)
            r["idle_held"] = len(sockets)
            for role, process in zip(("server", "client"), started):
                r[f"{role}_rss"], r[f"{role}_threads"], r[f"{role}_fds"] = footprint(process.pid)
            for s in sockets:
                s.close()
    finally:
        for process in started:
            procs.stop(process)
    under_load(path, procs, cfg, apps, core, tag, r)
    # Bulk through a third instance of the path, in front of the bulk app (stage 3 serves one app).
    port, started = path.start(procs, apps["bulk"], core, tag + "-bulk")
    try:
        r["up"] = bulk_up(port, cfg.bulk_mib * MIB)
        r["down"] = bulk_down(port, cfg.bulk_mib * MIB)
    finally:
        for process in started:
            procs.stop(process)


# ---------------------------------------------------------------- the table

def median(values):
    return statistics.median(values) if values else None


def formatters(path, runs, direct_runs, spread):
    """The cells of one path: medians, or (spread=True) min–max, of each figure over the runs."""
    def figure(key, fmt, relative=None):
        """`relative`: None for the value itself, "ratio" or "added" for it against direct's."""
        values = []
        for r, d in zip(runs, direct_runs):
            if relative and path.kind != "direct":
                if key in r and key in d:
                    values.append(r[key] / d[key] if relative == "ratio" else r[key] - d[key])
            elif key in r:
                values.append(r[key])
        if not values:
            return "–"
        if spread:
            return f"{fmt(min(values))}–{fmt(max(values))}" if len(values) > 1 else "–"
        return fmt(median(values))

    def with_ratio(key, fmt):
        absolute = figure(key, fmt)
        if path.kind == "direct":
            return absolute
        return f"{absolute} ({figure(key, lambda v: f'{v:.2f}×', 'ratio')})"

    def added(key):
        if path.kind == "direct":
            return figure(key, lambda v: f"{v:.0f}")
        return figure(key, lambda v: f"{v:+.0f}", "added")

    return figure, with_ratio, added


def cells(path, runs, direct_runs, spread):
    """The row of one path in the first table."""
    figure, with_ratio, added = formatters(path, runs, direct_runs, spread)

    def idle():
        if not path.idle or path.kind == "direct":
            return "–", "–", "–"
        held = figure("idle_held", lambda v: f"{v:.0f}")
        asked = [r["idle_asked"] for r in runs if "idle_asked" in r]
        limits = sorted({r["idle_limit"] for r in runs if r.get("idle_limit")})
        if asked and not spread and held != f"{median(asked):.0f}":
            held += f" of {median(asked):.0f}"
        if limits and not spread:
            held += f" (limit: {', '.join(limits)})"
        def side(role):
            if not any(f"{role}_rss" in r for r in runs):
                return "–"
            return " / ".join(figure(f"{role}_{k}", lambda v: f"{v:.0f}") for k in ("rss", "threads", "fds"))
        return held, side("server"), side("client")

    return [path.label,
            with_ratio("up", lambda v: f"{v:.0f}"),
            with_ratio("down", lambda v: f"{v:.0f}"),
            f"{added('ka_p50')} / {added('ka_p99')}",
            f"{added('nc_p50')} / {added('nc_p99')}",
            figure("nc_cpu_us", lambda v: f"{v:.0f}"),
            with_ratio("rps", lambda v: f"{v:,.0f}"),
            figure("errors", lambda v: f"{v:.0f}"),
            figure("cpu_us", lambda v: f"{v:.1f}"),
            figure("pss", lambda v: f"{v:.1f}"),
            *idle()]


def load_cells(path, runs, direct_runs, spread):
    """The row of one path in the second table, under load."""
    figure, with_ratio, added = formatters(path, runs, direct_runs, spread)
    whole = lambda v: f"{v:.0f}"

    def churn():
        if not path.churn:
            return "–", "–", "–"
        rate = figure("churn_rate", lambda v: f"{v:,.0f}")
        failed = max((r.get("churn_failed", 0) for r in runs), default=0)
        if failed and not spread:
            rate += f" ({failed} failed)"  # the worst run's
        threads_cell = " / ".join(figure(f"threads_{k}", whole) for k in ("before", "max", "after"))
        return rate, threads_cell, f"{figure('canary_answered', whole)} / {figure('canary_asked', whole)}"

    return [path.label,
            f"{added('nc2_p50')} / {added('nc2_p99')}",
            with_ratio("k_rps", lambda v: f"{v:,.0f}"),
            figure("k_p99", lambda v: f"{v / 1000:.1f}"),
            figure("k_errors", whole),
            figure("k_cpu_us", lambda v: f"{v:.1f}"),
            *churn()]


HEADER = ["path", "bulk up MB/s", "bulk down MB/s", "keep-alive p50 / p99 µs",
          "new conn p50 / p99 µs", "CPU/new conn µs", "-c64 req/s", "errors", "CPU/req µs", "peak PSS MiB",
          "idle users held", "server RSS MiB / threads / fds", "client RSS MiB / threads / fds"]
LOAD_HEADER = ["path", "new conn p50 / p99 µs, load on both cores", "-c1000 req/s", "-c1000 p99 ms",
               "-c1000 errors", "CPU/req µs at -c1000", "churn: users/s", "server threads before / max / after",
               "canary answered / asked"]


def table(header, row, paths, results, spread):
    rows = [row(p, results[p.label], results[paths[0].label], spread) for p in paths]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- main

@functools.cache
def accepts(executable, flag):
    """Whether the executable's --help mentions the flag: the benchmark measures what exists."""
    out = subprocess.run([f"{BIN}/{executable}", "--help"], capture_output=True, text=True, timeout=10)
    return flag in out.stdout + out.stderr


def choose_paths(cfg):
    notes = []
    paths = [Path("direct", "direct", idle=False), Path("haproxy, one hop", "haproxy"),
             Path("haproxy, two hops", "haproxy2"),
             Path("socat, one hop", "socat", idle=False)]
    if accepts("stage0-forwarder", "--relay"):
        paths += [Path(f"stage0-forwarder ({r})", "forwarder", relay=r, threads_per_user=2 if r == "threads" else 0)
                  for r in ("threads", "events")]
    else:
        paths.append(Path("stage0-forwarder", "forwarder", threads_per_user=2))
        notes.append("stage0-forwarder has no --relay flag: its one relay (threads) was measured.")
    three_relays = accepts("stage3-server", "--relay") and accepts("stage3-client", "--relay")
    pools = [0, cfg.pool] if accepts("stage3-client", "--pool") else [None]
    if pools == [None]:
        notes.append("stage3-client has no --pool flag: no proxy pool was measured.")
    if not three_relays:
        notes.append("stage3-server/-client have no --relay flag: their one relay (threads) was measured.")
    for relay in ("threads", "events") if three_relays else (None,):
        for pool in pools:
            words = [w for w in (relay, None if pool is None else f"pool {pool}" if pool else "no pool") if w]
            label = "stage 3, two hops" + (f" ({', '.join(words)})" if words else "")
            paths.append(Path(label, "stage3", relay=relay, pool=pool,
                              threads_per_user=0 if relay == "events" else 4))
    if cfg.only:
        wanted = only_terms(cfg.only, [p.label for p in paths])
        paths = [paths[0]] + [p for p in paths[1:] if any(term in p.label for term in wanted)]
    return paths, notes


def only_terms(text, labels):
    """--only's comma-separated substrings. A comma that is part of a label stays in its term:
    "haproxy, two hops" is one label's, "two hops,socat" two terms."""
    terms = []
    for piece in text.split(","):
        if terms and any(f"{terms[-1]},{piece}" in label for label in labels):
            terms[-1] += f",{piece}"
        else:
            terms.append(piece)
    return [term.strip() for term in terms if term.strip()]


def raise_descriptor_limit():
    """10,000 idle users need 20,000+ descriptors in each relay process: raise the limit as far
    as allowed (every process started later inherits it). Returns the limit, and why it is not
    fs.nr_open (the most the kernel gives) when it is not."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open("/proc/sys/fs/nr_open") as f:
        wanted = max(hard, int(f.read()))
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
    except (OSError, ValueError):  # Python says ValueError for EPERM here
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return limit, "" if limit >= wanted else why_not_raised()


def why_not_raised():
    """Raising a hard limit needs CAP_SYS_RESOURCE. Root in a container or VM may lack it, even
    in its bounding set, and then no process there can raise it: only the host can."""
    with open("/proc/self/status") as f:
        caps = {k: int(v, 16) for k, v in (line.split(":") for line in f if line.startswith("Cap"))}
    if not caps["CapBnd"] >> CAP_SYS_RESOURCE & 1:
        return "the hard limit; raising it needs CAP_SYS_RESOURCE, which this machine withholds from every process"
    if not caps["CapEff"] >> CAP_SYS_RESOURCE & 1:
        return "the hard limit; raising it needs root (CAP_SYS_RESOURCE)"
    return "the hard limit; setrlimit refused to raise it"


def report(cfg, paths, results, notes, minutes, cores):
    with open("/proc/loadavg") as f:
        load_average = f.read().split()[0]
    why = f" ({cfg.nofile_why})" if cfg.nofile_why else ""
    print(f"\n{cfg.runs} run(s) in {minutes:.1f} min on Linux {os.uname().release} (load average {load_average} "
          f"at the end); nginx + relays on CPU {cores[0]}, load on CPU {cores[-1]}; wrk -c64 and -c1000 "
          f"{cfg.seconds} s each, keep-alive {cfg.keepalive_seconds} s, {cfg.new_connections} new connections "
          f"(load on CPU {cores[-1]}, then on both), bulk {cfg.bulk_mib} MiB each way, {cfg.idle_users} idle users, "
          f"{cfg.churn_users} users churned; ulimit -n {cfg.nofile} for every process{why}.")
    print("Medians. Bulk and req/s: value (× direct). Latency: direct's own, others' added (+µs).\n")
    print(table(HEADER, cells, paths, results, spread=False))
    print("\nUnder load (medians; a fresh instance of each path, but for new conn on both cores):\n")
    print(table(LOAD_HEADER, load_cells, paths, results, spread=False))
    if cfg.runs > 1:
        print("\nSpread over the runs (min–max of the same figures; ratios and added latency per run):\n")
        print(table(HEADER, cells, paths, results, spread=True))
        print("\nSpread under load:\n")
        print(table(LOAD_HEADER, load_cells, paths, results, spread=True))
    if notes:
        print()
    for note in notes:
        print(f"- {note}")


def positive(text):
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number above 0, got {text!r}")
    return int(text)


def main():
    parser = argparse.ArgumentParser(prog=".ci/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 run, 1-2 s loads, 128 MiB bulk, 300 new connections, 1000 idle users, "
                             "1000 users churned")
    parser.add_argument("--runs", type=positive, help="runs of every path; medians are taken over them (default 3)")
    parser.add_argument("--seconds", type=positive, help="duration of the wrk -c64 load, and of -c1000 (default 10)")
    parser.add_argument("--keepalive-seconds", type=positive, help="duration of the wrk -c1 latency run (default 5)")
    parser.add_argument("--new-connections", type=positive, help="connections for new-connection latency (default 2000)")
    parser.add_argument("--bulk-mib", type=positive, help="bulk transfer size each way, MiB (default 1024)")
    parser.add_argument("--idle-users", type=positive, help="concurrent idle users to hold (default 10000)")
    parser.add_argument("--churn-users", type=positive, help="users connecting and leaving in the churn (default 10000)")
    parser.add_argument("--pool", type=positive, default=4, help="pool size when stage3-client has --pool (default 4)")
    parser.add_argument("--only", help="measure only the paths whose label contains one of these, comma-separated "
                                       "(direct always): --only 'two hops,socat'; a label's own comma stays in "
                                       "its term: --only 'haproxy, two hops'")
    parser.add_argument("--bin", help="where the executables are (default .build/release, built by .ci/bench)")
    parser.add_argument("--bulk-app", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--canary", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--check-arguments", action="store_true", help=argparse.SUPPRESS)
    cfg = parser.parse_args()
    if cfg.check_arguments:  # .ci/bench asks before it installs and builds
        return 0
    if cfg.bulk_app:
        return bulk_app(cfg.bulk_app)
    if cfg.canary:
        return canary(cfg.canary)
    if cfg.bin:
        global BIN
        BIN = os.path.abspath(cfg.bin)
    defaults = dict(runs=3, seconds=10, keepalive_seconds=5, new_connections=2000, bulk_mib=1024, idle_users=10000,
                    churn_users=10000)
    if cfg.quick:
        defaults = dict(runs=1, seconds=2, keepalive_seconds=1, new_connections=300, bulk_mib=128, idle_users=1000,
                        churn_users=1000)
    for key, value in defaults.items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)

    for tool in ("wrk", "haproxy", "socat", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found: run .ci/bench, which installs it (apt-get install wrk haproxy socat nginx-light)")
    for executable in ("stage0-forwarder", "stage3-server", "stage3-client"):
        if not os.access(f"{BIN}/{executable}", os.X_OK):
            sys.exit(f"bench: {BIN}/{executable} missing: run .ci/bench, which builds release first")

    cores = sorted(os.sched_getaffinity(0))
    app_core, load_core = cores[0], cores[-1]
    if len(cores) < 2:
        log("only one CPU: the load and the relays share it, so the figures mean little")
    cfg.cores = set(cores)
    os.sched_setaffinity(0, {load_core})  # this driver is load; wrk inherits it
    cfg.nofile, cfg.nofile_why = raise_descriptor_limit()
    if cfg.nofile < 2 * cfg.idle_users + 64:
        log(f"ulimit -n is {cfg.nofile} and cannot be raised here ({cfg.nofile_why}): "
            f"fewer idle users than {cfg.idle_users}")

    paths, notes = choose_paths(cfg)
    # Ctrl-C and kill both end in the cleanup below (SIGINT is ignored in background jobs
    # unless a handler is set).
    def interrupted(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, interrupted)
    signal.signal(signal.SIGTERM, interrupted)
    tmp = tempfile.mkdtemp(prefix="ngrok-bench-")
    procs = Processes(tmp)
    started_at = time.monotonic()
    try:
        apps = {"nginx": start_nginx(procs, tmp, app_core), "bulk": free_port()}
        bulk = procs.start("bulk-app", [sys.executable, os.path.abspath(__file__), "--bulk-app", str(apps["bulk"])],
                           app_core)
        wait_until("the bulk app listening", lambda: listening(apps["bulk"]), bulk)
        results = {p.label: [] for p in paths}
        for run in range(cfg.runs):
            for path in paths:
                log(f"run {run + 1}/{cfg.runs}: {path.label}")
                r = {}
                results[path.label].append(r)
                try:
                    measure(path, procs, cfg, apps, app_core, f"run{run + 1}", r)
                except (OSError, RuntimeError, subprocess.SubprocessError) as error:
                    log(f"{path.label} failed: {error}")
                    notes.append(f"{path.label}, run {run + 1}: failed ({error}); figures after it are missing")
                if r.get("nc_failures"):
                    notes.append(f"{path.label}, run {run + 1}: {r['nc_failures']} new connections failed")
                if r.get("relay_nofile", cfg.nofile) < cfg.nofile:
                    notes.append(f"{path.label}, run {run + 1}: a relay's hard ulimit -n is {r['relay_nofile']}, "
                                 f"below the {cfg.nofile} it was started with")
        minutes = (time.monotonic() - started_at) / 60
    except KeyboardInterrupt:
        log("interrupted: stopping everything")
        return 130
    except (OSError, RuntimeError) as error:  # an app would not start: nothing to measure against
        log(f"cannot run: {error}")
        return 1
    finally:
        procs.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)

    report(cfg, paths, results, notes, minutes, cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
