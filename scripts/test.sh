#!/usr/bin/env bash
# npm test: type-check, lint, unit tests, then the NAT-lab tests (root only; they build
# network namespaces). Ends with one summary line: "tests: N passed, N failed, N skipped".
set -uo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
status=0

echo "==> type-check"; npx tsc -p tsconfig.json || status=1
echo "==> lint"; npx eslint . || status=1
# Always build: the daemon, API-doc and lab tests run dist/, which must be this code.
echo "==> build"; npm run --silent build || status=1

echo "==> unit tests"
npx vitest run test/unit --reporter=default --reporter=json --outputFile.json="$out/unit.json" || status=1

# The namespaces this run's labs make are written down (test/lab/lab.ts), so the check at
# the end counts ours, not those of another lab running on the same machine.
export NATD_LAB_LEDGER="$out/lab-namespaces"
: > "$NATD_LAB_LEDGER"
if [ "$(id -u)" = 0 ]; then
  echo "==> NAT-lab tests"
  npx vitest run test/lab --no-file-parallelism --reporter=default --reporter=json --outputFile.json="$out/lab.json" || status=1
else
  echo "==> NAT-lab tests skipped: they need root (sudo npm test)"
fi

# The abuse suite (issue "Abuse resistance"): attacks on loopback and, as root, in the
# NAT lab, with assertions on the bounds; its figures go to a results file and a table.
echo "==> abuse suite"
export NATD_ABUSE_OUT="$PWD/bench/results/abuse-latest.jsonl"
: > "$NATD_ABUSE_OUT"
npx vitest run test/abuse --no-file-parallelism --passWithNoTests --reporter=default --reporter=json --outputFile.json="$out/abuse.json" || status=1
node --disable-warning=ExperimentalWarning scripts/abuse-report.ts "$NATD_ABUSE_OUT"

if [ "$(id -u)" = 0 ]; then
  leftover=$(ip netns list | awk '{print $1}' | grep -cxF -f "$NATD_LAB_LEDGER" || true)
  if [ "${leftover:-0}" != 0 ]; then echo "NAT lab left $leftover namespaces behind" >&2; status=1; fi
fi

node -e '
  const fs = require("node:fs"); let p = 0, f = 0, s = 0; const failures = [];
  for (const file of process.argv.slice(1)) {
    if (!fs.existsSync(file)) continue;
    const r = JSON.parse(fs.readFileSync(file, "utf8"));
    p += r.numPassedTests; s += r.numPendingTests + (r.numTodoTests || 0);
    // A file that fails to load fails no test of its own: count it once.
    f += r.numFailedTests || r.numFailedTestSuites;
    // Name every failure again at the end: CI keeps only the tail of the output.
    for (const t of r.testResults || []) {
      const rel = t.name.replace(process.cwd() + "/", "");
      if (t.status === "failed" && !(t.assertionResults || []).some((a) => a.status === "failed"))
        failures.push(`FAILED ${rel}: ${(t.message || "").split("\n")[0]}`);
      for (const a of t.assertionResults || [])
        if (a.status === "failed")
          failures.push(`FAILED ${rel} > ${a.fullName}: ${String((a.failureMessages || [""])[0]).split("\n")[0].slice(0, 300)}`);
    }
  }
  for (const line of failures) console.log(line);
  console.log(`tests: ${p} passed, ${f} failed, ${s} skipped`);
' "$out/unit.json" "$out/lab.json" "$out/abuse.json"
exit $status
