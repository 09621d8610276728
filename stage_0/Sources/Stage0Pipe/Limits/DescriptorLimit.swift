// Every connection is a file descriptor, and a process may hold only so many: its soft limit
// (RLIMIT_NOFILE), which a process may raise up to its hard limit. Shells start programs with a
// low soft limit (1,024 on most Linux systems, 256 on macOS) and a much higher hard one, so a
// server left at the soft limit turns users away with EMFILE long before `--max-users`. Like Go's
// runtime (since 1.19) and nginx's `worker_rlimit_nofile`, every program here raises its soft
// limit to the hard limit as it starts, and says so only when that is still not enough.

/// The soft descriptor limit after raising it as far as this process may: to the hard limit,
/// or on macOS to `kern.maxfilesperproc` (Platform.swift). Returns the limit now in force.
@discardableResult
public func raiseDescriptorLimit() -> Int {
    var limit = rlimit()
    guard getrlimit(descriptorLimitResource, &limit) == 0 else { return 1024 }  // cannot fail; the usual default
    let ceiling = descriptorCeiling(hard: limit.rlim_max)
    if limit.rlim_cur < ceiling {
        var raised = limit
        raised.rlim_cur = ceiling
        if setrlimit(descriptorLimitResource, &raised) == 0 { limit = raised }
    }
    return Int(clamping: limit.rlim_cur)
}

/// A log line for a program whose `flag` (`--max-users 1000`) needs about `needed` descriptors
/// when the limit in force is lower, naming the ways out; nil when there is room.
public func descriptorLimitWarning(needed: Int, for flag: String) -> String? {
    let limit = raiseDescriptorLimit()
    guard limit < needed else { return nil }
    return "warning: at most \(limit) open descriptors (the hard limit), and \(flag) needs about \(needed):"
        + " raise it where this program starts (as root: `ulimit -Hn \(needed * 2)`; systemd: LimitNOFILE=\(needed * 2)),"
        + " or lower \(flag.split(separator: " ")[0]); until then, connections past the limit fail with EMFILE"
}
