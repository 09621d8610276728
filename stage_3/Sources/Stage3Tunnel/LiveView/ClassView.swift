// The live view in class mode: what the instructor projects. `/` lists every tunnel (name,
// public port, state, users now and in all, bytes), refreshed each second from `/state`, and
// each row opens that tunnel's own diagram at /tunnel/<name>/, drawn by an inspector of its
// own (Inspector's `servedBy` init), fed that tunnel's events only.

import Stage0Pipe
import Stage2Proxy

public final class ClassView: Sendable {
    /// The class's tunnels as they are now (ClassServer's `summaries`).
    private let rows: @Sendable () -> [TunnelSummary]
    private let inspectors = Locked<[String: Inspector]>([:])
    /// Tunnel pages streaming now, across all tunnels: at most `maxStreams`, so that streams
    /// (16 a tunnel) never take every connection of the page server, and the class list, which
    /// the instructor projects, always has room for its requests.
    private let streams = Locked(0)
    private let maxStreams = Locked(48)
    /// The inspector that serves the pages; set once, when it starts.
    private let parent = Locked<Inspector?>(nil)
    /// The class server's `listening` event, the start of every tunnel's diagram.
    private let listening = Locked<(control: Endpoint, proxy: Endpoint, relay: RelayChoice)?>(nil)

    public init(rows: @escaping @Sendable () -> [TunnelSummary]) {
        self.rows = rows
    }

    /// Records one event of the class server: a tunnel's own go to its page.
    public func record(_ event: ClassServerEvent) {
        switch event {
        case let .listening(control, proxy, _, _, relay):
            listening.withLock { $0 = (control, proxy ?? control, relay) }
        case let .opened(name, publicEndpoint, _):
            guard let parent = parent.current, let inspector = try? Inspector(title: "server: \(name)", servedBy: parent)
            else { return }
            if let (control, proxy, relay) = listening.current {
                inspector.record(.listening(control: control, public: publicEndpoint, proxy: proxy, relay: relay))
            }
            inspectors.withLock { $0.updateValue(inspector, forKey: name) }?.stop()
        case .closed(let name, _, _):
            inspectors.withLock { $0.removeValue(forKey: name) }?.stop()
        case .tunnel(let name, let event):
            inspectors.current[name]?.record(event)
        case .door, .reclaimed, .claimRefused, .portSkipped, .holderGone:
            break
        }
    }

    /// `inspector` serves the pages, with `connections` at most: the streams leave 16 of them free.
    func attach(to inspector: Inspector, connections: Int) {
        parent.withLock { $0 = inspector }
        maxStreams.withLock { $0 = max(1, connections - 16) }
    }

    func stopAll() {
        for inspector in inspectors.exchange([:]).values { inspector.stop() }
    }

    /// `/`, `/state`, or a tunnel's `/tunnel/<name>/…`.
    func answer(_ connection: Connection, path: String, timeout: Duration, requestDone: () -> Void) {
        switch path {
        case "/":
            respond(connection, "200 OK", type: "text/html; charset=utf-8", body: classPage, timeout: timeout)
        case "/state":
            respond(connection, "200 OK", type: "application/json", body: stateJSON, timeout: timeout)
        default:
            let parts = path.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false)
            // "/tunnel/alice/events" splits into "", "tunnel", "alice/events".
            if parts.count == 3, parts[1] == "tunnel" {
                let rest = parts[2].split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
                if let inspector = inspectors.current[String(rest[0])] {
                    guard rest.count == 2 else {  // /tunnel/alice: relative links need the slash
                        return respond(connection, "301 Moved Permanently", type: "text/plain", body: "",
                                       extraHeaders: "Location: /tunnel/\(rest[0])/\r\n", timeout: timeout)
                    }
                    guard rest[1] == "events" else {
                        return inspector.answer(connection, path: "/" + rest[1], requestDone: requestDone)
                    }
                    let limit = maxStreams.current
                    let admitted = streams.withLock { count -> Bool in
                        guard count < limit else { return false }
                        count += 1
                        return true
                    }
                    guard admitted else {
                        return respond(connection, "503 Service Unavailable", type: "text/plain; charset=utf-8",
                                       body: "too many tunnel pages open (\(limit)); the class list at / still works\n",
                                       timeout: timeout)
                    }
                    defer { streams.withLock { $0 -= 1 } }
                    return inspector.answer(connection, path: "/events", requestDone: requestDone)
                }
            }
            respond(connection, "404 Not Found", type: "text/plain; charset=utf-8",
                    body: "not found: \(path) (this server has /, /state and /tunnel/<name>/ for each tunnel)\n",
                    timeout: timeout)
        }
    }

    /// `{"title":"class","tunnels":[{"name":…,"port":…,"state":…,"usersNow":…,"usersTotal":…,"bytes":…}]}`
    var stateJSON: String {
        var object = JSONObject()
        object.field("title", "class")
        object.field("tunnels", rows())
        return object.text
    }
}

extension TunnelSummary: JSONObjectWritable {
    func write(to object: inout JSONObject) {
        object.field("name", name)
        object.field("port", Int(port))
        object.field("state", state)
        object.field("usersNow", usersNow)
        object.field("usersTotal", usersTotal)
        object.field("bytes", bytes)
    }
}

/// The class page: a table, refreshed from /state each second (no event stream: a table of a
/// few dozen rows is cheap to fetch, and a projector does not need every event).
let classPage = """
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ngrok-- class</title>
<style>
  body { font: 16px system-ui, sans-serif; margin: 2em; }
  table { border-collapse: collapse; min-width: 40em; }
  th, td { padding: .4em .8em; border-bottom: 1px solid #ddd; text-align: left; }
  td.n { text-align: right; font-variant-numeric: tabular-nums; }
  .online { color: #176f2c; } .gone { color: #a33; } .connecting { color: #777; }
</style></head>
<body>
<h1>ngrok-- class: <span id="count">0</span> tunnels</h1>
<p>Each student's app is at this server's address, on their port. Click a name for its diagram.</p>
<table><thead><tr><th>name</th><th>public port</th><th>state</th><th>users now</th><th>users in all</th><th>bytes</th></tr></thead>
<tbody id="rows"></tbody></table>
<p id="status">loading…</p>
<script>
const $ = id => document.getElementById(id);
function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text;
  if (className) td.className = className;
  return td;
}
async function refresh() {
  try {
    const state = await (await fetch("state")).json();
    $("count").textContent = state.tunnels.length;
    $("rows").replaceChildren(...state.tunnels.map(t => {
      const tr = document.createElement("tr");
      const name = document.createElement("td"), link = document.createElement("a");
      link.href = "tunnel/" + encodeURIComponent(t.name) + "/";
      link.textContent = t.name;
      name.appendChild(link);
      tr.append(name, cell(t.port, "n"),
                cell(t.state, t.state === "online" ? "online" : t.state === "client gone" ? "gone" : "connecting"),
                cell(t.usersNow, "n"), cell(t.usersTotal, "n"), cell(t.bytes, "n"));
      return tr;
    }));
    $("status").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    $("status").textContent = "cannot reach the server: " + error;
  }
}
refresh();
setInterval(refresh, 1000);
</script>
</body></html>

"""
