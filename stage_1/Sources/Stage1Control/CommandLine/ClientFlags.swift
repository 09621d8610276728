// What the clients of stages 1 and 2 share as programs: the heartbeat's flags, and how a client
// that serves one control connection ends (its exit codes, and a one-line reason).

import Stage0Pipe

extension Heartbeat {
    /// A client's `--interval` and `--timeout` flags. The timeout must be longer than the
    /// interval: otherwise a healthy server is given up on before it is even asked.
    public static func fromFlags(_ arguments: inout Arguments) throws -> Heartbeat {
        let heartbeat = Heartbeat(interval: try arguments.duration("--interval", default: standard.interval),
                                  timeout: try arguments.duration("--timeout", default: standard.timeout))
        guard heartbeat.timeout > heartbeat.interval else {
            throw UsageError("--timeout (\(heartbeat.timeout)) must be longer than --interval (\(heartbeat.interval))")
        }
        return heartbeat
    }
}

extension Tool {
    /// Connects to `server`, runs a client's control connection with `run` until it ends, and
    /// exits the way the clients of stages 1 and 2 document: 0 when the server closed the
    /// connection, 1 when it cannot be reached, stops answering, or the connection fails.
    public func runControlClient(server: Endpoint, _ run: (Connection) throws -> ControlEnding) -> Never {
        do {
            switch try run(try Connection.connect(to: server)) {
            case .serverClosed:
                log("[1] the server closed the control connection; exiting")
                exit(0)
            case .serverSilent(let timeout):
                fail("[1] no answer from the server for \(timeout); it may be down or unreachable. Exiting")
            }
        } catch let error as SocketError where error.code == ECONNREFUSED {
            fail("\(error) — is the server running?")
        } catch let error as ProtocolError {
            fail("the server sent a line that is not this protocol (\(error)) — is \(server) a tunnel server?")
        } catch {
            fail("\(error)")
        }
    }
}
