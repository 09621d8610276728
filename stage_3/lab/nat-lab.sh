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
#   nat-lab.sh punch      two laptops in two homes, each behind its own NAT, find a direct UDP
#                         path (hole punching) with a rendezvous on the server's machine
#   nat-lab.sh punch --symmetric
#                         the same with router B giving each destination a port of its own:
#                         no direct path; the stage-3 tunnel (a relay) gets through instead
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
# punch: two homes, A and B, each a laptop behind a router of its own.
readonly NS_LAPTOP_A=$LAB-laptop-a NS_ROUTER_A=$LAB-router-a
readonly NS_LAPTOP_B=$LAB-laptop-b NS_ROUTER_B=$LAB-router-b
readonly HOME_NS="$NS_LAPTOP $NS_ROUTER $NS_INTERNET $NS_SERVER $NS_USER"
readonly PUNCH_NS="$NS_LAPTOP_A $NS_ROUTER_A $NS_LAPTOP_B $NS_ROUTER_B"
readonly ALL_NS="$HOME_NS $NS_VENUE $PUNCH_NS"   # plus the students', whose number varies: lab_namespaces
readonly STATE=/run/$LAB               # the secret, the logs, the laptop app's files

# The home LAN (private, RFC 1918) and three "internet" networks (RFC 5737).
readonly LAPTOP_IP=192.168.50.2 ROUTER_LAN_IP=192.168.50.1
readonly ROUTER_WAN_IP=203.0.113.2 ISP_ROUTER_SIDE=203.0.113.1
readonly SERVER_IP=198.51.100.10 ISP_SERVER_SIDE=198.51.100.1
readonly USER_IP=192.0.2.20 ISP_USER_SIDE=192.0.2.1
# class: the venue's LAN (private too) and its router's one public address, on the link the
# home router has otherwise (class builds no home, so the two never meet).
readonly VENUE_LAN_IP=10.40.0.1 VENUE_WAN_IP=203.0.113.5
# punch: both homes' LANs use the same private range, as two real homes may. Router A takes the
# home router's link and address, router B the user's link (punch builds neither the home nor
# the user: laptop A is the one who wants to reach laptop B).
readonly PUNCH_LAN=192.168.1.0/24 PUNCH_LAPTOP_IP=192.168.1.2 PUNCH_ROUTER_LAN_IP=192.168.1.1
readonly ROUTER_A_WAN_IP=$ROUTER_WAN_IP ROUTER_B_WAN_IP=192.0.2.2

readonly APP_PORT=8000 ECHO_PORT=7007 CONTROL_PORT=60623 PUBLIC_PORT=60624
readonly IDLE_TIMEOUT=20               # heartbeat: the router forgets an idle TCP flow after this
readonly CLASS_PORTS=61000-61099 CLASS_SIZE=5 CLASS_MAX=30   # class: the students' public ports
readonly RENDEZVOUS_PORT=3478 PUNCH_PORT=40000   # punch: the rendezvous's first port (STUN's), the peers'
# punch: how long the peers keep a direct path open, and how often they send a keep-alive. Linux
# marks a UDP flow [ASSURED] (kept 120 s, not 30) only once it carries datagrams both ways and is
# still in use 2 s after it began: so a path held past that, not a few lines exchanged in a
# second, shows [ASSURED].
readonly PUNCH_HOLD=3s PUNCH_KEEPALIVE=1s

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# Debug builds: they are what `swift build`/`swift run` and CI's test build already made, and
# the lab measures nothing, so a release build would only cost time.
readonly BIN=${NATLAB_BIN:-$REPO/.build/debug}

usage() {
    cat <<EOF
usage: nat-lab.sh up | down | demo | heartbeat | class [N] | punch [--symmetric] | --help

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
  punch      two laptops in two homes, each behind its own NAT (both LANs $PUNCH_LAN),
             meet at a rendezvous on the server and punch holes through both NATs: a
             direct UDP path, no relay; held ${PUNCH_HOLD} with keep-alives (~4 s)
  punch --symmetric
             the same with router B's \`masquerade random\` (a new port for each
             destination): no direct path; the stage-3 tunnel gets through instead (~11 s)
  -h, --help show this help

demo, heartbeat, class and punch build their own lab and remove it when they finish, fail
or are interrupted. They run the stage-3 executables from $BIN: build
them first, as yourself, with \`swift build\`. Explained in stage_3/lab/README.md.
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

# check_can_run [full [conntrack] [punch]]: the tools every run needs; with full, those of a
# scenario too (conntrack: the conntrack tool; punch: the hole-punching executables).
check_can_run() {
    local missing=() needs=" ${*:2} "
    [[ $(uname -s) == Linux ]] || missing+=("Linux (network namespaces are a Linux feature)")
    [[ $(id -u) == 0 ]] || missing+=("root (namespaces, veth links and nftables need it): run it as root, in a root shell or with sudo")
    command -v ip >/dev/null && ip netns list >/dev/null 2>&1 ||
        missing+=("iproute2's \`ip netns\` (Debian/Ubuntu: apt-get install iproute2)")
    command -v nft >/dev/null || missing+=("nftables' \`nft\` (apt-get install nftables)")
    if [[ ${1:-} == full ]]; then
        command -v curl >/dev/null || missing+=("curl (apt-get install curl)")
        command -v python3 >/dev/null || missing+=("python3, for the laptop's apps (apt-get install python3)")
        grep -q OpenBSD < <(nc -h 2>&1) || missing+=("OpenBSD's nc, for its -N (apt-get install netcat-openbsd)")
        [[ $needs != *" conntrack "* ]] || command -v conntrack >/dev/null ||
            missing+=("conntrack, to watch the router's table (apt-get install conntrack)")
        local exe exes=(stage3-server stage3-client)
        [[ $needs != *" punch "* ]] || exes+=(stage3-rendezvous stage3-punch)
        for exe in "${exes[@]}"; do
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
# 10.40.0.0/24, 192.168.1.0/24): private addresses mean nothing on the internet.
# build_internet no-user: the same without the user (punch gives its link to router B).
build_internet() {
    new_namespaces "$NS_INTERNET" "$NS_SERVER"
    link "$NS_SERVER" eth0 "$NS_INTERNET" to-server
    ip -n "$NS_SERVER" addr add "$SERVER_IP/24" dev eth0
    ip -n "$NS_INTERNET" addr add "$ISP_SERVER_SIDE/24" dev to-server
    ip -n "$NS_SERVER" route add default via "$ISP_SERVER_SIDE"
    if [[ ${1:-} != no-user ]]; then
        new_namespaces "$NS_USER"
        link "$NS_USER" eth0 "$NS_INTERNET" to-user
        ip -n "$NS_USER" addr add "$USER_IP/24" dev eth0
        ip -n "$NS_INTERNET" addr add "$ISP_USER_SIDE/24" dev to-user
        ip -n "$NS_USER" route add default via "$ISP_USER_SIDE"
    fi
    ip netns exec "$NS_INTERNET" sysctl -qw net.ipv4.ip_forward=1
}

# connect_router NS WAN_IP [ISP_IP ISP_LINK]: a public network between router NS's wan0 and
# the internet's ISP_LINK (address ISP_IP), with WAN_IP the router's one public address. By
# default the third network, the home router's (to-router, $ISP_ROUTER_SIDE).
connect_router() {
    local isp_ip=${3:-$ISP_ROUTER_SIDE} isp_link=${4:-to-router}
    link "$1" wan0 "$NS_INTERNET" "$isp_link"
    ip -n "$1" addr add "$2/24" dev wan0
    ip -n "$NS_INTERNET" addr add "$isp_ip/24" dev "$isp_link"
    ip -n "$1" route add default via "$isp_ip"
    ip netns exec "$1" sysctl -qw net.ipv4.ip_forward=1
}

# nat_and_firewall NS [random]: router NS masquerades (NATs) its LAN's (lan0's) outgoing
# connections onto its one public address (wan0's), and drops every connection that starts
# outside. Connection tracking is what makes both work: it remembers each outgoing flow, so
# replies are let in and translated back. The explicit `counter drop` rules make the drops
# visible in `nft list ruleset`.
# Linux's masquerade keeps a flow's source port when it is free, so one socket gets the same
# public port for every destination (endpoint-independent mapping, in RFC 4787's terms);
# with random, it picks a random port for each new flow, so each destination sees another
# port (endpoint-dependent mapping, the "symmetric NAT"): punch --symmetric.
# The input chain's policy drop matters to punch too: a peer's first punch may reach this
# router before its laptop has sent anything; accepted, it would become a tracked flow that
# holds the laptop's port, and masquerade would then move the laptop to another port.
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
        oifname "wan0" counter masquerade${2:+ $2}
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
  TUNNEL_SECRET=\$(cat $STATE/secret) ip netns exec $NS_LAPTOP $BIN/stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --pool 0
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

# begin_run [conntrack] [punch]: check everything (conntrack, the punching executables too, if
# asked), and see to it that the lab the caller then builds is removed however the run ends.
begin_run() {
    check_can_run full "$@"
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
    start_tunnel "$NS_LAPTOP"
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
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$ECHO_PORT" "$SERVER_IP" --pool 0
    note "restarted the client for the echo app: stage3-client 127.0.0.1:$ECHO_PORT $SERVER_IP --pool 0"
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

# start_tunnel LAPTOP_NS: the stage-3 server on the server's machine, and a client on the
# laptop in LAPTOP_NS for its app on 127.0.0.1:$APP_PORT, both with the lab's secret; waits
# until the client has registered, and prints that line.
start_tunnel() {
    start_with_secret server "$NS_SERVER" "$BIN/stage3-server" --host "$SERVER_IP"
    wait_for_log server 'listening' 10 || fail "stage3-server did not start"
    note "started: TUNNEL_SECRET=… ip netns exec $NS_SERVER stage3-server --host $SERVER_IP"
    # --pool 0: the plain steps, which the checks follow through the router (create_proxy, then
    # the proxy connection dialled out); with the default pool, step 4 happens before the user.
    start_with_secret client "$1" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP" --pool 0
    note "started: TUNNEL_SECRET=… ip netns exec $1 stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --pool 0"
    wait_for_log client '\[1\] registered' 10 || fail "the tunnel client on $1 did not register with the server"
    grep -E '\[1\] registered' "$STATE/client.log" | indent
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
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP" --interval 90s --timeout 180s --pool 0
    note "started: stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --interval 90s --timeout 180s --pool 0"
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
    start_with_secret client "$NS_LAPTOP" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP" --pool 0
    note "started: stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --pool 0"
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
        start_with_secret "client-s$i" "$(student_ns "$i")" "$BIN/stage3-client" "127.0.0.1:$APP_PORT" "$SERVER_IP" --name "student-$i" --pool 0
    done
    note "started, on each laptop i: TUNNEL_SECRET=… stage3-client 127.0.0.1:$APP_PORT $SERVER_IP --name student-i --pool 0"
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
# punch: two homes, each a laptop behind a router of its own, and a rendezvous on the server's
# machine; the laptops punch holes through both NATs for a direct UDP path. With --symmetric,
# router B gives each destination a port of its own, no hole lines up, and the stage-3 tunnel
# (a relay) is the way through. The chapter: stage_3/punch/README.md.

# build_punch_home LAPTOP_NS ROUTER_NS WAN_IP ISP_IP ISP_LINK [random]: a home like the lab's
# first one, with the same NAT and firewall, on $PUNCH_LAN: both homes use the same private
# range and the same addresses, as two real homes may.
build_punch_home() {
    new_namespaces "$1" "$2"
    link "$1" eth0 "$2" lan0
    ip -n "$1" addr add "$PUNCH_LAPTOP_IP/24" dev eth0
    ip -n "$2" addr add "$PUNCH_ROUTER_LAN_IP/24" dev lan0
    ip -n "$1" route add default via "$PUNCH_ROUTER_LAN_IP"
    connect_router "$2" "$3" "$4" "$5"
    nat_and_firewall "$2" "${6:-}"
}

print_punch_map() {
    cat <<EOM
   laptop A $PUNCH_LAPTOP_IP ── router A $PUNCH_ROUTER_LAN_IP │ NAT │ $ROUTER_A_WAN_IP ─┐
                                                                    ├── internet ── server $SERVER_IP
   laptop B $PUNCH_LAPTOP_IP ── router B $PUNCH_ROUTER_LAN_IP │ NAT │ $ROUTER_B_WAN_IP ───┘               rendezvous on :$RENDEZVOUS_PORT and :$((RENDEZVOUS_PORT + 1))
EOM
}

# show_udp_flows NS: router NS's tracked UDP flows, shown as typed, and kept in $STATE/NS.flows.
show_udp_flows() {
    printf '   $ ip netns exec %s conntrack -L -p udp\n' "$1"
    ip netns exec "$1" conntrack -L -p udp 2>/dev/null >"$STATE/$1.flows" || true
    indent <"$STATE/$1.flows"
}

# peer_flow NS DESTINATION: router NS's flow from its laptop's port to DESTINATION, the other
# router's address (one line, or none).
peer_flow() {
    grep -E "src=$PUNCH_LAPTOP_IP dst=$2 sport=$PUNCH_PORT " "$STATE/$1.flows" || true
}

# punch_peers: the rendezvous on the server, then a peer on each laptop, both started at once
# (alice on A, bob on B); waits for both and shows what each said. Sets alice_status and
# bob_status to their exit statuses.
punch_peers() {
    local rendezvous=$SERVER_IP:$RENDEZVOUS_PORT name
    start rendezvous "$NS_SERVER" "$BIN/stage3-rendezvous" --listen "$rendezvous"
    wait_for_log rendezvous '^stage3-rendezvous: listening' 10 || fail "stage3-rendezvous did not start"
    note "started: ip netns exec $NS_SERVER stage3-rendezvous --listen $rendezvous"
    start alice "$NS_LAPTOP_A" "$BIN/stage3-punch" --rendezvous "$rendezvous" --name alice --peer bob --port "$PUNCH_PORT" --hold "$PUNCH_HOLD" --keepalive "$PUNCH_KEEPALIVE"
    start bob "$NS_LAPTOP_B" "$BIN/stage3-punch" --rendezvous "$rendezvous" --name bob --peer alice --port "$PUNCH_PORT" --hold "$PUNCH_HOLD" --keepalive "$PUNCH_KEEPALIVE"
    note "one on each laptop:"
    note "  ip netns exec $NS_LAPTOP_A stage3-punch --rendezvous $rendezvous --name alice --peer bob --port $PUNCH_PORT --hold $PUNCH_HOLD --keepalive $PUNCH_KEEPALIVE"
    note "  ip netns exec $NS_LAPTOP_B stage3-punch --rendezvous $rendezvous --name bob --peer alice --port $PUNCH_PORT --hold $PUNCH_HOLD --keepalive $PUNCH_KEEPALIVE"
    alice_status=0 bob_status=0
    wait "$(<"$STATE/alice.pid")" || alice_status=$?
    wait "$(<"$STATE/bob.pid")" || bob_status=$?
    note "alice, on laptop A (exit status $alice_status):"
    indent <"$STATE/alice.log"
    note "bob, on laptop B (exit status $bob_status):"
    indent <"$STATE/bob.log"
    for name in alice bob; do
        grep -q '^stage3-punch: \[3\] ' "$STATE/$name.log" || fail "$name never learnt from the rendezvous where its peer is"
    done
}

# check_rendezvous_log: its log has only probes and registers, from the two routers' addresses.
check_rendezvous_log() {
    local lines others addresses
    lines=$(grep -v '^stage3-rendezvous: listening' "$STATE/rendezvous.log" || true)
    indent <<<"$lines"
    if grep -q 'ignored' <<<"$lines"; then
        fail "the rendezvous ignored datagrams: something other than a probe or a register reached it"
    fi
    others=$(grep -vE '^stage3-rendezvous: (\[1\] probe from |\[3\] [a-z]+ registered from |\[3\] [a-z]+ at .* named each other)' <<<"$lines" || true)
    [[ -z $others ]] || fail "the rendezvous logged more than probes and registers: $others"
    addresses=$(grep -oE '([0-9]+\.){3}[0-9]+' <<<"$lines" | sort -u)
    [[ $addresses == "$(printf '%s\n' "$ROUTER_A_WAN_IP" "$ROUTER_B_WAN_IP" | sort)" ]] ||
        fail "the rendezvous saw other addresses than the two routers': ${addresses//$'\n'/, }"
    note "$(grep -c . <<<"$lines") lines: $(grep -c '\[1\] probe' <<<"$lines") probes, $(grep -c ' registered from ' <<<"$lines") registers," \
        "$(grep -c 'named each other' <<<"$lines") introduction, nothing ignored, from the routers' addresses only"
}

# relay_fallback: what works when punching does not, the stage-3 tunnel (a relay on the
# server): an app and its client on laptop B, and laptop A as the user.
relay_fallback() {
    mkdir "$STATE/www-b"
    echo "hello from the app on laptop B ($PUNCH_LAPTOP_IP), behind router B's symmetric NAT" >"$STATE/www-b/index.html"
    start app "$NS_LAPTOP_B" python3 -m http.server "$APP_PORT" --bind 127.0.0.1 --directory "$STATE/www-b"
    wait_for_port "$NS_LAPTOP_B" 127.0.0.1 "$APP_PORT" 10 || fail "laptop B's web app did not start"
    note "laptop B runs a web app on 127.0.0.1:$APP_PORT"
    start_tunnel "$NS_LAPTOP_B"
    local page
    page=$(shown "$NS_LAPTOP_A" curl -sS -m 10 "http://$SERVER_IP:$PUBLIC_PORT/") ||
        { printf '%s\n' "$page"; fail "laptop A's curl through the tunnel failed"; }
    printf '%s\n' "$page"
    grep -q "hello from the app on laptop B" <<<"$page" || fail "laptop A did not get laptop B's page"
    grep -E '\[(2|3|4)\]' "$STATE/server.log" | tail -n 3 | indent
    grep -qE "\[2\] user $ROUTER_A_WAN_IP:[0-9]+ connected" "$STATE/server.log" ||
        fail "the server did not see laptop A arrive from router A's $ROUTER_A_WAN_IP"
    grep -qE "\[4\] proxy connection from $ROUTER_B_WAN_IP:[0-9]+ matched" "$STATE/server.log" ||
        fail "the server did not see laptop B's proxy connection arrive from router B's $ROUTER_B_WAN_IP"
}

# punch_direct: the checks of plain `punch`, after punch_peers.
punch_direct() {
    local name
    for name in alice bob; do
        grep -q '^stage3-punch: \[2\] .*endpoint-independent' "$STATE/$name.log" ||
            fail "$name's NAT did not keep one mapping for both of the rendezvous's ports"
    done
    ((alice_status == 0 && bob_status == 0)) ||
        fail "a peer found no direct path (alice exited $alice_status, bob $bob_status; 0 means a direct path)"
    for name in alice bob; do
        grep -q '^stage3-punch: \[6\] direct path' "$STATE/$name.log" || fail "$name exited 0 without saying \"direct path\""
    done
    ok "both found a direct path (exit status 0): each router let in the other's punches"

    heading "Check 2: each router tracks the flow between the laptops, answered both ways."
    local flow_a flow_b
    show_udp_flows "$NS_ROUTER_A"
    show_udp_flows "$NS_ROUTER_B"
    flow_a=$(peer_flow "$NS_ROUTER_A" "$ROUTER_B_WAN_IP")
    flow_b=$(peer_flow "$NS_ROUTER_B" "$ROUTER_A_WAN_IP")
    [[ -n $flow_a && -n $flow_b ]] || fail "a router tracks no flow from its laptop to the other router"
    [[ $flow_a$flow_b != *UNREPLIED* ]] || fail "a router's flow between the laptops was never answered"
    [[ $flow_a == *ASSURED* && $flow_b == *ASSURED* ]] ||
        fail "a router's flow between the laptops is not [ASSURED] after the keep-alives"
    [[ $flow_a == *" src=$ROUTER_B_WAN_IP dst=$ROUTER_A_WAN_IP sport=$PUNCH_PORT dport=$PUNCH_PORT "* &&
        $flow_b == *" src=$ROUTER_A_WAN_IP dst=$ROUTER_B_WAN_IP sport=$PUNCH_PORT dport=$PUNCH_PORT "* ]] ||
        fail "a router did not keep port $PUNCH_PORT for its laptop's flow to the other router"
    note "three flows on each router, all from the laptop's port $PUNCH_PORT: to the rendezvous's two"
    note "ports, and to the other router. Each reply side ends in dport=$PUNCH_PORT: the router kept"
    note "the laptop's port for every destination, so where the rendezvous saw each peer is where"
    note "the other's punches arrived. The flow between the laptops is [ASSURED]: answered, and"
    note "still in use after 2 s (the keep-alives), so the router keeps it 120 s after its last"
    note "datagram (the number after 17), the rendezvous's flows only 30"
    ok "each router's mapping held for the other peer: $ROUTER_A_WAN_IP:$PUNCH_PORT ⇄ $ROUTER_B_WAN_IP:$PUNCH_PORT"

    heading "Check 3: the rendezvous only introduced them: the peers' lines went direct."
    check_rendezvous_log
    ok "the rendezvous saw no datagram of the peers' conversation: no relay between them"

    heading "nat-lab punch: all 3 checks held: a direct path through both NATs, no relay."
}

# punch_symmetric: the checks of `punch --symmetric`, after punch_peers; then the fallback.
punch_symmetric() {
    grep -q '^stage3-punch: \[2\] .*endpoint-dependent' "$STATE/bob.log" ||
        fail "bob did not find router B's mapping endpoint-dependent"
    grep -q '^stage3-punch: \[3\] bob is at .*(its NAT: dependent)' "$STATE/alice.log" ||
        fail "alice was not told that bob's NAT is endpoint-dependent"
    ((alice_status == 3 && bob_status == 3)) ||
        fail "the peers should both have found no direct path (exit status 3); alice exited $alice_status, bob $bob_status"
    local name
    for name in alice bob; do
        grep -q 'no direct path' "$STATE/$name.log" || fail "$name exited 3 without saying \"no direct path\""
    done
    ok "no direct path (both exit status 3), as predicted: router B gives each destination a port of its own"

    heading "Check 2: router B sent bob's punches from a port nobody was told about."
    local flow_a flow_b seen sent
    show_udp_flows "$NS_ROUTER_A"
    show_udp_flows "$NS_ROUTER_B"
    flow_a=$(peer_flow "$NS_ROUTER_A" "$ROUTER_B_WAN_IP")
    flow_b=$(peer_flow "$NS_ROUTER_B" "$ROUTER_A_WAN_IP")
    [[ -n $flow_a && -n $flow_b ]] || fail "a router tracks no flow from its laptop to the other router"
    [[ $flow_a == *UNREPLIED* && $flow_b == *UNREPLIED* ]] || fail "a flow between the laptops was answered"
    seen=$(grep -oE '\[3\] bob is at [0-9.]+:[0-9]+' "$STATE/alice.log")
    seen=${seen##*:}
    sent=${flow_b##*dport=}
    sent=${sent%% *}
    [[ $seen != "$sent" ]] || fail "router B sent bob's punches from the port the rendezvous saw ($seen)"
    note "the rendezvous saw bob at $ROUTER_B_WAN_IP:$seen, and alice punched that port; but bob's"
    note "punches to alice left router B from port $sent (router B's flow to $ROUTER_A_WAN_IP, its"
    note "reply side: dport=$sent), a mapping of their own. Each router's flow to the other stays"
    note "[UNREPLIED]: the other's punches matched none of its flows, so to each router they were"
    note "traffic that started outside, addressed to the router itself: its input chain dropped them"
    local ns dropped
    for ns in "$NS_ROUTER_A" "$NS_ROUTER_B"; do
        printf '   $ ip netns exec %s nft list chain inet router input | grep counter\n' "$ns"
        dropped=$(ip netns exec "$ns" nft list chain inet router input | grep -o 'counter.*')
        indent <<<"$dropped"
        [[ $dropped =~ packets\ [1-9] ]] || fail "$ns's input chain dropped nothing: where did the other's punches go?"
    done
    ok "each router dropped the other's punches: no hole lines up with a port-per-destination NAT"

    heading "Check 3: the fallback, a relay: the same two laptops through the stage-3 tunnel."
    relay_fallback
    ok "laptop A reached laptop B's app through the server: a relay needs no hole, since"
    note "  every connection through either router was opened from inside its home"

    heading "nat-lab punch --symmetric: all 3 checks held: no direct path, as predicted; the relay got through."
}

cmd_punch() {
    local symmetric=
    case $1 in
        "") ;;
        --symmetric) symmetric=random ;;
        *) echo "nat-lab: punch takes nothing or --symmetric, got: $1" >&2; exit 2 ;;
    esac
    begin_run conntrack punch
    make_state
    build_internet no-user
    build_punch_home "$NS_LAPTOP_A" "$NS_ROUTER_A" "$ROUTER_A_WAN_IP" "$ISP_ROUTER_SIDE" to-router-a
    build_punch_home "$NS_LAPTOP_B" "$NS_ROUTER_B" "$ROUTER_B_WAN_IP" "$ISP_USER_SIDE" to-router-b $symmetric
    if [[ -n $symmetric ]]; then
        echo "nat-lab punch --symmetric: the same two homes, router B with a \"symmetric\" NAT"
    else
        echo "nat-lab punch: two laptops, each behind its own NAT, look for a direct path"
    fi
    print_punch_map
    note "both LANs are $PUNCH_LAN, as in two real homes: a private address means nothing outside"
    note "its home. Each router masquerades, and drops what starts outside (input and forward)"
    if [[ -n $symmetric ]]; then
        note "router B: \`masquerade random\`: a random port for each new flow, so each destination"
        note "sees laptop B from a port of its own (endpoint-dependent mapping, a \"symmetric\" NAT)"
    fi

    heading "Check 1: the rendezvous on the server, and a peer on each laptop, started at once."
    punch_peers
    if [[ -n $symmetric ]]; then
        punch_symmetric
    else
        punch_direct
    fi
}

# ---------------------------------------------------------------------------------------------

# One subcommand at a time; only class (the class's size) and punch (--symmetric) take an argument.
if (($# > 2)) || { (($# == 2)) && [[ $1 != class && $1 != punch ]]; }; then
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
    punch) cmd_punch "${2-}" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
esac
