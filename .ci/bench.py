#!/usr/bin/env python3
"""Benchmarks for ngrok-- in Swift (not run by CI; speed is checked here, never by timed tests).

Measures on loopback, with release builds:
  - bulk throughput: 1 GiB sent directly, through stage0-forwarder, and through the stage 3 tunnel;
  - connection rate: short request/echo connections per second through the forwarder;
  - memory and threads of the forwarder holding 1,000 open connections.
Usage: .ci/bench  (builds release first)
"""
import os, socket, subprocess, sys, threading, time

BIN = os.path.join(os.path.dirname(__file__), "..", ".build", "release")
GIB = 1 << 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(port, handler):
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1024)

    def loop():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=handler, args=(conn,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return listener


def sink(conn):  # reads everything, then answers with the byte count
    total = 0
    while chunk := conn.recv(1 << 20):
        total += len(chunk)
    conn.sendall(str(total).encode())
    conn.close()


def echo(conn):
    while chunk := conn.recv(65536):
        conn.sendall(chunk)
    conn.close()


def wait_for_port(port, deadline=10):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listening on {port}")


def bulk(port, size=GIB):
    block = os.urandom(1 << 20)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s:
        for _ in range(size // len(block)):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        answer = s.recv(64)
    elapsed = time.perf_counter() - start
    assert int(answer) == size, answer
    return size / elapsed / 1e6


def rate(port, count=2000):
    start = time.perf_counter()
    for i in range(count):
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
    return count / (time.perf_counter() - start)


def proc_status(pid):
    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
    return int(fields["VmRSS"].split()[0]) // 1024, int(fields["VmHWM"].split()[0]) // 1024, int(fields["Threads"])


def cpu_seconds(pid):
    parts = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def main():
    procs = []
    try:
        sink_port, echo_port = free_port(), free_port()
        serve(sink_port, sink)
        serve(echo_port, echo)

        fwd_sink, fwd_echo = free_port(), free_port()
        procs.append(subprocess.Popen([f"{BIN}/stage0-forwarder", "--listen", f"127.0.0.1:{fwd_sink}",
                                       f"127.0.0.1:{sink_port}"], stderr=subprocess.DEVNULL))
        forwarder = subprocess.Popen([f"{BIN}/stage0-forwarder", "--listen", f"127.0.0.1:{fwd_echo}",
                                      f"127.0.0.1:{echo_port}"], stderr=subprocess.DEVNULL)
        procs.append(forwarder)
        control, public, proxy = free_port(), free_port(), free_port()
        ports = ["--control-port", str(control), "--proxy-port", str(proxy)]
        server = subprocess.Popen([f"{BIN}/stage3-server", "--public-port", str(public)] + ports, stderr=subprocess.DEVNULL)
        procs.append(server)
        wait_for_port(control)
        client = subprocess.Popen([f"{BIN}/stage3-client", f"127.0.0.1:{sink_port}"] + ports, stderr=subprocess.DEVNULL)
        procs.append(client)
        for port in (fwd_sink, fwd_echo):
            wait_for_port(port)
        time.sleep(0.5)  # let the client register (a benchmark, not a test)

        print("bulk 1 GiB, MB/s (best of 3):")
        print(f"  direct            {max(bulk(sink_port) for _ in range(3)):8.0f}")
        before = cpu_seconds(procs[0].pid)
        print(f"  stage0-forwarder  {max(bulk(fwd_sink) for _ in range(3)):8.0f}"
              f"   (forwarder CPU {(cpu_seconds(procs[0].pid) - before) / 3:.2f} s/GiB)")
        before = cpu_seconds(server.pid) + cpu_seconds(client.pid)
        print(f"  stage 3 tunnel    {max(bulk(public) for _ in range(3)):8.0f}"
              f"   (server+client CPU {(cpu_seconds(server.pid) + cpu_seconds(client.pid) - before) / 3:.2f} s/GiB)")

        print(f"connections/s through the forwarder: {rate(fwd_echo):.0f} (direct: {rate(echo_port):.0f})")

        held = [socket.create_connection(("127.0.0.1", fwd_echo)) for _ in range(1000)]
        for s in held:
            s.sendall(b"y")
        for s in held:
            assert s.recv(1) == b"y"
        rss, peak, threads = proc_status(forwarder.pid)
        print(f"forwarder holding 1000 connections: RSS {rss} MiB, peak {peak} MiB, {threads} threads")
        for s in held:
            s.close()
        time.sleep(1)
        rss, peak, threads = proc_status(forwarder.pid)
        print(f"after closing them: RSS {rss} MiB, {threads} threads")
    finally:
        for p in procs:
            p.terminate()


if __name__ == "__main__":
    main()
