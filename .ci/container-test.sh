#!/usr/bin/env bash
# Container image test: builds the gsr image offline and runs a job end to end through it.
#
#   1. installs docker.io, debootstrap, curl, jq and git if they are missing;
#   2. starts dockerd unless one already answers (own data root, exec root and pidfile in a
#      temp dir; flags that leave the host's networking alone, ENVIRONMENT.md §1, §12);
#   3. makes `debian:bookworm-slim` with debootstrap + docker import when the daemon does
#      not have it (no image registry is reachable here), slimmed like the official image;
#   4. builds target/release/{gsr,gsr-sim} and the image `gsr:ci` from the Dockerfile's
#      `prebuilt` stage with the legacy builder (no BuildKit) and host networking;
#   5. starts gsr-sim on 127.0.0.1, pushes a tiny repository, creates a runner, starts the
#      image with the webhook's environment variables, checks /healthz and the secret,
#      enqueues a job, delivers its Job Hook (the simulator's own webhook delivery when it
#      has one, otherwise a hand-made POST), waits for the job to succeed and prints its
#      trace;
#   6. prints docker run → /healthz, idle RSS, image size and the phase timings.
#
# Everything it starts it stops (by PID or container id) on exit, and it removes its temp
# dir. Images it built stay in a daemon that was already running (so a re-run reuses the
# base image); a daemon it started is stopped and its data root deleted.
#
# Usage: .ci/container-test.sh        (root, Debian bookworm, CI=true or not, no stdin)
# Env:   GSR_CI_IMAGE   image tag to build (default gsr:ci)
#        GSR_CI_PORT    port the container listens on (default: first free from 18080)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

export DEBIAN_FRONTEND=noninteractive
export CARGO_TERM_COLOR=never
export DOCKER_BUILDKIT=0            # the legacy builder: buildx is not installed here

IMAGE=${GSR_CI_IMAGE:-gsr:ci}
BASE_IMAGE=debian:bookworm-slim
ADMIN_TOKEN=sim-admin-token
HOOK_SECRET="ci-hook-secret-$RANDOM$RANDOM"

now_ms() { date +%s%3N; }
T_START=$(now_ms)
log() { printf '\n== [%5.1fs] %s\n' "$(( $(now_ms) - T_START ))e-3" "$*"; }
die() { echo "container-test: $*" >&2; exit 1; }

CI_TMP=$(mktemp -d /tmp/gsr-container-ci.XXXXXX)
CID=""                  # the gsr container
CARGO_PID=""            # background cargo build (own process group)
FG_PID=""               # a long step run by `interruptible` (own process group)
DOCKERD_STARTED=""      # set when this script started dockerd
RUN_DOCKER_EXISTED=""   # /run/docker was there before dockerd started

# ---- cleanup: stop what we started, by pid / container id, however the script ends ------
stop_pid() {            # stop_pid PID SIGNAL [SECONDS]
  local pid=$1 sig=$2 secs=${3:-20} i
  kill -"$sig" "$pid" 2>/dev/null || return 0
  for ((i = 0; i < secs * 5; i++)); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  echo "pid $pid still alive ${secs}s after SIG$sig; sending SIGKILL" >&2
  kill -KILL "$pid" 2>/dev/null || true
}
exec 3>&1 4>&2          # the script's own stdout/stderr, for cleanup's messages
cleanup() {
  local rc=$? pid m
  set +e
  exec 1>&3 2>&4        # a signal may arrive while a step's output is redirected
  for pid in "$FG_PID" "$CARGO_PID"; do
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
      kill -TERM -- "-$pid" 2>/dev/null              # its own process group (setsid)
      wait "$pid" 2>/dev/null
    fi
  done
  if [ -n "$CID" ]; then
    if [ "$rc" -ne 0 ]; then
      echo "---- container log (last 60 lines) ----" >&2
      docker logs --tail 60 "$CID" >&2 2>&1
    fi
    docker rm -f "$CID" >/dev/null 2>&1
  fi
  if [ -s "$CI_TMP/sim.pid" ]; then
    if [ "$rc" -ne 0 ] && [ -s "$CI_TMP/sim.err" ]; then
      echo "---- gsr-sim log (last 30 lines) ----" >&2; tail -n 30 "$CI_TMP/sim.err" >&2
    fi
    stop_pid "$(cat "$CI_TMP/sim.pid")" TERM 10
  fi
  if [ -n "$DOCKERD_STARTED" ] && [ -s "$CI_TMP/dockerd.pid" ]; then
    stop_pid "$(cat "$CI_TMP/dockerd.pid")" TERM 30    # also stops its containerd
    # dockerd makes /run/docker/plugins whatever its --exec-root; remove it when it
    # was not there before (rmdir: only if empty).
    [ -n "$RUN_DOCKER_EXISTED" ] || rmdir /run/docker/plugins /run/docker 2>/dev/null
  fi
  # Mounts left below the temp dir (an interrupted debootstrap mounts /proc and /sys in
  # its target; a killed dockerd can leave overlays) go first, deepest first, and rm
  # never crosses into another file system.
  for m in $(awk -v d="$CI_TMP/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r); do
    umount -l "$m" 2>/dev/null
  done
  rm -rf --one-file-system "$CI_TMP"
  if [ "$rc" -ne 0 ]; then echo "container-test: FAILED (exit $rc)" >&2; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- packages: apt-get update at most once, install only what is missing ----------------
APT_UPDATED=""
apt_install() {
  local p missing=()
  for p in "$@"; do
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null)" = installed ] || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ -n "$APT_UPDATED" ] || { apt-get update -qq; APT_UPDATED=1; }
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# The URI apt uses for bookworm (ENVIRONMENT.md §1.3).
debian_mirror() {
  local m
  m=$(apt-get indextargets --format '$(REPO_URI)' 'Release: bookworm' 'Target-Of: deb' 2>/dev/null | head -n1)
  [ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
                         /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '
    /^[[:space:]]*#/ { next }
    $1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /:\/\// && $(i+1) == "bookworm") { print $i; exit } }
    $1 == "URIs:"   { u = $2 }
    $1 == "Suites:" { for (i = 2; i <= NF; i++) if ($i == "bookworm") s = 1 }
    /^[[:space:]]*$/ { if (s && u) { print u; exit } u = ""; s = 0 }
    END { if (s && u) print u }' | head -n1)
  [ -n "$m" ] || { echo "no bookworm entry in apt sources" >&2; return 1; }
  echo "${m%/}"
}

# Runs a long step in its own process group and waits for it: bash runs the INT/TERM
# trap during `wait` at once (not after a foreground command ends), and cleanup can stop
# the whole step by its group.
interruptible() {
  setsid "$@" </dev/null 3>&- 4>&- &
  FG_PID=$!
  local rc=0
  wait "$FG_PID" || rc=$?
  FG_PID=""
  return "$rc"
}

# Timings of the phases, printed at the end.
declare -a PHASES=()
T_PHASE=$(now_ms)
phase_done() { local t; t=$(now_ms); PHASES+=("$1|$(( t - T_PHASE ))"); T_PHASE=$t; }

# ---- 1. the binaries, built in the background while the machine is set up ---------------
log "cargo build --release -p gsr -p gsr-sim (background)"
# The serverless image is built without the container backends (see the Dockerfile).
setsid cargo build --release -p gsr -p gsr-sim --locked --no-default-features >"$CI_TMP/cargo.log" 2>&1 </dev/null 3>&- 4>&- &
CARGO_PID=$!

# ---- 2. packages --------------------------------------------------------------------------
log "packages"
apt_install docker.io debootstrap curl jq git ca-certificates
phase_done "packages (apt, when missing)"

# ---- 3. dockerd -----------------------------------------------------------------------------
log "docker engine"
if docker info >/dev/null 2>&1; then
  echo "docker: using the daemon already running"
else
  mkdir -p "$CI_TMP/docker/data" "$CI_TMP/docker/exec"
  [ ! -e /run/docker ] || RUN_DOCKER_EXISTED=1
  dockerd --data-root "$CI_TMP/docker/data" --exec-root "$CI_TMP/docker/exec" \
          --pidfile "$CI_TMP/docker/dockerd.pid" -H unix:///var/run/docker.sock \
          --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
          >"$CI_TMP/dockerd.log" 2>&1 </dev/null 3>&- 4>&- &
  echo $! >"$CI_TMP/dockerd.pid"
  DOCKERD_STARTED=1
  timeout 60 sh -c 'until docker info >/dev/null 2>&1; do sleep 0.2; done' || {
    tail -n 40 "$CI_TMP/dockerd.log" >&2; die "dockerd does not answer after 60 s"; }
  echo "docker: started dockerd (pid $(cat "$CI_TMP/dockerd.pid"))"
fi
docker version --format 'docker: client {{.Client.Version}}, server {{.Server.Version}} (API {{.Server.APIVersion}})'
phase_done "docker engine"

# ---- 4. the base image, made offline --------------------------------------------------------
log "base image $BASE_IMAGE"
BASE_ORIGIN="already in the daemon"
if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  echo "$BASE_IMAGE: already in the daemon"
else
  BASE_ORIGIN="made here with debootstrap"
  MIRROR=$(debian_mirror)
  RFS=$CI_TMP/rootfs
  echo "debootstrap --variant=minbase bookworm from $MIRROR"
  interruptible debootstrap --variant=minbase bookworm "$RFS" "$MIRROR" >"$CI_TMP/debootstrap.log" 2>&1 || {
    tail -n 40 "$CI_TMP/debootstrap.log" >&2; die "debootstrap failed"; }
  # Slim it like the official -slim image (debuerreotype): no docs, man pages or locales,
  # now or from packages installed later; no apt lists or caches.
  cat >"$RFS/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$RFS/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$RFS/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$RFS"/usr/share/{man,groff,info,lintian,linda}/*
  find "$RFS/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  rm -rf "$RFS"/var/lib/apt/lists/* "$RFS"/var/cache/apt/*.bin "$RFS"/var/cache/apt/archives/*.deb \
         "$RFS"/var/log/* "$RFS"/tmp/* "$RFS"/debootstrap
  # The host reaches its mirror with these apt settings (e.g. a snapshot mirror needs
  # Check-Valid-Until false); images built on this machine need the same.
  for k in Acquire::Check-Valid-Until Acquire::Check-Date Acquire::http::Proxy Acquire::https::Proxy; do
    apt-config dump "$k"
  done | grep -v '^Acquire ""' >"$RFS/etc/apt/apt.conf.d/99ci-host-acquire" || true
  tar -C "$RFS" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    --message "debootstrap --variant=minbase bookworm (made offline by .ci/container-test.sh)" \
    - "$BASE_IMAGE" >/dev/null
  rm -rf --one-file-system "$RFS"
  echo "$BASE_IMAGE: imported ($(docker image inspect -f '{{.Size}}' "$BASE_IMAGE" | numfmt --to=iec) )"
fi
phase_done "base image (debootstrap + import)"

# The runtime stage (apt-get install git …) while cargo still builds; the real build below
# then takes these layers from the cache. RUN steps reach the Debian mirror through the
# host's network: dockerd runs with --bridge=none.
log "docker build --target runtime (warms the layer cache)"
interruptible docker build --network host --force-rm --target runtime -t "$IMAGE-runtime" . \
  >"$CI_TMP/build-runtime.log" 2>&1 || { tail -n 40 "$CI_TMP/build-runtime.log" >&2; die "docker build (runtime) failed"; }
phase_done "image runtime stage (apt-get in the build)"

# ---- 5. binaries and the image ----------------------------------------------------------------
log "waiting for cargo"
if ! wait "$CARGO_PID"; then CARGO_PID=""; tail -n 60 "$CI_TMP/cargo.log" >&2; die "cargo build failed"; fi
CARGO_PID=""
tail -n 1 "$CI_TMP/cargo.log"
GSR=$ROOT/target/release/gsr
SIM=$ROOT/target/release/gsr-sim
"$GSR" webhook --help >/dev/null 2>&1 || die "$GSR has no 'webhook' command"
phase_done "cargo build --release (rest, after the above)"

log "docker build --target prebuilt -t $IMAGE"
OLD_IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
interruptible docker build --network host --force-rm --target prebuilt -t "$IMAGE" . \
  >"$CI_TMP/build.log" 2>&1 || { tail -n 40 "$CI_TMP/build.log" >&2; die "docker build failed"; }
grep -E '^Step |^Successfully' "$CI_TMP/build.log" || true
docker rmi "$IMAGE-runtime" >/dev/null     # only a tag now: $IMAGE is built on it
NEW_IMAGE_ID=$(docker image inspect -f '{{.Id}}' "$IMAGE")
if [ -n "$OLD_IMAGE_ID" ] && [ "$OLD_IMAGE_ID" != "$NEW_IMAGE_ID" ]; then
  docker rmi "$OLD_IMAGE_ID" >/dev/null 2>&1 || true     # our previous build, now untagged
fi
phase_done "docker build (prebuilt stage)"

# ---- 6. end to end ------------------------------------------------------------------------------
log "gsr-sim"
"$SIM" --listen 127.0.0.1:0 --data-dir "$CI_TMP/sim" --admin-token "$ADMIN_TOKEN" \
       --long-poll-secs 5 >"$CI_TMP/sim.out" 2>"$CI_TMP/sim.err" </dev/null 3>&- 4>&- &
echo $! >"$CI_TMP/sim.pid"
timeout 30 sh -c "until grep -qs 'listening on' '$CI_TMP/sim.out'; do sleep 0.05; done" \
  || die "gsr-sim did not start"
SIM_URL=$(sed -n 's/.*listening on \(http[^ ]*\).*/\1/p' "$CI_TMP/sim.out" | head -n1)
echo "gsr-sim at $SIM_URL"

sim() {                 # sim METHOD PATH [JSON] — admin API call, prints the body
  local args=(-sS -X "$1" -H "PRIVATE-TOKEN: $ADMIN_TOKEN" -w '\n%{http_code}')
  [ $# -ge 3 ] && args+=(-H 'Content-Type: application/json' --data-binary "$3")
  local out code
  out=$(curl "${args[@]}" "$SIM_URL/-/sim/$2") || return 1
  code=${out##*$'\n'}
  echo "$code" >"$CI_TMP/sim.status"     # for callers in a $(…) subshell
  printf '%s' "${out%$'\n'*}"
  [ "${code:0:1}" = 2 ]
}

PROJECT=$(sim POST projects '{"path":"ci/container"}') || die "create project: $PROJECT"
PROJECT_ID=$(jq -r .id <<<"$PROJECT")
REPO=$CI_TMP/repo
mkdir -p "$REPO"
printf '# container test\n' >"$REPO/README.md"
printf '#!/usr/bin/env bash\necho "hello from $(uname -s) as $(id -un 2>/dev/null || id -u)"\n' >"$REPO/hello.sh"
chmod +x "$REPO/hello.sh"
git -C "$REPO" init -q -b main
git -C "$REPO" add -A
git -C "$REPO" -c user.name=ci -c user.email=ci@gsr.invalid commit -q -m "container test"
git -C "$REPO" -c credential.helper= push -q \
  "${SIM_URL/:\/\//://root:$ADMIN_TOKEN@}/ci/container.git" main:main
RUNNER=$(sim POST runners '{"run_untagged":true,"description":"container-test"}') || die "create runner: $RUNNER"
export RUNNER_TOKEN
RUNNER_TOKEN=$(jq -r .token <<<"$RUNNER")

# The container's port: GSR_CI_PORT, or the first free one from 18080.
PORT=${GSR_CI_PORT:-}
if [ -z "$PORT" ]; then
  for PORT in $(seq 18080 18180); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null || break
  done
fi
HOOK_URL=http://127.0.0.1:$PORT/

log "docker run $IMAGE (webhook on :$PORT)"
# RUNNER_TOKEN and GITLAB_SECRET go in by name, so their values are not in docker's argv.
export GITLAB_SECRET=$HOOK_SECRET
T_RUN=$(now_ms)
CID=$(docker run -d --network host \
        -e RUNNER_TOKEN -e GITLAB_SECRET \
        -e CI_SERVER_URL="$SIM_URL" -e PORT="$PORT" -e WEBHOOK_PATH=/ \
        -e WAIT_TIMEOUT=3 -e MAX_BUILDS=1 -e LOG_FORMAT=json \
        -e WEBHOOK_LISTEN=127.0.0.1 \
        "$IMAGE")
T_CREATED=$(now_ms)
until curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" 2>/dev/null; do
  if [ "$(docker inspect -f '{{.State.Running}}' "$CID")" != true ]; then die "the container exited"; fi
  if (( $(now_ms) - T_RUN > 30000 )); then die "/healthz does not answer after 30 s"; fi
  sleep 0.005
done
T_HEALTHY=$(now_ms)
RUN_TO_HEALTHZ=$(( T_HEALTHY - T_RUN ))
echo "docker run → /healthz 200: ${RUN_TO_HEALTHZ} ms (docker run -d itself: $(( T_CREATED - T_RUN )) ms)"
docker logs "$CID" 2>&1 | grep -m1 'listening on' || true

proc_kb() {            # proc_kb FIELD: a /proc/PID/status field (kB) of gsr (PID 1 inside)
  awk -v f="$1:" '$1 == f { print $2 }' "/proc/$(docker inspect -f '{{.State.Pid}}' "$CID")/status"
}
cgroup_mem() { docker stats --no-stream --format '{{.MemUsage}}' "$CID" | cut -d/ -f1 | tr -d ' '; }
sleep 1
RSS_START=$(proc_kb VmRSS); ANON_START=$(proc_kb RssAnon); MEM_START=$(cgroup_mem)

log "webhook checks"
post_hook() {           # post_hook SECRET BODY → HTTP status
  local uuid
  uuid=$(cat /proc/sys/kernel/random/uuid)
  curl -sS -o "$CI_TMP/hook-response" -w '%{http_code}' -X POST "$HOOK_URL" \
       -H 'Content-Type: application/json' -H 'User-Agent: GitLab/18.0.0' \
       -H 'X-Gitlab-Event: Job Hook' -H "X-Gitlab-Token: $1" \
       -H "X-Gitlab-Event-UUID: $uuid" -H "X-Gitlab-Webhook-UUID: $uuid" \
       -H "Idempotency-Key: $uuid" -H "X-Gitlab-Instance: $SIM_URL" \
       --data-binary "$2"
}
FIXTURE=$ROOT/crates/gsr-gitlab/tests/fixtures/job_hook.json
code=$(post_hook wrong-secret "$(jq -c '.build_status = "pending"' "$FIXTURE")")
[ "$code" = 401 ] || die "a wrong X-Gitlab-Token got $code, expected 401"
echo "wrong secret: 401"

# The simulator delivers Job Hooks itself when it has the hooks API; otherwise we do.
SIM_HOOKS=""
if HOOK=$(sim POST "projects/$PROJECT_ID/hooks" "$(jq -nc --arg u "$HOOK_URL" --arg t "$HOOK_SECRET" '{url: $u, token: $t}')"); then
  SIM_HOOKS=1
  echo "gsr-sim delivers the Job Hook (hook $(jq -c . <<<"$HOOK" 2>/dev/null || echo "$HOOK"))"
elif SIM_STATUS=$(cat "$CI_TMP/sim.status"); [ "$SIM_STATUS" = 404 ] || [ "$SIM_STATUS" = 405 ]; then
  echo "gsr-sim has no hooks API ($SIM_STATUS); this script posts the Job Hook"
else
  die "registering the sim hook failed with $SIM_STATUS: $HOOK"
fi

JOB_SPEC=$(jq -nc --argjson p "$PROJECT_ID" '{project_id: $p, name: "container-test", script: [
  "./hello.sh", "bash --version | head -n1", "git --version", "git log --oneline -1",
  "test \"$(id -u)\" != 0 && echo \"not root: uid $(id -u)\"",
  "if env | grep -q RUNNER_TOKEN; then echo \"RUNNER_TOKEN leaked into the job\"; exit 1; fi",
  "echo \"no RUNNER_TOKEN in the job environment\"",
  "if tr \"\\\\0\" \"\\\\n\" </proc/1/environ 2>/dev/null | grep -q ^RUNNER_TOKEN=; then echo \"token-probe: RUNNER_TOKEN $(echo EXP)OSED in /proc/1/environ\"; else echo \"token-probe: RUNNER_TOKEN not in /proc/1/environ\"; fi"]}')
JOB=$(sim POST jobs "$JOB_SPEC") || die "create job: $JOB"
JOB_ID=$(jq -r .id <<<"$JOB")
T_ENQUEUED=$(now_ms)
if [ -z "$SIM_HOOKS" ]; then
  SHA=$(git -C "$REPO" rev-parse HEAD)
  BODY=$(jq -c --argjson id "$JOB_ID" --argjson p "$PROJECT_ID" --arg sha "$SHA" '
    .build_id = $id | .build_status = "pending" | .build_name = "container-test"
    | .project_id = $p | .project_name = "ci/container" | .ref = "main" | .tag = false
    | .sha = $sha | .before_sha = $sha | .runner = null | .build_started_at = null
    | .build_finished_at = null | .source_pipeline = null' "$FIXTURE")
  code=$(post_hook "$HOOK_SECRET" "$BODY")
  case "$code" in 2??) echo "Job Hook for job $JOB_ID: $code $(head -c 200 "$CI_TMP/hook-response")";;
                  *) die "Job Hook got $code: $(head -c 500 "$CI_TMP/hook-response")";; esac
fi

log "waiting for job $JOB_ID"
STATUS=""
for _ in $(seq 1200); do
  STATUS=$(sim GET "jobs/$JOB_ID" | jq -r .status)
  case "$STATUS" in success|failed|canceled) break;; esac
  sleep 0.1
done
T_DONE=$(now_ms)
echo "---- trace of job $JOB_ID as the simulator stored it ----"
sim GET "jobs/$JOB_ID/trace"; echo
echo "---- end of trace ----"
[ "$STATUS" = success ] || die "job $JOB_ID is '$STATUS', expected success"
if [ -n "$SIM_HOOKS" ]; then
  echo "---- Job Hook deliveries (gsr-sim's log) ----"
  sim GET hooks/deliveries | jq -r '.[] | "job \(.job_id) \(.build_status): HTTP \(.status // "-") in \(.duration_ms) ms\(if .error then " (" + .error + ")" else "" end)"'
fi
# The job runs as the same user as gsr (PID 1). Report whether it can read the runner
# token from gsr's environment; that fails the run (GSR_CI_TOKEN_PROBE_FATAL=0 only warns).
if sim GET "jobs/$JOB_ID/trace" | grep -q 'token-probe: RUNNER_TOKEN EXPOSED'; then     # the output, not the echoed command
  TOKEN_PROBE="EXPOSED via /proc/1/environ"
  echo "WARNING: a job can read RUNNER_TOKEN from /proc/1/environ (gsr is dumpable; see PR_SET_DUMPABLE)" >&2
  [ "${GSR_CI_TOKEN_PROBE_FATAL:-1}" = 0 ] || die "the runner token is readable by the job"
else
  TOKEN_PROBE="not readable"
fi
JOB_MS=$(( T_DONE - T_ENQUEUED ))
echo "job $JOB_ID: success, ${JOB_MS} ms from enqueue (polled every 100 ms)"

# Idle again: the reconciling long-poll stops after WAIT_TIMEOUT (3 s); the server stays.
sleep 5
[ "$(docker inspect -f '{{.State.Running}}' "$CID")" = true ] || die "the container exited after the job"
curl -fsS -o /dev/null "http://127.0.0.1:$PORT/healthz" || die "/healthz stopped answering after the job"
RSS_IDLE=$(proc_kb VmRSS); ANON_IDLE=$(proc_kb RssAnon); MEM_IDLE=$(cgroup_mem)

log "docker stop (SIGTERM)"
T_STOP=$(now_ms)
docker stop -t 10 "$CID" >/dev/null
STOP_MS=$(( $(now_ms) - T_STOP ))
EXIT_CODE=$(docker inspect -f '{{.State.ExitCode}}' "$CID")
echo "stopped in ${STOP_MS} ms, exit code $EXIT_CODE"
phase_done "end to end (sim, container, job)"

IMAGE_SIZE=$(docker image inspect -f '{{.Size}}' "$IMAGE")
BASE_SIZE=$(docker image inspect -f '{{.Size}}' "$BASE_IMAGE")
BIN_SIZE=$(stat -c %s "$GSR")
mb() { awk -v b="$1" 'BEGIN { printf "%.1f MB", b / 1e6 }'; }
kb_mb() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

echo
echo "== results"
printf '| %-62s | %-14s |\n' "what" "value" "$(printf '%.0s-' {1..62})" "$(printf '%.0s-' {1..14})"
row() { printf '| %-62s | %-14s |\n' "$1" "$2"; }
row "docker run -d -> /healthz 200" "${RUN_TO_HEALTHZ} ms"
row "job enqueue -> success (Job Hook, git clone, script)" "${JOB_MS} ms"
row "idle RSS of gsr, before the first job (VmRSS)" "$(kb_mb "$RSS_START")"
row "idle RSS of gsr, after one job (VmRSS)" "$(kb_mb "$RSS_IDLE")"
row "  of which anonymous (RssAnon), before / after" "$(kb_mb "$ANON_START") / $(kb_mb "$ANON_IDLE")"
row "container memory, docker stats, no page cache (before / after)" "$MEM_START / $MEM_IDLE"
row "image $IMAGE size" "$(mb "$IMAGE_SIZE")"
row "  of which $BASE_IMAGE ($BASE_ORIGIN)" "$(mb "$BASE_SIZE")"
row "  of which the gsr binary" "$(mb "$BIN_SIZE")"
row "docker stop (SIGTERM) -> exited, exit code" "${STOP_MS} ms, $EXIT_CODE"
row "runner token seen from the job (/proc/1/environ)" "$TOKEN_PROBE"
echo
echo "== phases"
for p in "${PHASES[@]}"; do row "${p%%|*}" "$(awk -v m="${p##*|}" 'BEGIN { printf "%.1f s", m / 1000 }')"; done
row "total" "$(awk -v m="$(( $(now_ms) - T_START ))" 'BEGIN { printf "%.1f s", m / 1000 }')"
echo
echo "container-test: OK"
