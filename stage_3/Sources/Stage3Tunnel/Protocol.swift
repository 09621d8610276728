// Stage 3 speaks stage 2's protocol unchanged, with one line in front: `auth [secret]` opens
// every control connection (SharedSecret.swift). Stage 1's messages share these names, so
// this file says once which ones this stage means.

import Stage2Proxy

typealias ClientMessage = Stage2Proxy.ClientMessage
typealias ServerMessage = Stage2Proxy.ServerMessage
