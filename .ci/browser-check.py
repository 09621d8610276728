#!/usr/bin/env python3
"""The live view in headless Chromium (run by .ci/browser-check, which builds and installs first).

1. Starts `stage3-demo --inspect=127.0.0.1:0` and reads the page's address from its log.
2. Opens the page with `?follow=<address>` for a user socket bound but not yet connected,
   and waits (GET /state, `viewers`) until the page has its event stream: from then on, the
   page's snapshot is taken, and whatever it shows about that user came from the stream.
3. Sends the user through the tunnel. The page freezes once that user has finished, which
   ends its stream, so Chromium can finish and dump the DOM (--dump-dom waits for pending
   requests under --virtual-time-budget: an open stream would hold it forever).
4. Checks the user's row: step 5, finished, the byte counts the user really sent and got,
   and the log panel's line for it. Then once more with --screenshot.
5. Class mode: a `stage3-server --ports` with two named clients; the class page (what the
   instructor projects) must list both, each name linking to its tunnel's own diagram.
"""
import html.parser, json, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

BIN = os.path.join(os.path.dirname(__file__), "..", ".build", "debug")
DEMO = os.path.join(BIN, "stage3-demo")
REQUEST = b"GET /browser-check HTTP/1.0\r\nHost: live-view\r\n\r\n"
DEADLINE = 30  # seconds, for any one wait


def fail(message):
    sys.exit(f"browser-check: FAILED: {message}")


def wait_until(condition, what):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            fail(f"{what} did not happen within {DEADLINE} s")
        time.sleep(0.05)


def state(url):
    with urllib.request.urlopen(url + "state", timeout=DEADLINE) as response:
        return json.load(response)


def start_demo(log):
    demo = subprocess.Popen([DEMO, "--inspect=127.0.0.1:0"], stdout=log, stderr=subprocess.PIPE, text=True)
    line = demo.stderr.readline()  # the demo's first log line names the page
    if "live view: open " not in line:
        fail(f"stage3-demo did not start its live view: {line.strip()!r} (log: {log.name})")
    return demo, line.split("live view: open ")[1].split()[0]


def chromium(url, extra):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or fail("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="browser-check-")
    return subprocess.Popen(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
         f"--user-data-dir={profile}", "--virtual-time-budget=2500", *extra, url],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def user_passes_while_watched(url, extra):
    """Opens the page following a new user, sends that user through, returns what the user saw."""
    wait_until(lambda: state(url)["viewers"] == 0, "the previous page leaving")
    user = socket.socket()
    user.bind(("127.0.0.1", 0))
    address = "%s:%d" % user.getsockname()
    browser = chromium(f"{url}?follow={address}", extra)
    try:
        wait_until(lambda: state(url)["viewers"] == 1, "the page opening its event stream")
        host, port = state(url)["endpoints"]["public"].rsplit(":", 1)
        user.settimeout(DEADLINE)
        user.connect((host, int(port)))
        user.sendall(REQUEST)
        response = b""
        while chunk := user.recv(65536):
            response += chunk
        user.close()
        dom, _ = browser.communicate(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        fail("Chromium did not finish: the page never froze on the user it followed")
    finally:
        if browser.poll() is None:
            browser.kill()
    return address, response, dom


class Row(html.parser.HTMLParser):
    """Finds the <tr data-user=…> of one user, the status and the log panel."""

    def __init__(self, address):
        super().__init__()
        self.address, self.attrs, self.cells, self.status, self.log = address, None, [], "", ""
        self.where = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr" and attrs.get("data-user") == self.address:
            self.attrs, self.where = attrs, "row"
        elif tag == "tr":
            self.where = None
        elif attrs.get("id") in ("status", "log"):
            self.where = attrs["id"]

    def handle_endtag(self, tag):
        if tag in ("span", "div") and self.where in ("status", "log"):
            self.where = None

    def handle_data(self, data):
        if self.where == "row":
            self.cells.append(data)
        elif self.where == "status":
            self.status += data
        elif self.where == "log":
            self.log += data


def check_row(address, response, dom):
    row = Row(address)
    row.feed(dom)
    if row.attrs is None:
        fail(f"no row for user {address} in the page")
    sent, received = len(REQUEST), len(response)
    expected = {"data-step": "5", "data-ending": "finished", "data-sent": str(sent), "data-received": str(received)}
    for name, value in expected.items():
        if row.attrs.get(name) != value:
            fail(f"user {address}: {name} is {row.attrs.get(name)!r}, expected {value!r}")
    for text in (f"{sent} B", f"{received} B", "finished"):
        if text not in row.cells:
            fail(f"user {address}: the row shows {row.cells}, without {text!r}")
    if "frozen" not in row.status:
        fail(f"the page did not freeze on {address}: status {row.status!r}")
    line = f"[5] user {address} finished: sent {sent} bytes, received {received} bytes"
    if line not in row.log:
        fail(f"the page's log lacks the log's own line {line!r}")
    print(f"browser-check: user {address} reached step 5 on the page: sent {sent} B, received {received} B")


class ClassTable(html.parser.HTMLParser):
    """The class page's rows: each row's cells, and the links of its name cell."""

    def __init__(self):
        super().__init__()
        self.rows, self.links, self.inside = [], [], False

    def handle_starttag(self, tag, attrs):
        if tag == "tbody":
            self.inside = True
        elif tag == "tr" and self.inside:
            self.rows.append([])
        elif tag == "a" and self.inside:
            self.links.append(dict(attrs).get("href"))

    def handle_endtag(self, tag):
        if tag == "tbody":
            self.inside = False

    def handle_data(self, data):
        if self.inside and self.rows:
            self.rows[-1].append(data)


def check_class_page(log):
    """Two students on a class-mode server: the class page lists both, with their ports."""
    server = subprocess.Popen([os.path.join(BIN, "stage3-server"), "--ports", "61500-61509", "--control-port", "0",
                               "--proxy-port", "0", "--inspect", "127.0.0.1:0"],
                              stdout=log, stderr=subprocess.PIPE, text=True)
    processes = [server]
    try:
        url = control = proxy = None
        while not (url and control):
            line = server.stderr.readline() or fail("stage3-server (class mode) exited before it listened")
            if "live view: open " in line:
                url = line.split("live view: open ")[1].split()[0]
            if "class mode: clients on " in line:
                control = line.split("clients on ")[1].split(",")[0].rsplit(":", 1)[1]
                proxy = line.split("proxy connections on ")[1].split(";")[0].rsplit(":", 1)[1]
        apps = []
        for name in ("ada", "grace"):
            app = socket.socket()
            app.bind(("127.0.0.1", 0))
            app.listen(8)
            apps.append(app)
            processes.append(subprocess.Popen(
                [os.path.join(BIN, "stage3-client"), "127.0.0.1:%d" % app.getsockname()[1], "--name", name,
                 "--control-port", control, "--proxy-port", proxy], stdout=log, stderr=log))
        wait_until(lambda: sorted(t["name"] for t in state(url)["tunnels"] if t["state"] == "online") == ["ada", "grace"],
                   "both students' tunnels online")
        tunnels = {t["name"]: t["port"] for t in state(url)["tunnels"]}
        browser = chromium(url, ["--dump-dom"])
        try:
            dom, _ = browser.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            browser.kill()
            fail("Chromium did not finish the class page")
        table = ClassTable()
        table.feed(dom)
        shown = {row[0]: row[1] for row in table.rows if len(row) >= 3}
        if shown != {name: str(port) for name, port in tunnels.items()}:
            fail(f"the class page shows {table.rows}, expected the tunnels {tunnels}")
        if table.links != ["tunnel/ada/", "tunnel/grace/"]:
            fail(f"the class page's links are {table.links}")
        print(f"browser-check: the class page lists {', '.join(f'{n} on {p}' for n, p in tunnels.items())}")
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGINT)
            process.wait(timeout=DEADLINE)


def main():
    screenshot = os.path.abspath(sys.argv[1])
    started = time.monotonic()
    with tempfile.NamedTemporaryFile("w", prefix="stage3-demo-", suffix=".log", delete=False) as log:
        demo, url = start_demo(log)
        try:
            check_row(*user_passes_while_watched(url, ["--dump-dom"]))
            user_passes_while_watched(url, [f"--screenshot={screenshot}", "--window-size=1280,1120"])
            if not os.path.getsize(screenshot):
                fail(f"no screenshot in {screenshot}")
            print(f"browser-check: screenshot in {screenshot}")
        finally:
            demo.send_signal(signal.SIGINT)
            demo.wait(timeout=DEADLINE)
        check_class_page(log)
    print(f"browser-check: passed in {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
