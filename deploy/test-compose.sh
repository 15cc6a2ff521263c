#!/usr/bin/env bash
# `make test-deploy`: the 3-member compose cluster (deploy/compose.yaml) built from the image
# `make image` made, under a writer, through real container faults:
#   0. put on one member, get from the others, through the published ports (host etcdctl);
#   1. docker kill a follower, then the leader: writes go on; each restarted member catches up;
#   2. a real partition: docker network disconnect of the leader: the majority goes on, the cut-off
#      member answers a linearizable read and a put with a bounded error, never a value; after
#      reconnect it catches up;
#   3. docker pause of the leader for longer than the election timeout, then unpause;
#   4. a rolling upgrade: each member's container recreated from a new image tag, one at a
#      time, waiting for health between steps (what a StatefulSet update does);
#   5. docker-compose down, then up with the same volumes: every key and revision is back;
#   6. a backup with etcdctl snapshot save; 7. member add and a new container that joins.
# Every acknowledged write is read back at the end. A failed step prints the members' logs.
# Containers, the network and the volumes are removed at the end, even on failure.
#
#   METASTORE_IMAGE  the image under test (default metastore:local)
#   PROJECT          the compose project name (default metastore-deploy-test)
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${METASTORE_IMAGE:-metastore:local}
PROJECT=${PROJECT:-metastore-deploy-test}
TOOLS=$PROJECT-etcdctl:local
NEXT=$PROJECT-next:local
NET=${PROJECT}_metastore
COMPOSE=(docker-compose -p "$PROJECT" -f deploy/compose.yaml)
MEMBERS=(metastore-0 metastore-1 metastore-2)
export ETCDCTL_API=3

if ! docker info >/dev/null 2>&1; then
  echo "test-compose: docker info failed; this machine promises a Docker engine:" >&2
  docker info >&2 || true
  exit 1
fi
docker image inspect "$IMAGE" >/dev/null 2>&1 ||
  { echo "test-compose: no image $IMAGE: run make image first" >&2; exit 1; }

work=$(mktemp -d)
passed=0
step=setup
writer_pid=

# Three free ports for the published client ports.
read -r p0 p1 p2 < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])')
export METASTORE_IMAGE=$IMAGE METASTORE_PORT_0=$p0 METASTORE_PORT_1=$p1 METASTORE_PORT_2=$p2
HOST_EPS=127.0.0.1:$p0,127.0.0.1:$p1,127.0.0.1:$p2
NET_EPS=metastore-0:2379,metastore-1:2379,metastore-2:2379

cleanup() {
  local rc=$?
  set +e
  [ -n "$writer_pid" ] && kill "$writer_pid" 2>/dev/null && wait "$writer_pid" 2>/dev/null
  if [ "$rc" != 0 ]; then
    echo "== FAILED in step: $step; the members' logs:" >&2
    "${COMPOSE[@]}" logs --no-color --tail 150 >&2 || true
    echo "$passed passed, 1 failed"
  fi
  # The added member first: while it is on the network, down cannot remove the network.
  docker rm -f -v "$PROJECT-metastore-3" >/dev/null 2>&1 || true
  docker volume rm "${PROJECT}_data-3" >/dev/null 2>&1 || true
  "${COMPOSE[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
  docker image rm "$TOOLS" "$NEXT" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "test-compose: $step: $*" >&2; exit 1; }
ok() { passed=$((passed + 1)); echo "ok: $step${1:+ ($1)}"; }
now() { date +%s.%N; }
cid() { "${COMPOSE[@]}" ps -q "$1"; }

# etcdctl in a container: on the cluster's network, or inside one member's network namespace
# (which reaches that member even while it is cut off from the network).
ctl_net() { docker run --rm --network "$NET" "$TOOLS" "$@"; }
ctl_in() {
  local member=$1
  shift
  docker run --rm --network "container:$(cid "$member")" "$TOOLS" --endpoints 127.0.0.1:2379 "$@"
}

wait_healthy() { # members...; at most 90 s
  local deadline=$(($(date +%s) + 90)) m
  for m in "$@"; do
    until [ "$(docker inspect -f '{{.State.Health.Status}}' "$(cid "$m")")" = healthy ]; do
      [ "$(date +%s)" -lt "$deadline" ] || fail "$m not healthy within 90 s"
      sleep 0.5
    done
  done
}

# The leader's service name, as the members on the network see it.
leader() {
  # A member that cannot be reached makes etcdctl fail; the others' answers are still printed.
  { ctl_net --endpoints "$NET_EPS" --command-timeout 3s endpoint status -w json 2>/dev/null || true; } |
    python3 -c '
import json, sys
for e in json.load(sys.stdin):
    s = e["Status"]
    if s["leader"] == s["header"]["member_id"]:
        print(e["Endpoint"].split(":")[0]); break'
}

revision_of() { # member: its revision, asked inside its own network namespace
  ctl_in "$1" --command-timeout 3s endpoint status -w json 2>/dev/null |
    python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])'
}

# The restarted/reconnected member reaches the revision the others had once it was back.
wait_caught_up() { # member other
  local target got deadline=$(($(date +%s) + 60))
  target=$(revision_of "$2")
  while :; do
    got=$(revision_of "$1" || echo 0)
    [ "${got:-0}" -ge "$target" ] && break
    [ "$(date +%s)" -lt "$deadline" ] || fail "$1 at revision $got, not caught up to $target in 60 s"
    sleep 0.5
  done
}

acked_count() { wc -l <"$work/acked"; }
wait_writes_after() { # count: waits for a write acknowledged after it (at most 30 s)
  local deadline=$(($(date +%s) + 30))
  until [ "$(acked_count)" -gt "$1" ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "no write acknowledged for 30 s"
    sleep 0.2
  done
}
longest_gap() { # from to: the longest time without an acknowledged write, in seconds
  python3 - "$work/acked" "$1" "$2" <<'PY'
import sys
start, end = float(sys.argv[2]), float(sys.argv[3])
times = [float(l.split()[1]) for l in open(sys.argv[1])]
inside = [start] + [t for t in times if start <= t <= end] + [end]
print("%.2f" % max(b - a for a, b in zip(inside, inside[1:])))
PY
}

# Puts unique keys through the published ports until told to stop; every acknowledged key is
# logged with its time, so the end can read each one back.
writer() {
  local i=0 key
  while [ ! -e "$work/stop" ]; do
    i=$((i + 1))
    key=$(printf 'w-%07d' "$i")
    if etcdctl --endpoints "$HOST_EPS" --command-timeout 3s put "$key" "$key" >/dev/null 2>>"$work/writer.err"; then
      echo "$key $(now)" >>"$work/acked"
    fi
  done
}

# Every key and its revisions, as the cluster answers them (linearizable).
dump() {
  ctl_net --endpoints "$NET_EPS" --command-timeout 10s get "" --prefix -w json |
    python3 -c '
import base64, json, sys
d = json.load(sys.stdin)
text = lambda b: base64.b64decode(b).decode()
print("revision", d["header"]["revision"])
for kv in d.get("kvs", []):
    print(text(kv["key"]), kv["create_revision"], kv["mod_revision"], kv.get("version", 0),
          text(kv.get("value", "")))'
}

step="build the etcdctl test image"
mkdir -p "$work/tools"
cp "$(command -v etcdctl)" "$work/tools/etcdctl"
printf 'FROM %s\nCOPY etcdctl /usr/local/bin/etcdctl\nENV ETCDCTL_API=3\nHEALTHCHECK NONE\nENTRYPOINT ["/usr/local/bin/etcdctl"]\n' "$IMAGE" >"$work/tools/Dockerfile"
DOCKER_BUILDKIT=0 docker build --quiet -t "$TOOLS" "$work/tools" >"$work/build.log" 2>&1 ||
  fail "$(cat "$work/build.log")"

step="start the cluster"
"${COMPOSE[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
t0=$(now)
"${COMPOSE[@]}" up -d >/dev/null 2>&1 || { "${COMPOSE[@]}" up -d; fail "docker-compose up failed"; }
wait_healthy "${MEMBERS[@]}"
start_s=$(python3 -c "print('%.1f' % ($(now) - $t0))")
[ "$(docker inspect -f '{{.Config.User}}' "$(cid metastore-0)")" = 65532:65532 ] || fail "not running as 65532"
ok "3 members healthy ${start_s} s after docker-compose up"

step="put on one member, get from the others (host etcdctl, published ports)"
etcdctl --endpoints "127.0.0.1:$p0" put hello world >/dev/null
for p in "$p1" "$p2"; do
  got=$(etcdctl --endpoints "127.0.0.1:$p" get hello --print-value-only)
  [ "$got" = world ] || fail "127.0.0.1:$p answered '$got'"
done
ok

: >"$work/acked"
writer &
writer_pid=$!
wait_writes_after 0

step="1. docker kill a follower, then the leader"
lead=$(leader)
[ -n "$lead" ] || fail "no leader"
for m in "${MEMBERS[@]}"; do [ "$m" != "$lead" ] && { follower=$m; break; }; done
t=$(now)
docker kill "$(cid "$follower")" >/dev/null
n=$(acked_count)
sleep 2
wait_writes_after "$n"
docker start "$(cid "$follower")" >/dev/null
wait_healthy "$follower"
wait_caught_up "$follower" "$lead"
gap_follower=$(longest_gap "$t" "$(now)")
t=$(now)
docker kill "$(cid "$lead")" >/dev/null
n=$(acked_count)
wait_writes_after "$n"
gap_leader=$(longest_gap "$t" "$(now)")
docker start "$(cid "$lead")" >/dev/null
wait_healthy "$lead"
wait_caught_up "$lead" "$follower"
ok "longest write gap: follower killed ${gap_follower} s, leader killed ${gap_leader} s"

step="2. partition: docker network disconnect of the leader"
lead=$(leader)
[ -n "$lead" ] || fail "no leader"
for m in "${MEMBERS[@]}"; do [ "$m" != "$lead" ] && { other=$m; break; }; done
etcdctl --endpoints "$HOST_EPS" put partition-probe before >/dev/null
t=$(now)
docker network disconnect "$NET" "$(cid "$lead")"
n=$(acked_count)
wait_writes_after "$n"
gap_partition=$(longest_gap "$t" "$(now)")
etcdctl --endpoints "$HOST_EPS" put partition-probe after >/dev/null
new_lead=$(leader)
[ -n "$new_lead" ] && [ "$new_lead" != "$lead" ] || fail "the majority has no new leader ($new_lead)"
# The cut-off member: a linearizable read and a put must fail, the member itself answering an
# error well before the client's 40 s run out (etcdctl retries an Unavailable answer until its
# timeout, logging each: the first such line is the member's own answer); neither may answer a
# value (a read answering 'before' would be stale).
errors=
for op in "get partition-probe --print-value-only" "put partition-probe isolated"; do
  s=$(now)
  # shellcheck disable=SC2086
  if out=$(ctl_in "$lead" --command-timeout 40s $op 2>&1); then
    fail "the cut-off member answered '$op': $out"
  fi
  echo "$out" >"$work/probe.out"
  answer=$(python3 - "$s" "$(now)" "$work/probe.out" <<'PY'
import datetime, json, sys
start, end = float(sys.argv[1]), float(sys.argv[2])
for line in open(sys.argv[3]):
    if line.startswith("{") and "retrying of unary invoker failed" in line:
        d = json.loads(line)
        t = datetime.datetime.fromisoformat(d["ts"].replace("Z", "+00:00")).timestamp()
        print("%.1f %s" % (t - start, d["error"].split("desc = ")[-1]))
        break
    if line.startswith("Error: "):
        print("%.1f %s" % (end - start, line[7:].strip()))
        break
PY
  )
  took=${answer%% *}
  [ -n "$answer" ] && python3 -c "import sys; sys.exit(0 if $took < 25 else 1)" ||
    fail "'$op' answered no error within 25 s: $out"
  errors="$errors ${op%% *} '${answer#* }' after ${took} s;"
done
docker network connect --alias "$lead" "$NET" "$(cid "$lead")"
wait_healthy "$lead"
wait_caught_up "$lead" "$new_lead"
got=$(ctl_in "$lead" get partition-probe --print-value-only)
[ "$got" = after ] || fail "after reconnect, $lead answered '$got'"
ok "writes resumed after ${gap_partition} s; the cut-off member (times include docker run):$errors"

# Freezes member $1's container. The cgroup v1 freezer gives up ("unable to freeze") when a
# task stays in uninterruptible sleep, as a member does in fsync under writes: that is the
# fault injector failing, not the member, so it is tried again, at most 10 times.
pause_member() {
  local out
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    if out=$(docker pause "$(cid "$1")" 2>&1); then
      return 0
    fi
    case $out in
      *"unable to freeze"*) sleep 0.2 ;;
      *) fail "docker pause $1: $out" ;;
    esac
  done
  fail "docker pause $1 could not freeze it in 10 tries: $out"
}

step="3. docker pause of the leader for 5 s"
lead=$(leader)
[ -n "$lead" ] || fail "no leader"
for m in "${MEMBERS[@]}"; do [ "$m" != "$lead" ] && { other=$m; break; }; done
t=$(now)
pause_member "$lead"
n=$(acked_count)
sleep 5
wait_writes_after "$n"
docker unpause "$(cid "$lead")" >/dev/null
wait_healthy "$lead"
wait_caught_up "$lead" "$other"
gap_pause=$(longest_gap "$t" "$(now)")
ok "longest write gap ${gap_pause} s"

step="4. rolling upgrade: each member's container recreated from a new image, one at a time"
# The new image is the same build under another tag: what is tested is the roll (a new
# container on the old volume, health before the next), as a StatefulSet update does it.
docker tag "$IMAGE" "$NEXT"
export METASTORE_IMAGE=$NEXT
t=$(now)
for m in "${MEMBERS[@]}"; do
  "${COMPOSE[@]}" up -d --no-deps "$m" >/dev/null 2>&1
  wait_healthy "$m"
done
n=$(acked_count)
wait_writes_after "$n"
gap_rolling=$(longest_gap "$t" "$(now)")
for m in "${MEMBERS[@]}"; do
  [ "$(docker inspect -f '{{.Config.Image}}' "$(cid "$m")")" = "$NEXT" ] || fail "$m not on $NEXT"
done
ok "longest write gap ${gap_rolling} s"

touch "$work/stop"
wait "$writer_pid"
writer_pid=

step="every acknowledged write is read back"
dump >"$work/before"
python3 - "$work/acked" "$work/before" <<'PY' || fail "acknowledged writes missing"
import sys
acked = [l.split()[0] for l in open(sys.argv[1])]
have = {l.split()[0]: l.split()[4] for l in open(sys.argv[2]) if l.startswith("w-")}
missing = [k for k in acked if have.get(k) != k]
if missing:
    sys.exit(f"{len(missing)} of {len(acked)} acknowledged writes missing: {missing[:10]}")
PY
acked_total=$(acked_count)
ok "$acked_total acknowledged writes, all present"

step="5. docker-compose down, then up with the same volumes"
"${COMPOSE[@]}" down -t 10 >/dev/null 2>&1
[ -n "$(docker volume ls -q --filter "name=${PROJECT}_data-0")" ] || fail "the volumes went with down"
t0=$(now)
"${COMPOSE[@]}" up -d >/dev/null 2>&1
wait_healthy "${MEMBERS[@]}"
restart_s=$(python3 -c "print('%.1f' % ($(now) - $t0))")
dump >"$work/after"
diff -q "$work/before" "$work/after" >/dev/null ||
  fail "keys or revisions differ after down/up: $(diff "$work/before" "$work/after" | head -5)"
ok "$(head -1 "$work/after"), $(($(wc -l <"$work/after") - 1)) keys back, healthy ${restart_s} s after up"

step="6. backup: etcdctl snapshot save through a published port"
etcdctl --endpoints "127.0.0.1:$p0" snapshot save "$work/backup.db" >/dev/null
snap_rev=$(etcdctl snapshot status "$work/backup.db" -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)["revision"])')
want_rev=$(head -1 "$work/after" | cut -d' ' -f2)
[ "$snap_rev" = "$want_rev" ] || fail "the snapshot is at revision $snap_rev, the cluster at $want_rev"
ok "snapshot at revision $snap_rev, $(($(stat -c %s "$work/backup.db") / 1024)) KiB"

step="7. scale: member add, then a new container joins with its own volume"
etcdctl --endpoints "$HOST_EPS" member add metastore-3 --peer-urls=http://metastore-3:2380 >/dev/null
docker run -d --name "$PROJECT-metastore-3" --label "org.metastore.test=$PROJECT" \
  --network "$NET" --network-alias metastore-3 --hostname metastore-3 \
  --read-only --cap-drop ALL --health-interval 2s \
  -v "${PROJECT}_data-3:/var/lib/metastore" \
  -e ETCD_INITIAL_CLUSTER=metastore-0=http://metastore-0:2380,metastore-1=http://metastore-1:2380,metastore-2=http://metastore-2:2380,metastore-3=http://metastore-3:2380 \
  -e ETCD_INITIAL_CLUSTER_STATE=existing -e ETCD_INITIAL_CLUSTER_TOKEN=metastore \
  -e ETCD_ADVERTISE_CLIENT_URLS=http://metastore-3:2379 \
  "$IMAGE" --name=metastore-3 --initial-advertise-peer-urls=http://metastore-3:2380 >/dev/null
deadline=$(($(date +%s) + 90))
until [ "$(docker inspect -f '{{.State.Health.Status}}' "$PROJECT-metastore-3")" = healthy ]; do
  [ "$(date +%s)" -lt "$deadline" ] || { docker logs --tail 50 "$PROJECT-metastore-3" >&2; fail "metastore-3 not healthy in 90 s"; }
  sleep 0.5
done
got=$(docker run --rm --network "container:$PROJECT-metastore-3" "$TOOLS" --endpoints 127.0.0.1:2379 get hello --print-value-only)
[ "$got" = world ] || { docker logs --tail 50 "$PROJECT-metastore-3" >&2; fail "metastore-3 answered '$got'"; }
started=$(etcdctl --endpoints "$HOST_EPS" member list | grep -c ', started, ')
[ "$started" = 4 ] || fail "$started members started, not 4"
ok "4 members started; the new one answers from the replicated data"

size=$(docker image inspect -f '{{.Size}}' "$IMAGE")
echo "image $IMAGE: $((size / 1000000)) MB"
echo "$passed passed, 0 failed"
