#!/bin/sh
# retail-stream-pod: the container entry point of the multi-process `dataflow` job on
# Kubernetes. It turns pod <statefulset>-<i> of a StatefulSet into process i of an n-process
# timely job: it writes the hostfile (line j = pod j's stable DNS name and the timely port),
# then execs `dataflow -n n -p i -w W -h HOSTFILE [-F PROPS] --http ADDR "$@"`, where "$@"
# are the container's args.
#
# Environment:
#   RS_REPLICAS           required: the process count n (the StatefulSet's replicas).
#   POD_NAME              the pod's name (downward API metadata.name) [default: $(hostname)].
#                         Its suffix after the last '-' is the ordinal i, which must be an
#                         integer below n.
#   RS_STATEFULSET        the StatefulSet's name [default: POD_NAME without "-<i>"].
#   RS_SERVICE            required: the headless Service that gives each pod a DNS name.
#   RS_DOMAIN             suffix after the service in the DNS names [default:
#                         $POD_NAMESPACE.svc.cluster.local when POD_NAMESPACE is set, else
#                         empty: names are <statefulset>-<j>.<service>]. Set it empty to force
#                         the short names.
#   POD_NAMESPACE         the pod's namespace (downward API metadata.namespace), for RS_DOMAIN.
#   RS_PORT               timely's TCP port, also the heartbeats' UDP port [default: 2101].
#   RS_WORKERS            worker threads per process [default: 1].
#   RS_HTTP               IP:PORT for --http (/healthz, /readyz, /metrics, the page on process
#                         0) [default: 0.0.0.0:8080]; empty: no --http.
#   RS_CLIENT_PROPERTIES  Kafka client properties, passed as -F FILE when the file exists
#                         [default: /etc/retail-stream/client.properties].
#   RS_STATE_DIR          writable directory for the hostfile, $RS_STATE_DIR/hosts
#                         [default: /var/lib/retail-stream].
#   DATAFLOW_BIN          the program to exec [default: dataflow].
#
# Exit status 2: the environment above is wrong (nothing was started). Otherwise the status is
# the dataflow's: 75 when a peer died, froze, was cut off or restarted; the pod's restart
# policy (Always) restarts it and the job resumes from its Kafka checkpoint.
set -eu

me=retail-stream-pod

fail() {
    echo "$me: $*" >&2
    exit 2
}

# A non-negative decimal integer without leading zeros (as StatefulSet ordinals are).
is_count() {
    case $1 in
        0) return 0 ;;
        '' | 0* | *[!0-9]*) return 1 ;;
        *) [ "${#1}" -le 9 ] ;;
    esac
}

[ -n "${RS_REPLICAS:-}" ] || fail "RS_REPLICAS is required (the number of processes)"
is_count "$RS_REPLICAS" && [ "$RS_REPLICAS" -ge 1 ] ||
    fail "RS_REPLICAS must be a positive integer, got '$RS_REPLICAS'"
[ -n "${RS_SERVICE:-}" ] || fail "RS_SERVICE is required (the headless Service's name)"

POD_NAME=${POD_NAME:-$(hostname)}
case $POD_NAME in
    *-*) ORDINAL=${POD_NAME##*-} ;;
    *) fail "POD_NAME '$POD_NAME' has no '-<ordinal>' suffix (expected <statefulset>-<i>)" ;;
esac
is_count "$ORDINAL" ||
    fail "POD_NAME '$POD_NAME' does not end in '-<ordinal>' with an integer ordinal"
[ "$ORDINAL" -lt "$RS_REPLICAS" ] ||
    fail "ordinal $ORDINAL of pod '$POD_NAME' is not below RS_REPLICAS=$RS_REPLICAS"

RS_STATEFULSET=${RS_STATEFULSET:-${POD_NAME%-*}}
if [ -z "${RS_DOMAIN+set}" ]; then
    if [ -n "${POD_NAMESPACE:-}" ]; then
        RS_DOMAIN=$POD_NAMESPACE.svc.cluster.local
    else
        RS_DOMAIN=
    fi
fi
RS_PORT=${RS_PORT:-2101}
is_count "$RS_PORT" && [ "$RS_PORT" -ge 1 ] && [ "$RS_PORT" -le 65535 ] ||
    fail "RS_PORT must be a port number, got '$RS_PORT'"
RS_WORKERS=${RS_WORKERS:-1}
is_count "$RS_WORKERS" && [ "$RS_WORKERS" -ge 1 ] ||
    fail "RS_WORKERS must be a positive integer, got '$RS_WORKERS'"
RS_HTTP=${RS_HTTP-0.0.0.0:8080}
RS_CLIENT_PROPERTIES=${RS_CLIENT_PROPERTIES:-/etc/retail-stream/client.properties}
RS_STATE_DIR=${RS_STATE_DIR:-/var/lib/retail-stream}
DATAFLOW_BIN=${DATAFLOW_BIN:-dataflow}

# The hostfile: line j is pod j's stable name. Each process binds its own line's address
# (TCP for timely, UDP for heartbeats), so the headless Service publishes not-ready pods.
suffix=.$RS_SERVICE${RS_DOMAIN:+.$RS_DOMAIN}
hosts=$RS_STATE_DIR/hosts
mkdir -p "$RS_STATE_DIR" || fail "cannot create RS_STATE_DIR '$RS_STATE_DIR'"
j=0
: >"$hosts.tmp" || fail "cannot write the hostfile in RS_STATE_DIR '$RS_STATE_DIR'"
while [ "$j" -lt "$RS_REPLICAS" ]; do
    echo "$RS_STATEFULSET-$j$suffix:$RS_PORT" >>"$hosts.tmp"
    j=$((j + 1))
done
mv -f "$hosts.tmp" "$hosts"

# Prepended to the container's args: [-F PROPS] [--http ADDR] ARGS...
if [ -n "$RS_HTTP" ]; then
    set -- --http "$RS_HTTP" "$@"
fi
props=none
if [ -f "$RS_CLIENT_PROPERTIES" ]; then
    props=$RS_CLIENT_PROPERTIES
    set -- -F "$RS_CLIENT_PROPERTIES" "$@"
fi

echo "$me: process $ORDINAL of $RS_REPLICAS ($POD_NAME, $RS_STATEFULSET-$ORDINAL$suffix:$RS_PORT)," \
    "$RS_WORKERS worker(s), hostfile $hosts, client properties: $props" >&2
exec "$DATAFLOW_BIN" -n "$RS_REPLICAS" -p "$ORDINAL" -w "$RS_WORKERS" -h "$hosts" "$@"
