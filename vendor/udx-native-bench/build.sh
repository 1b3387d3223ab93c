#!/usr/bin/env bash
# Builds udx-native's N-API addon from source for the batching benchmark (issue 18), without
# cmake-bare/cmake-fetch (they download libuv and libudx at configure time; this machine reaches
# only npm and apt). Bench-only: the product keeps the npm prebuild.
#
#   build.sh OUT_DIR LIBUDX_SRC LIBJSTL_SRC COMPAT_NAPI_DIR [PATCH...]
#
# LIBUDX_SRC, LIBJSTL_SRC: source trees (git archive of holepunchto/libudx and libjstl);
# COMPAT_NAPI_DIR: the npm package bare-compat-napi (js.h/bare.h over N-API). binding.cc is
# the one shipped in node_modules/udx-native (1.21.3). Patches apply to a copy of LIBUDX_SRC
# (paths relative to its root, `patch -p1`). Needs clang++ (g++ 12 rejects libjstl's templates
# as ambiguous), gcc, Node's headers (uv.h, node_api.h: they come with Node).
# Writes OUT_DIR/udx-native.node; load it with bench/udx-override.mjs (NATD_BENCH_UDX_NATIVE). See README.md.
set -euo pipefail
out=$(realpath -m "$1"); udx=$2; jstl=$3; compat=$4; shift 4
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
nodeinc=$(dirname "$(dirname "$(command -v node)")")/include/node
rm -rf "$out"; mkdir -p "$out/obj"
cp -r "$udx" "$out/libudx"
for p in "$@"; do patch -d "$out/libudx" -p1 < "$p"; done
for f in cirbuf endian queue udx udx_rate win_filter win_filter_f64 udx_bbr io_posix; do
  gcc -O3 -std=gnu99 -fPIC -DNDEBUG -Wall -I"$out/libudx/include" -I"$nodeinc" -c "$out/libudx/src/$f.c" -o "$out/obj/$f.o"
done
clang++ -O3 -std=c++20 -fPIC -DNDEBUG -DNAPI_VERSION=9 -include "$here/compat-shim.h" \
  -I"$out/libudx/include" -I"$nodeinc" -I"$jstl/include" -I"$compat/include" \
  -c "$root/node_modules/udx-native/binding.cc" -o "$out/obj/binding.o"
# N-API and libuv symbols resolve against the node binary at load time.
clang++ -shared -fPIC -o "$out/udx-native.node" "$out"/obj/*.o -lm
echo "$out/udx-native.node"
