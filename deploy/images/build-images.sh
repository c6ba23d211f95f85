#!/usr/bin/env bash
# Build the container images the compose cluster needs without any container registry: every image starts from a
# Debian root filesystem made by debootstrap (from the Debian mirror this machine's apt uses) and `docker import`.
#
#   base        monolith-serving/base-python:3.11  python3.11 + venv + pip, a drop-in BASE_IMAGE for deploy/Dockerfile
#   zookeeper   monolith-serving/zookeeper:3.8     Debian's ZooKeeper jars + headless JRE, standalone server
#   prometheus  monolith-serving/prometheus:2.42   Debian's prometheus
#   app         monolith-serving:test              deploy/Dockerfile built on the base image (always rebuilt;
#                                                  docker's layer cache makes an unchanged tree cheap)
#   all         all of the above
#
# Imported images (base, zookeeper, prometheus) are cached: one that already exists is not built again (FORCE=1
# rebuilds it). app is always rebuilt, FORCE or not.
# Environment: DEBIAN_MIRROR (default: the mirror of this machine's bookworm apt source), SUITE (bookworm),
# IMAGE_CACHE (build/images: downloaded .debs), and the image names below.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
here="$repo_root/deploy/images"
SUITE="${SUITE:-bookworm}"
IMAGE_CACHE="${IMAGE_CACHE:-$repo_root/build/images}"
BASE_PYTHON_IMAGE="${BASE_PYTHON_IMAGE:-monolith-serving/base-python:3.11}"
ZOOKEEPER_IMAGE="${ZOOKEEPER_IMAGE:-monolith-serving/zookeeper:3.8}"
PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-monolith-serving/prometheus:2.42}"
MONOLITH_IMAGE="${MONOLITH_IMAGE:-monolith-serving:test}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

log() { printf '[build-images] %s\n' "$*" >&2; }

# The mirror comes from apt's own configuration so the script follows whatever mirror (or proxy-mirror) this
# machine is set up for instead of naming a host itself.
detect_mirror() {
  if [ -n "${DEBIAN_MIRROR:-}" ]; then
    echo "$DEBIAN_MIRROR"
    return
  fi
  local f uri
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    uri="$(awk -v suite="$SUITE" 'BEGIN { RS = ""; FS = "\n" }
      {
        uri = ""; ok = 0; enabled = 1
        for (i = 1; i <= NF; i++) {
          if ($i ~ /^URIs:/) { split($i, a, /[ \t]+/); uri = a[2] }
          if ($i ~ /^Suites:/) { n = split($i, s, /[ \t]+/); for (j = 2; j <= n; j++) if (s[j] == suite) ok = 1 }
          if ($i ~ /^Enabled:[ \t]*no/) enabled = 0
        }
        if (ok && enabled && uri != "") { print uri; exit }
      }' "$f")"
    if [ -n "$uri" ]; then
      echo "$uri"
      return
    fi
  done
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -f "$f" ] || continue
    uri="$(sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }')"
    if [ -n "$uri" ]; then
      echo "$uri"
      return
    fi
  done
  log "no apt source for suite $SUITE found; set DEBIAN_MIRROR"
  return 1
}

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }

ensure_debootstrap() {
  if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >&2
  fi
}

# bootstrap <rootfs> <comma-separated extra packages>: minimal Debian plus the packages, .debs cached.
bootstrap() {
  ensure_debootstrap
  mkdir -p "$IMAGE_CACHE/debs"
  $SUDO rm -rf "$1"
  log "debootstrap $SUITE into $1 with $2"
  $SUDO debootstrap --variant=minbase --include="$2" --cache-dir="$IMAGE_CACHE/debs" \
    "$SUITE" "$1" "$(detect_mirror)" >"$1.log" 2>&1 || { tail -n 30 "$1.log" >&2; return 1; }
}

# Drop what a runtime image never reads: package lists, docs, man pages, caches.
slim_rootfs() {
  $SUDO chroot "$1" apt-get clean
  $SUDO rm -rf "$1"/var/lib/apt/lists/* "$1"/usr/share/doc/* "$1"/usr/share/man/* "$1"/usr/share/info/* \
    "$1"/var/cache/debconf/*-old "$1"/var/log/*.log
}

# import_rootfs <rootfs> <tag> [docker import --change ...]: numeric owners keep the rootfs's uids.
import_rootfs() {
  local rootfs="$1" tag="$2"
  shift 2
  $SUDO tar --numeric-owner -C "$rootfs" -c . | docker import "$@" - "$tag" >/dev/null
  $SUDO rm -rf "$rootfs" "$rootfs.log"
}

build_base() {
  local rootfs="$IMAGE_CACHE/rootfs-base-python"
  bootstrap "$rootfs" python3.11,python3-venv,python3-pip,ca-certificates
  slim_rootfs "$rootfs"
  import_rootfs "$rootfs" "$BASE_PYTHON_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]'
}

build_zookeeper() {
  local rootfs="$IMAGE_CACHE/rootfs-zookeeper"
  # libzookeeper-java is the server half of Debian's zookeeper package without its desktop JRE dependency.
  bootstrap "$rootfs" libzookeeper-java,default-jre-headless
  $SUDO install -m 0755 "$here/zookeeper/entrypoint.sh" "$rootfs/usr/local/bin/zookeeper-entrypoint"
  $SUDO chroot "$rootfs" groupadd --system --gid 1000 zookeeper
  $SUDO chroot "$rootfs" useradd --system --uid 1000 --gid 1000 --home-dir /data --no-create-home zookeeper
  $SUDO mkdir -p "$rootfs/data"
  $SUDO chroot "$rootfs" chown zookeeper:zookeeper /data
  slim_rootfs "$rootfs"
  import_rootfs "$rootfs" "$ZOOKEEPER_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'USER 1000:1000' \
    --change 'EXPOSE 2181' \
    --change 'ENTRYPOINT ["/usr/local/bin/zookeeper-entrypoint"]'
}

build_prometheus() {
  local rootfs="$IMAGE_CACHE/rootfs-prometheus"
  # wget serves the compose healthcheck, as busybox wget does in the official image.
  bootstrap "$rootfs" prometheus,wget,ca-certificates
  $SUDO mkdir -p "$rootfs/prometheus"
  $SUDO chown 65534:65534 "$rootfs/prometheus"
  slim_rootfs "$rootfs"
  import_rootfs "$rootfs" "$PROMETHEUS_IMAGE" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'USER 65534:65534' \
    --change 'WORKDIR /prometheus' \
    --change 'EXPOSE 9090' \
    --change 'ENTRYPOINT ["/usr/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'
}

# Wheels of every runtime dependency (plus the build backend) downloaded by the host's pip, which is set up for
# this machine's network; the Docker build then installs from them without reaching an index itself.
prepare_wheelhouse() {
  local py="${PYTHON:-$repo_root/.venv/bin/python}"
  [ -x "$py" ] || py=python3
  mkdir -p "$repo_root/build/wheelhouse"
  "$py" -c "import tomllib; print('\n'.join(tomllib.load(open('$repo_root/pyproject.toml', 'rb'))['project']['dependencies']))" \
    >"$repo_root/build/wheelhouse-requirements.txt"
  # Same requirements as the last complete download: nothing to fetch.
  if cmp -s "$repo_root/build/wheelhouse-requirements.txt" "$repo_root/build/wheelhouse/.requirements"; then
    return
  fi
  log "downloading dependency wheels into build/wheelhouse"
  "$py" -m pip download -q --only-binary=:all: --dest "$repo_root/build/wheelhouse" \
    -r "$repo_root/build/wheelhouse-requirements.txt" 'setuptools>=77' wheel
  cp "$repo_root/build/wheelhouse-requirements.txt" "$repo_root/build/wheelhouse/.requirements"
}

build_app() {
  build_cached base "$BASE_PYTHON_IMAGE"
  [ "${SKIP_WHEELHOUSE:-0}" = 1 ] || prepare_wheelhouse
  log "docker build $MONOLITH_IMAGE on $BASE_PYTHON_IMAGE"
  docker build -q -f "$repo_root/deploy/Dockerfile" --build-arg BASE_IMAGE="$BASE_PYTHON_IMAGE" \
    -t "$MONOLITH_IMAGE" "$repo_root" >/dev/null
}

# build_cached <name> <tag>: build unless the tag exists; report the time taken.
build_cached() {
  local name="$1" tag="$2" start=$SECONDS
  if [ "${FORCE:-0}" != 1 ] && image_exists "$tag"; then
    log "$tag exists, skipping"
    return
  fi
  "build_$name"
  log "$tag built in $((SECONDS - start)) s"
}

main() {
  [ $# -gt 0 ] || set -- all
  local target start
  for target in "$@"; do
    case "$target" in
      base) build_cached base "$BASE_PYTHON_IMAGE" ;;
      zookeeper) build_cached zookeeper "$ZOOKEEPER_IMAGE" ;;
      prometheus) build_cached prometheus "$PROMETHEUS_IMAGE" ;;
      app) start=$SECONDS; build_app; log "$MONOLITH_IMAGE built in $((SECONDS - start)) s" ;;
      all) main base zookeeper prometheus app ;;
      mirror) detect_mirror ;;
      *) log "unknown target $target (base|zookeeper|prometheus|app|all|mirror)"; return 2 ;;
    esac
  done
}

main "$@"
