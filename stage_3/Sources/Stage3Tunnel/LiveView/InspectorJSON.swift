// The live view's JSON (GET /state, and each event the page is streamed), written by hand:
// the tunnel's processes do not link Foundation, whose JSONEncoder would cost each of them
// megabytes of memory, for a few structs of strings and numbers (InspectorState.swift).

/// A value sent as a JSON object: it adds its fields to one, in order.
protocol JSONObjectWritable {
    func write(to object: inout JSONObject)
}

extension JSONObjectWritable {
    /// The value as JSON text, on one line.
    var json: String {
        var object = JSONObject()
        write(to: &object)
        return object.text
    }
}

/// One JSON object, built a field at a time. A nil field is left out, as JSONEncoder leaves it.
struct JSONObject {
    private var members: [String] = []

    var text: String { "{" + members.joined(separator: ",") + "}" }

    mutating func field(_ key: String, _ value: String?) { add(key, value.map(jsonString)) }
    mutating func field(_ key: String, _ value: Int?) { add(key, value.map(String.init)) }
    mutating func field(_ key: String, _ value: (some JSONObjectWritable)?) { add(key, value?.json) }
    mutating func field(_ key: String, _ values: [String]) { add(key, jsonArray(values.map(jsonString))) }
    mutating func field(_ key: String, _ values: [some JSONObjectWritable]) { add(key, jsonArray(values.map(\.json))) }

    private mutating func add(_ key: String, _ json: String?) {
        if let json { members.append(jsonString(key) + ":" + json) }
    }

    private func jsonArray(_ elements: [String]) -> String { "[" + elements.joined(separator: ",") + "]" }
}

/// `text` as a JSON string: in quotes, with `"`, `\` and the control characters escaped, and
/// everything else as it is (a `/` too: the JSON stays readable with curl).
func jsonString(_ text: String) -> String {
    var quoted = "\""
    for scalar in text.unicodeScalars {
        switch scalar {
        case "\"": quoted += "\\\""
        case "\\": quoted += "\\\\"
        case ..<" ":
            let hex = String(scalar.value, radix: 16)
            quoted += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
        default: quoted.unicodeScalars.append(scalar)
        }
    }
    return quoted + "\""
}

// The fields of the state's types, in the order they are declared there: a field added to a
// type in InspectorState.swift is added here too, or the page never sees it.

extension LiveState: JSONObjectWritable {
    func write(to object: inout JSONObject) {
        object.field("title", title)
        object.field("endpoints", endpoints)
        object.field("control", control)
        object.field("users", users)
        object.field("log", log)
        object.field("nowMs", nowMs)
        object.field("viewers", viewers)
    }
}

extension Endpoints: JSONObjectWritable {
    func write(to object: inout JSONObject) {
        object.field("control", control)
        object.field("public", self.public)
        object.field("proxy", proxy)
        object.field("app", app)
    }
}

extension ControlState: JSONObjectWritable {
    func write(to object: inout JSONObject) {
        object.field("status", status)
        object.field("client", client)
        object.field("server", server)
        object.field("detail", detail)
        object.field("retry", retry)
        object.field("registrations", registrations)
        object.field("heartbeats", heartbeats)
        object.field("lastHeartbeatMs", lastHeartbeatMs)
        object.field("sinceMs", sinceMs)
    }
}

extension UserRow: JSONObjectWritable {
    func write(to object: inout JSONObject) {
        object.field("serial", serial)
        object.field("user", user)
        object.field("step", step)
        object.field("ending", ending)
        object.field("detail", detail)
        object.field("sent", sent)
        object.field("received", received)
        object.field("startedMs", startedMs)
        object.field("endedMs", endedMs)
    }
}

extension LiveUpdate: JSONObjectWritable {
    func write(to object: inout JSONObject) {
        object.field("line", line)
        object.field("step", step)
        object.field("nowMs", nowMs)
        object.field("endpoints", endpoints)
        object.field("control", control)
        object.field("user", user)
    }
}
