#!/usr/bin/env bash
# The NAT lab: a home network behind a NAT router, a server on the "internet" and a user
# elsewhere, built from Linux network namespaces on one machine, so the tunnel's whole
# reason to exist (nothing from outside can open a connection to the laptop) is real and not
# a story about 127.0.0.1. See README.md next to this file.
#
#   nat-lab.sh up         build the lab's network and leave it up to explore by hand
#   nat-lab.sh down       remove everything the lab made (namespaces, processes, files)
#   nat-lab.sh demo       the five checks: NAT blocks the user, the tunnel gets them through
#   nat-lab.sh heartbeat  an idle control connection loses its NAT mapping; heartbeats keep it
#   nat-lab.sh class [N]  a class of N laptops (default 5) behind one venue NAT, each with its
#                         own tunnel on one class-mode server: one address, N students
#
# Linux only, as root, with iproute2 (`ip netns`) and nftables (`nft`). Nothing leaves the lab:
# the namespaces have no link to the machine's own network, and every address is a
# documentation (RFC 5737) or private one that exists only inside them.

set -Eeuo pipefail
# A command that fails unexpectedly (a kernel without veth or nf_tables, say) ends the run;
# say which one, in one line, rather than leave only its own message.
on_error() { printf 'nat-lab: failed: %s (nat-lab.sh line %s)\n' "${1%%$'\n'*}" "$2" >&2; }
trap 'on_error "$BASH_COMMAND" "$LINENO"' ERR

readonly LAB=natlab                    # prefix of every namespace, and the state folder's name
readonly NS_LAPTOP=$LAB-laptop NS_ROUTER=$LAB-router NS_INTERNET=$LAB-internet
readonly NS_SERVER=$LAB-server NS_USER=$LAB-user
readonly NS_VENUE=$LAB-venue           # class: the venue's router; its laptops are $LAB-s1, -s2…
readonly HOME_NS="$NS_LAPTOP $NS_ROUTER $NS_INTERNET $NS_SERVER $NS_USER"
readonly ALL_NS="$HOME_NS $NS_VENUE"   # plus the students', whose number varies: lab_namespaces
readonly STATE=/run/$LAB               # the secret, the logs, the laptop app's files

# The home LAN (private, RFC 1918) and three "internet" networks (RFC 5737).
readonly LAPTOP_IP=192.168.50.2 ROUTER_LAN_IP=192.168.50.1
readonly ROUTER_WAN_IP=203.0.113.2 ISP_ROUTER_SIDE=203.0.113.1
readonly SERVER_IP=198.51.100.10 ISP_SERVER_SIDE=198.51.100.1
readonly USER_IP=192.0.2.20 ISP_USER_SIDE=192.0.2.1
# class: the venue's LAN (private too) and its router's one public address, on the link the
# home router has otherwise (class builds no home, so the two never meet).
readonly VENUE_LAN_IP=10.40.0.1 VENUE_WAN_IP=203.0.113.5

readonly APP_PORT=8000 ECHO_PORT=7007 CONTROL_PORT=60623 PUBLIC_PORT=60624
readonly IDLE_TIMEOUT=20               # heartbeat: the router forgets an idle TCP flow after this
readonly CLASS_PORTS=61000-61099 CLASS_SIZE=5 CLASS_MAX=30   # class: the students' public ports

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Debug builds: they are what `swift build`/`swift run` and CI's test build already made, and
# the lab measures nothing, so a release build would only cost time.
readonly BIN=${NATLAB_BIN:-$REPO/.build/debug}

usage() {
    cat <<EOF
usage: nat-lab.sh up | down | demo | heartbeat | class [N] | --help

A NAT lab on one Linux machine: network namespaces for a laptop behind a home router
(NAT + firewall), a tunnel server on the "internet", and a user. Run as root.

  up         build the lab's network and leave it up; prints commands to try by hand
  down       remove everything the lab made: namespaces, processes, $STATE
  demo       show NAT stopping the user, then the stage-3 tunnel getting them through
             (HTTP and a raw echo); exits 0 only if every check held (~5 s)
  heartbeat  shrink the router's idle timeout to ${IDLE_TIMEOUT}s and show a silent control
             connection losing its mapping, and heartbeats keeping it (~1 min)
  class [N]  N laptops (1 to $CLASS_MAX, default $CLASS_SIZE) behind one venue router, each with its
             own app and tunnel on one class-mode server (--ports $CLASS_PORTS): the
             server sees one address, the user reaches every student (~2 s)
  -h, --help show this help

demo, heartbeat and class build their own lab and remove it when they finish, fail or are
interrupted. They run the stage-3 executables from $BIN: build them first,
as yourself, with \`swift build\`. Explained in stage_3/lab/README.md.
EOF
}

# ---------------------------------------------------------------------------------------------
# Output: step headings, commands shown before they run, and one verdict line per expectation.

heading() { printf '\n%s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
ok() { printf '   ✓ %s\n' "$*"; }
indent() { sed 's/^/     /'; }
die() { printf 'nat-lab: %s\n' "$*" >&2; exit 1; }

# The failed expectation, and the logs that say why; the EXIT trap then removes the lab.
fail() {
    printf '   ✗ %s\n' "$*" >&2
    for log in "$STATE"/*.log; do
        [[ -s $log ]] || continue
        printf '   --- last lines of %s\n' "${log##*/}" >&2
        tail -n 8 "$log" | sed 's/^/   | /' >&2
    done
    exit 1
}

# The words of a command as a learner would type them: quoted only where the shell needs it.
typed() {
    local word words=()
    for word; do
        if [[ $word =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then words+=("$word"); else words+=("'$word'"); fi
    done
    printf '%s' "${words[*]}"
}

# Runs "$@" in namespace $1, first printing the command the way a learner would type it.
# Its output is indented (and kept in $STATE/shown.out); its exit status is returned.
shown() {
    local ns=$1; shift
    printf '   $ ip netns exec %s %s\n' "$ns" "$(typed "$@")"
    local status=0
    ip netns exec "$ns" "$@" >"$STATE/shown.out" 2>&1 || status=$?
    indent <"$STATE/shown.out"
    return "$status"
}

# The user fetches the laptop's page through the tunnel (shown as typed); a failed curl
# fails the run with $1, which says what the failure means at this point of the story.
user_gets_the_page() {
    local page
    page=$(shown "$NS_USER" curl -sS -m 10 "http://$SERVER_IP:$PUBLIC_PORT/") ||
        { printf '%s\n' "$page"; fail "$1"; }
    printf '%s\n' "$page"
    grep -q "hello from the app on the laptop" <<<"$page" || fail "the user did not get the laptop's page"
}

# ---------------------------------------------------------------------------------------------
# Before anything: say clearly what is missing, and how to follow along without it.

check_can_run() {
    local missing=()
    [[ $(uname -s) == Linux ]] || missing+=("Linux (network namespaces are a Linux feature)")
    [[ $(id -u) == 0 ]] || missing+=("root (namespaces, veth links and nftables need it): run it as root, in a root shell or with sudo")
    command -v ip >/dev/null && ip netns list >/dev/null 2>&1 ||
        missing+=("iproute2's \`ip netns\` (Debian/Ubuntu: apt-get install iproute2)")
    command -v nft >/dev/null || missing+=("nftables' \`nft\` (apt-get install nftables)")
    if [[ ${1:-} == full ]]; then
        command -v curl >/dev/null || missing+=("curl (apt-get install curl)")
        command -v python3 >/dev/null || missing+=("python3, for the laptop's apps (apt-get install python3)")
        grep -q OpenBSD < <(nc -h 2>&1) || missing+=("OpenBSD's nc, for its -N (apt-get install netcat-openbsd)")
        [[ ${2:-} != conntrack ]] || command -v conntrack >/dev/null ||
            missing+=("conntrack, to watch the router's table (apt-get install conntrack)")
        local exe
        for exe in stage3-server stage3-client; do
            [[ -x $BIN/$exe ]] || missing+=("$BIN/$exe: build it first, as yourself, in $REPO: swift build")
        done
    fi
    if ((${#missing[@]} == 0)) && [[ $(uname -s) == Linux && $(id -u) == 0 ]]; then
        # A container may have all the tools and still not be allowed to make a namespace.
        if ! ip netns add "$LAB-probe" 2>/dev/null; then
            missing+=("permission to create network namespaces (a container needs --privileged or CAP_SYS_ADMIN)")
        else
            ip netns del "$LAB-probe"
        fi
    fi
    ((${#missing[@]} == 0)) && return 0
    printf 'nat-lab: cannot run here; missing:\n' >&2
    printf '  - %s\n' "${missing[@]}" >&2
    printf 'To follow along without it (macOS, containers), read stage_3/lab/README.md:\n' >&2
    printf 'it shows what every step prints, and why.\n' >&2
    exit 1
}

# The lab's namespaces that exist now: the fixed ones, and however many students a class
# run made (natlab-s1…; not natlab-server, which natlab-s* would also match).
lab_namespaces() {
    local ns
    for ns in $ALL_NS /run/netns/"$LAB"-s[0-9]*; do
        ns=${ns#/run/netns/}
        [[ -e /run/netns/$ns ]] && printf '%s\n' "$ns"
    done
    return 0
}

lab_is_up() {
    [[ -n $(lab_namespaces) || -d $STATE ]]
}

# ---------------------------------------------------------------------------------------------
# up: five namespaces, four veth links, the router's NAT and firewall.

# link NS_A IF_A NS_B IF_B: a veth pair, one end in each namespace (never in the host's).
link() {
    ip link add "$2" netns "$1" type veth peer name "$4" netns "$3"
    ip -n "$1" link set "$2" up
    ip -n "$3" link set "$4" up
}

# new_namespaces NS...: empty machines, each with only its loopback up.
new_namespaces() {
    local ns
    for ns; do
        ip netns add "$ns"
        ip -n "$ns" link set lo up
    done
}

# The state folder, and the secret the lab's server and client share: a server reachable from
# outside must have one, or anyone who finds its control port receives its users.
make_state() {
    mkdir -m 700 "$STATE"
    if command -v openssl >/dev/null; then
        openssl rand -hex 16 >"$STATE/secret"
    else
        od -An -tx1 -N16 /dev/urandom | tr -d ' \n' >"$STATE/secret"
    fi
}

# The "internet": one namespace that routes between three public networks, with the server
# and the user on two of them. It knows no route to a private network (192.168.50.0/24,
# 10.40.0.0/24): private addresses mean nothing on the internet.
build_internet() {
    new_namespaces "$NS_INTERNET" "$NS_SERVER" "$NS_USER"
    link "$NS_SERVER" eth0 "$NS_INTERNET" to-server
    link "$NS_USER" eth0 "$NS_INTERNET" to-user
    ip -n "$NS_SERVER" addr add "$SERVER_IP/24" dev eth0
    ip -n "$NS_INTERNET" addr add "$ISP_SERVER_SIDE/24" dev to-server
    ip -n "$NS_USER" addr add "$USER_IP/24" dev eth0
    ip -n "$NS_INTERNET" addr add "$ISP_USER_SIDE/24" dev to-user
    ip -n "$NS_SERVER" route add default via "$ISP_SERVER_SIDE"
    ip -n "$NS_USER" route add default via "$ISP_USER_SIDE"
    ip netns exec "$NS_INTERNET" sysctl -qw net.ipv4.ip_forward=1
}

# connect_router NS WAN_IP: the third public network, between router NS's wan0 and the
# internet, with WAN_IP the router's one public address.
connect_router() {
    link "$1" wan0 "$NS_INTERNET" to-router
    ip -n "$1" addr add "$2/24" dev wan0
    ip -n "$NS_INTERNET" addr add "$ISP_ROUTER_SIDE/24" dev to-router
    ip -n "$1" route add default via "$ISP_ROUTER_SIDE"
    ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
}

# nat_and_firewall NS: router NS masquerades (NATs) its LAN's (lan0's) outgoing connections
# onto its one public address (wan0's), and drops every connection that starts outside.
# Connection tracking is what makes both work: it remembers each outgoing flow, so replies
# are let in and translated back. The explicit `counter drop` rules make the drops visible
# in `nft list ruleset`.
nat_and_firewall() {
    ip netns exec "$1" nft -f - <<EOF
table inet router {
    chain input {
        type filter hook input priority filter; policy drop;
        ct state established,related accept
        iifname { "lo", "lan0" } accept
        counter drop comment "started outside, addressed to the router: dropped"
    }
    chain forward {
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        iifname "lan0" oifname "wan0" accept
        counter drop comment "started outside, addressed to the LAN: dropped"
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "wan0" counter masquerade
    }
}
EOF
}

# The home: the laptop on the router's LAN, the router on the internet.
build_network() {
    make_state
    build_internet
    new_namespaces "$NS_LAPTOP" "$NS_ROUTER"
    link "$NS_LAPTOP" eth0 "$NS_ROUTER" lan0
    ip -n "$NS_LAPTOP" addr add "$LAPTOP_IP/24" dev eth0
    ip -n "$NS_ROUTER" addr add "$ROUTER_LAN_IP/24" dev lan0
    ip -n "$NS_LAPTOP" route add default via "$ROUTER_LAN_IP"
    connect_router "$NS_ROUTER" "$ROUTER_WAN_IP"
    nat_and_firewall "$NS_ROUTER"
}

print_map() {
    cat <<EOF
   laptop $LAPTOP_IP ── router $ROUTER_LAN_IP │ NAT │ $ROUTER_WAN_IP ── internet ── server $SERVER_IP
                                                                      └─ user $USER_IP
EOF
}

cmd_up() {
    check_can_run
    lab_is_up && die "the lab is already up; remove it first with: $0 down"
    trap 'status=$?; ((status == 0)) || teardown' EXIT
    trap 'exit 130' INT TERM
    build_network
    echo "nat-lab: up"
    print_map
    cat <<EOF

Namespaces: $HOME_NS
Run a command in one:  ip netns exec $NS_ROUTER nft list ruleset
The lab's secret:      TUNNEL_SECRET=\$(cat $STATE/secret)
Try, with the stage-3 executables built (swift build), each in its own root shell:
  ip netns exec $NS_LAPTOP python3 -m http.server $APP_PORT
  TUNNEL_SECRET=\$(cat $STATE/secret) ip netns exec $NS_SERVER $BIN/stage3-server --host $SERVER_IP
  TUNNEL_SECRET=\$(cat $STATE/secret) ip netns exec $NS_LAPTOP $BIN/stage3-client 127.0.0.1:$APP_PORT $SERVER_IP
  ip netns exec $NS_USER curl http://$SERVER_IP:$PUBLIC_PORT/
  ip netns exec $NS_ROUTER conntrack -L
When done: $0 down
EOF
}

# ---------------------------------------------------------------------------------------------
# down: stop every process still in a lab namespace, then remove the namespaces and files.
# Processes are found by namespace (`ip netns pids`), never by name.

teardown() {
    local ns namespaces pids=()
    mapfile -t namespaces < <(lab_namespaces)
    for ns in "${namespaces[@]}"; do
        mapfile -t -O "${#pids[@]}" pids < <(ip netns pids "$ns" 2>/dev/null)
    done
    if ((${#pids[@]} > 0)); then
        kill -TERM "${pids[@]}" 2>/dev/null || true
        local tries
        for ((tries = 0; tries < 30; tries++)); do   # up to 3 s to exit on their own
            kill -0 "${pids[@]}" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "${pids[@]}" 2>/dev/null || true
    fi
    for ns in "${namespaces[@]}"; do
        ip netns del "$ns"
    done
    rm -rf "$STATE"
    return 0
}

cmd_down() {
    check_can_run
    if lab_is_up; then
        teardown
        echo "nat-lab: down (namespaces, processes and $STATE removed)"
    else
        echo "nat-lab: nothing to remove"
    fi
}

# ---------------------------------------------------------------------------------------------
# Processes inside the lab, and bounded waits for what they log.

# start NAME NS COMMAND...: runs COMMAND in NS in the background, its output in $STATE/NAME.log.
start() {
    local name=$1 ns=$2; shift 2
    : >"$STATE/$name.log"
    ip netns exec "$ns" "$@" >"$STATE/$name.log" 2>&1 &
    echo $! >"$STATE/$name.pid"
}

# Starts the tunnel server and client with the lab's secret (in the environment, not on the
# command line, where `ps` would show it to everyone).
start_with_secret() {
    TUNNEL_SECRET=$(<"$STATE/secret") start "$@"
}

stop() {
    local pid
    pid=$(<"$STATE/$1.pid")
    kill -TERM "$pid" 2>/dev/null || true
    local tries
    for ((tries = 0; tries < 30; tries++)); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
}

# wait_for_log NAME REGEX SECONDS: true once NAME's log has a line matching REGEX.
wait_for_log() {
    local tries
    for ((tries = 0; tries < $3 * 10; tries++)); do
        grep -qE "$2" "$STATE/$1.log" && return 0
        kill -0 "$(<"$STATE/$1.pid")" 2>/dev/null || break   # it exited: no point waiting
        sleep 0.1
    done
    grep -qE "$2" "$STATE/$1.log"
}

# wait_for_port NS ADDRESS PORT SECONDS: true once something listens there.
wait_for_port() {
    local tries
    for ((tries = 0; tries < $4 * 10; tries++)); do
        [[ $(ip netns exec "$1" ss -Hltn "sport = :$3") == *"$2:$3"* ]] && return 0
        sleep 0.1
    done
    return 1
}

# control_flows [NS]: router NS's (default: the home router's) tracked flows to the server's
# control port, one line each (empty if none, or without conntrack).
control_flows() {
    if command -v conntrack >/dev/null; then
        ip netns exec "${1:-$NS_ROUTER}" conntrack -L -p tcp --dport "$CONTROL_PORT" 2>/dev/null || true
    fi
}

# The laptop's apps: a web page and a line echo, both on all the laptop's addresses, so that
# what stops the user in step 1 is the NAT, not the app listening on 127.0.0.1 only.
start_apps() {
    mkdir "$STATE/www"
    echo "hello from the app on the laptop ($LAPTOP_IP), behind NAT" >"$STATE/www/index.html"
    start app "$NS_LAPTOP" python3 -m http.server "$APP_PORT" --bind 0.0.0.0 --directory "$STATE/www"
    start echo "$NS_LAPTOP" python3 -c '
import socketserver, sys
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            self.wfile.write(line)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", int(sys.argv[1])), Echo).serve_forever()
' "$ECHO_PORT"
    wait_for_port "$NS_LAPTOP" 0.0.0.0 "$APP_PORT" 10 || fail "the laptop's web app did not start"
    wait_for_port "$NS_LAPTOP" 0.0.0.0 "$ECHO_PORT" 10 || fail "the laptop's echo app did not start"
}

# begin_run [conntrack]: check everything (conntrack too, if asked), and see to it that the
# lab the caller then builds is removed however the run ends.
begin_run() {
    check_can_run full "${1:-}"
    lab_is_up && die "the lab is already up (from nat-lab.sh up, or a run that was killed); remove it first with: $0 down"
    trap teardown EXIT
    trap 'echo; echo "nat-lab: interrupted; removing the lab"; exit 130' INT TERM
}

# ---------------------------------------------------------------------------------------------
# demo

cmd_demo() {
    begin_run
    build_network
    echo "nat-lab demo: a laptop behind NAT, a tunnel server, a user on the internet"
    print_map
    start_apps
    note "the laptop runs a web app on :$APP_PORT and an echo app on :$ECHO_PORT, on all its addresses"

    heading "Check 1: the user cannot reach the laptop's app directly."
    note "on the LAN the app works (here the router asks for it):"
    shown "$NS_ROUTER" curl -sS -m 3 "http://$LAPTOP_IP:$APP_PORT/" || fail "the app is not reachable even on the LAN"
    note "from the internet, the only address that leads towards the laptop is the router's:"
    if shown "$NS_USER" curl -sS -m 3 "http://$ROUTER_WAN_IP:$APP_PORT/"; then
        fail "the user reached port $APP_PORT on the router's public address; the router should drop it"
    fi
    local dropped
    dropped=$(ip netns exec "$NS_ROUTER" nft list chain inet router input | grep -oE 'packets [0-9]+')
    note "no answer at all: the router's input chain dropped the SYN and its retries (${dropped#packets } packets)"
    note "and the laptop's own address is private: the internet has no route to it:"
    if shown "$NS_USER" curl -sS -m 3 "http://$LAPTOP_IP:$APP_PORT/"; then
        fail "the user reached the laptop's private address; the internet should have no route to it"
    fi
    if shown "$NS_INTERNET" ip route get "$LAPTOP_IP"; then
        fail "the internet has a route to the laptop's private address"
    fi
    ok "from outside there is no way in"

    heading "Check 2: the laptop can reach the server (outbound is allowed)."
    start_with_secret server "$NS_SERVER" "$BIN/stage3-server" --host "$SERVER_IP"
    wait_for_log server 'listening' 10 || fail "stage3-server did not start"
    note "started: TUNNEL_SECRET=… ip netns exec $NS_SERVER stage3-server --host $SERVER_IP"
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP"
    note "started: TUNNEL_SECRET=… ip netns exec $NS_LAPTOP stage3-client 127.0.0.1:$APP_PORT $SERVER_IP"
    wait_for_log client '\[1\] registered' 10 || fail "the client did not register with the server"
    grep -E '\[1\] registered' "$STATE/client.log" | indent
    ok "the client's control connection went out through the router and registered"

    heading "Check 3: the router translated it: the server sees the router's address, not the laptop's."
    local flows
    flows=$(control_flows)
    if [[ -n $flows ]]; then
        printf '   $ ip netns exec %s conntrack -L -p tcp --dport %s\n' "$NS_ROUTER" "$CONTROL_PORT"
        indent <<<"$flows"
        grep -q "src=$LAPTOP_IP dst=$SERVER_IP .* src=$SERVER_IP dst=$ROUTER_WAN_IP" <<<"$flows" ||
            fail "conntrack shows no flow from $LAPTOP_IP translated to $ROUTER_WAN_IP"
        note "one flow, two directions: as sent (src=$LAPTOP_IP) and as the reply must come back"
        note "(dst=$ROUTER_WAN_IP); the router rewrites every packet between the two"
    else
        note "(conntrack is not installed; the masquerade rule's counter shows it at work instead:"
        note "a NAT chain sees only the first packet of each connection, so it counts connections)"
        shown "$NS_ROUTER" nft list chain inet router postrouting
    fi
    grep -E "control connection opened by" "$STATE/server.log" | indent
    grep -qE "control connection opened by $ROUTER_WAN_IP:" "$STATE/server.log" ||
        fail "the server's log does not show the control connection coming from $ROUTER_WAN_IP"
    if grep -q "$LAPTOP_IP" "$STATE/server.log"; then
        fail "the server's log mentions the laptop's private address $LAPTOP_IP"
    fi
    ok "the server only ever sees $ROUTER_WAN_IP: the laptop's address never leaves the LAN"

    heading "Check 4: through the tunnel, the user gets the laptop's web app."
    user_gets_the_page "the user's curl through the tunnel failed"
    grep -E '\[(2|3|4)\]' "$STATE/server.log" | tail -n 3 | indent
    ok "the user connected to the server; the server asked the client over the control"
    note "  connection, and the client dialed out again with the proxy connection: every"
    note "  connection through the router was opened from inside"

    heading "Check 5: any TCP protocol: a raw line echo instead of HTTP."
    stop client
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$ECHO_PORT" "$SERVER_IP"
    note "restarted the client for the echo app: stage3-client 127.0.0.1:$ECHO_PORT $SERVER_IP"
    wait_for_log client '\[1\] registered' 10 || fail "the echo client did not register"
    local echoed
    printf '   $ echo "ping through the NAT" | ip netns exec %s nc -N -w 5 %s %s\n' "$NS_USER" "$SERVER_IP" "$PUBLIC_PORT"
    echoed=$(echo "ping through the NAT" | ip netns exec "$NS_USER" nc -N -w 5 "$SERVER_IP" "$PUBLIC_PORT" 2>&1) || true
    printf '     %s\n' "$echoed"
    [[ $echoed == "ping through the NAT" ]] || fail "the echo came back as \"$echoed\""
    ok "the line came back: the tunnel carries bytes, whatever the protocol"

    heading "nat-lab demo: all 5 checks held."
}

# ---------------------------------------------------------------------------------------------
# heartbeat

# The router's entry for the control connection: protocol, seconds left, state, both directions.
show_control_flow() {
    local flows
    flows=$(control_flows)
    printf '   $ ip netns exec %s conntrack -L -p tcp --dport %s\n' "$NS_ROUTER" "$CONTROL_PORT"
    if [[ -n $flows ]]; then
        indent <<<"$flows"
    else
        note "  (no entry: the router has no mapping for the control connection)"
    fi
}

# has_control_mapping: true while the router tracks an established control connection.
has_control_mapping() {
    control_flows | grep -q ESTABLISHED
}

start_tunnel_server() {
    # --timeout 300s: the server itself must not drop a quiet client, so that only the router's
    # idle timeout is at work. --proxy-timeout 5s: a user not served is closed after 5 s.
    start_with_secret server "$NS_SERVER" "$BIN/stage3-server" --host "$SERVER_IP" --timeout 300s --proxy-timeout 5s
    wait_for_log server 'listening' 10 || fail "stage3-server did not start"
}

cmd_heartbeat() {
    begin_run conntrack
    build_network
    echo "nat-lab heartbeat: why the control connection needs heartbeats"
    print_map
    start_apps
    shown "$NS_ROUTER" sysctl -w "net.netfilter.nf_conntrack_tcp_timeout_established=$IDLE_TIMEOUT" ||
        fail "could not shorten the router's idle timeout"
    note "the router now forgets an established TCP flow after ${IDLE_TIMEOUT} s without a packet"
    note "(Linux's default is 5 days; home routers and carrier NATs often keep far less)"

    heading "Run 1: heartbeats far apart (a ping every 90 s)."
    start_tunnel_server
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP" --interval 90s --timeout 180s
    note "started: stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --interval 90s --timeout 180s"
    note "         stage3-server --host $SERVER_IP --timeout 300s --proxy-timeout 5s (never drops it itself)"
    wait_for_log client '\[1\] registered' 10 || fail "the client did not register"
    local registered=$SECONDS
    show_control_flow
    note "waiting for the router to forget the silent control connection…"
    local tries
    for ((tries = 0; tries < (IDLE_TIMEOUT + 15) * 2; tries++)); do
        has_control_mapping || break
        sleep 0.5
    done
    has_control_mapping && fail "the router still tracks the control connection after $((SECONDS - registered)) s"
    note "after $((SECONDS - registered)) s of silence:"
    show_control_flow
    note "a user arrives:"
    if shown "$NS_USER" curl -sS -m 10 "http://$SERVER_IP:$PUBLIC_PORT/"; then
        fail "the user was served although the router had forgotten the control connection"
    fi
    grep -E '\[(2|3)\]' "$STATE/server.log" | indent
    grep -q '\[3\] asked client' "$STATE/server.log" || fail "the server did not ask the client for a proxy connection"
    if grep -q '\[3\]' "$STATE/client.log"; then
        fail "create_proxy reached the client; the router should have dropped it"
    fi
    note "the client's log has no [3] line: create_proxy never reached it. On the server, the"
    note "line sits unacknowledged in the socket's send queue (Send-Q), retransmitted with"
    note "growing back-off (timer:(on,…,retries)):"
    shown "$NS_SERVER" ss -tno state established "( sport = :$CONTROL_PORT )"
    grep -qE '^[0-9]+ +[1-9][0-9]* .*timer:\(on,' "$STATE/shown.out" ||
        fail "the server's control connection shows no unacknowledged bytes being retransmitted"
    note "each retransmission reaches the router addressed to $ROUTER_WAN_IP; it matches no"
    note "tracked connection any more, so to the router it is new traffic from outside, and"
    note "its input chain drops it. The client cannot tell: its side of the connection looks"
    note "healthy, and it will not find out before it next sends something."
    printf '   $ ip netns exec %s nft list chain inet router input | grep counter\n' "$NS_ROUTER"
    ip netns exec "$NS_ROUTER" nft list chain inet router input | grep -o 'counter.*' | indent
    ok "without heartbeats the mapping expired, create_proxy never arrived, the user was not served"
    stop client
    stop server

    heading "Run 2: the default heartbeat (a ping every 5 s)."
    start_tunnel_server
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP"
    note "started: stage3-client 127.0.0.1:$APP_PORT $SERVER_IP"
    wait_for_log client '\[1\] registered' 10 || fail "the client did not register"
    local wait=$((IDLE_TIMEOUT + 5))
    note "waiting ${wait} s, longer than the router's idle timeout…"
    sleep "$wait"   # the point of this run is that the time passes
    show_control_flow
    has_control_mapping || fail "the router forgot the control connection despite the heartbeats"
    note "its countdown (the number before ESTABLISHED) starts again at ${IDLE_TIMEOUT} with every ping and pong"
    user_gets_the_page "the user was not served although the heartbeats kept the mapping"
    ok "with heartbeats the mapping stayed, and the user was served"

    heading "nat-lab heartbeat: both outcomes as predicted."
    note "run 1 (ping every 90 s): mapping gone after ${IDLE_TIMEOUT} s idle, user not served"
    note "run 2 (ping every 5 s):  mapping kept, user served"
}

# ---------------------------------------------------------------------------------------------
# class: a workshop, N laptops behind the venue's one router, each with its own tunnel on one
# class-mode server.

student_ns() { printf '%s-s%s' "$LAB" "$1"; }
student_ip() { printf '10.40.0.%s' "$((10 + $1))"; }
students() { if (($1 == 1)); then echo "1 student"; else echo "$1 students"; fi; }

# build_venue N: the venue's LAN, a switch (a bridge in the router, called lan0 so that the
# home router's rules apply to it unchanged) with N laptops on it; the router on the internet.
build_venue() {
    local i ns
    new_namespaces "$NS_VENUE"
    ip -n "$NS_VENUE" link add lan0 type bridge
    ip -n "$NS_VENUE" link set lan0 up
    ip -n "$NS_VENUE" addr add "$VENUE_LAN_IP/24" dev lan0
    for ((i = 1; i <= $1; i++)); do
        ns=$(student_ns "$i")
        new_namespaces "$ns"
        link "$ns" eth0 "$NS_VENUE" "port$i"
        ip -n "$NS_VENUE" link set "port$i" master lan0
        ip -n "$ns" addr add "$(student_ip "$i")/24" dev eth0
        ip -n "$ns" route add default via "$VENUE_LAN_IP"
    done
    connect_router "$NS_VENUE" "$VENUE_WAN_IP"
    nat_and_firewall "$NS_VENUE"
}

print_class_map() {
    local laptops left
    laptops="1 laptop $(student_ip 1)"
    (($1 == 1)) || laptops="$1 laptops $(student_ip 1)…$(student_ip "$1")"
    left="   $laptops ── venue router $VENUE_LAN_IP │ NAT │ $VENUE_WAN_IP ── "
    printf '%sinternet ── server %s\n' "$left" "$SERVER_IP"
    printf '%*s└─ user %s\n' "${#left}" "" "$USER_IP"
}

# Every student's app: a page that says whose it is, on the same port on every laptop (each
# laptop is its own machine), on 127.0.0.1 only, as a learner would start it: the tunnel's
# client, on the same laptop, is its only way out.
start_student_apps() {
    local i
    for ((i = 1; i <= $1; i++)); do
        mkdir "$STATE/www-s$i"
        echo "hello from student-$i's laptop ($(student_ip "$i"))" >"$STATE/www-s$i/index.html"
        start "app-s$i" "$(student_ns "$i")" python3 -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$STATE/www-s$i"
    done
    for ((i = 1; i <= $1; i++)); do   # started all at once above; awaited in turn here
        wait_for_port "$(student_ns "$i")" 127.0.0.1 "$APP_PORT" 10 || fail "student-$i's app did not start"
    done
}

# class_size WORD: WORD as a number of students, or a one-line error (exit 2).
class_size() {
    if [[ $1 =~ ^[0-9]{1,2}$ ]] && ((10#$1 >= 1 && 10#$1 <= CLASS_MAX)); then
        echo "$((10#$1))"
    else
        echo "nat-lab: class takes a number of students from 1 to $CLASS_MAX, got: $1" >&2
        exit 2
    fi
}

cmd_class() {
    local n i
    n=$(class_size "$1") || exit 2
    begin_run
    make_state
    build_internet
    build_venue "$n"
    echo "nat-lab class: $(students "$n") behind one venue router, one class-mode tunnel server"
    print_class_map "$n"
    start_student_apps "$n"
    note "each laptop runs its own web app on 127.0.0.1:$APP_PORT (the same port: they are different machines)"

    heading "Check 1: every student's client registers, each under a name of its own."
    start_with_secret server "$NS_SERVER" "$BIN/stage3-server" --host "$SERVER_IP" --ports "$CLASS_PORTS"
    wait_for_log server 'class mode: clients on' 10 || fail "stage3-server did not start in class mode"
    note "started: TUNNEL_SECRET=… ip netns exec $NS_SERVER stage3-server --host $SERVER_IP --ports $CLASS_PORTS"
    for ((i = 1; i <= n; i++)); do
        start_with_secret "client-s$i" "$(student_ns "$i")" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP" --name "student-$i"
    done
    note "started, on each laptop i: TUNNEL_SECRET=… stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --name student-i"
    # What each student would tell the class: the public address the server gave their name.
    local ports=() line
    for ((i = 1; i <= n; i++)); do
        wait_for_log "client-s$i" '\[1\] registered' 15 || fail "student-$i's client did not register"
        line=$(grep -E "\[1\] the name student-$i is ours: public at $SERVER_IP:[0-9]+$" "$STATE/client-s$i.log") ||
            fail "student-$i's client registered without saying its public port"
        indent <<<"$line"
        ports[i]=${line##*:}
    done
    (($(printf '%s\n' "${ports[@]}" | sort -u | wc -l) == n)) || fail "two students were given the same public port"
    ok "$(students "$n") registered, each with a public port of its own from $CLASS_PORTS"

    heading "Check 2: the server saw every student come from one address, the venue router's."
    local claims count addresses
    claims=$(grep -E '\[student-[0-9]+\] \[1\] claimed by ' "$STATE/server.log" || true)
    indent <<<"$claims"
    count=$(grep -c . <<<"$claims" || true)
    ((count == n)) || fail "the server's log has $count \"claimed by\" lines, not $n"
    addresses=$(grep -oE 'claimed by [0-9.]+' <<<"$claims" | sort -u)
    [[ $addresses == "claimed by $VENUE_WAN_IP" ]] ||
        fail "the students came from other addresses than the venue router's $VENUE_WAN_IP: ${addresses//$'\n'/, }"
    if grep -q '10\.40\.0\.' "$STATE/server.log"; then
        fail "the server's log mentions a student's private address"
    fi
    ok "$(students "$n"), one address ($VENUE_WAN_IP): the server tells them apart by name, not address"

    heading "Check 3: the venue router keeps one mapping per student, all onto that address."
    if command -v conntrack >/dev/null; then
        local flows mapped
        flows=$(control_flows "$NS_VENUE")
        printf '   $ ip netns exec %s conntrack -L -p tcp --dport %s\n' "$NS_VENUE" "$CONTROL_PORT"
        indent <<<"$flows"
        mapped=$(grep -cE "ESTABLISHED src=10\.40\.0\.[0-9]+ dst=$SERVER_IP .* src=$SERVER_IP dst=$VENUE_WAN_IP " <<<"$flows" || true)
        ((mapped == n)) || fail "the venue router tracks $mapped control connections onto $VENUE_WAN_IP, not $n"
        note "one flow per laptop, each sent from its own address (src=10.40.0.…), all answered"
        note "at the same dst=$VENUE_WAN_IP: only the port (dport=) tells the router whose answer it is"
        ok "one mapping per student in one router, all onto one public address"
    else
        note "(conntrack is not installed; the masquerade rule's counter shows it at work instead:"
        note "a NAT chain sees only the first packet of each connection, so it counts connections)"
        shown "$NS_VENUE" nft list chain inet router postrouting
        ok "the venue router masqueraded the control connections (conntrack would list them)"
    fi

    heading "Check 4: the user reaches each student's app through that student's port."
    local page
    for ((i = 1; i <= n; i++)); do
        page=$(shown "$NS_USER" curl -sS -m 10 "http://$SERVER_IP:${ports[i]}/") ||
            { printf '%s\n' "$page"; fail "the user's curl to student-$i's port ${ports[i]} failed"; }
        printf '%s\n' "$page"
        grep -qF "hello from student-$i's laptop ($(student_ip "$i"))" <<<"$page" ||
            fail "port ${ports[i]} did not lead to student-$i's laptop"
    done
    grep -E '\[student-1\] \[(2|3|4)\]' "$STATE/server.log" | tail -n 3 | indent
    ok "every port leads to its own student's laptop; the server's log names the tunnel"

    heading "nat-lab class: all 4 checks held: $(students "$n") behind one address, each reachable."
}

# ---------------------------------------------------------------------------------------------

# One subcommand at a time; only class takes an argument, the class's size.
if (($# > 2)) || { (($# == 2)) && [[ $1 != class ]]; }; then
    echo "nat-lab: one subcommand at a time, got: $*" >&2
    usage >&2
    exit 2
fi
case ${1:-} in
    up) cmd_up ;;
    down) cmd_down ;;
    demo) cmd_demo ;;
    heartbeat) cmd_heartbeat ;;
    class) cmd_class "${2-$CLASS_SIZE}" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
