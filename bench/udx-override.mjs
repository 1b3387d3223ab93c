// Bench-only (issue 18): when NATD_BENCH_UDX_NATIVE names a udx-native addon built from source
// (vendor/udx-native-bench/build.sh), every process started with `--import` of this file loads
// it in place of node_modules/udx-native's linux-x64 prebuild; the package's JS stays the same.
// Nothing in src/ imports this; product processes never get it.
import module from 'node:module'
import { pathToFileURL } from 'node:url'

const addon = process.env.NATD_BENCH_UDX_NATIVE
const PREBUILD = '/udx-native/prebuilds/linux-x64/udx-native.node'
if (addon) {
  const url = pathToFileURL(addon).href
  module.registerHooks({
    resolve(specifier, context, nextResolve) {
      const r = nextResolve(specifier, context)
      return r.url.endsWith(PREBUILD) ? { ...r, url } : r
    },
  })
}
