#!/usr/bin/env bash
# CI check of the Prometheus alert rules in deploy/prometheus/:
#   1. `promtool check rules alerts.yml` (syntax, PromQL, templates);
#   2. every alert has a severity of critical|warning and a `runbook` annotation naming only
#      sections that RUNBOOK.md has (or will have);
#   3. `promtool test rules alerts_test.yml`: the alerts fire (and stay quiet) on synthetic series.
# Installs Debian's prometheus package (for promtool) when promtool is missing.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")"
STARTED_AT=$(date +%s)

if ! command -v promtool >/dev/null; then
  [ "$(id -u)" -eq 0 ] || { echo "promtool is missing: apt-get install prometheus" >&2; exit 2; }
  echo "# installing prometheus (promtool) from Debian" >&2
  # The package's own server is not started where a policy-rc.d forbids it (containers);
  # nothing here uses it either way.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
echo "# $(promtool --version 2>&1 | head -1)"

FAILED=0
step() { # description command…
  local desc=$1 out
  shift
  if out=$("$@" 2>&1); then
    echo "ok - $desc"
  else
    echo "not ok - $desc"
    printf '%s\n' "$out" | sed 's/^/#   /'
    FAILED=$((FAILED + 1))
  fi
}

# The RUNBOOK.md sections an alert may send the operator to.
SECTIONS='Dead letters|Token renewal and re-auth|Rate limits and throttling|Redis failover|Postgres failover|Webhooks disabled by Meta|Key rotation|Redis memory|Backups'

# Reads alerts.yml as text: one block per `- alert:`; prints a line for each block lacking a
# severity label or a runbook annotation of the form "RUNBOOK.md § Section[ / Section…]".
lint_alerts() {
  awk -v sections="^($SECTIONS)\$" '
    function finish() {
      if (name == "") return
      if (!severity) { print name ": no severity: critical|warning label"; bad = 1 }
      if (!runbook) { print name ": no runbook annotation naming a RUNBOOK.md section"; bad = 1 }
    }
    /^ *- alert: / { finish(); name = $3; severity = 0; runbook = 0; alerts++; next }
    /^ *severity: (critical|warning) *$/ { severity = 1 }
    /^ *runbook: / {
      line = $0
      sub(/^ *runbook: RUNBOOK\.md § /, "", line)
      n = split(line, parts, / \/ /)
      runbook = (line != $0)
      for (i = 1; i <= n; i++) if (parts[i] !~ sections) {
        print name ": unknown RUNBOOK.md section \"" parts[i] "\""; runbook = 0
      }
    }
    END {
      finish()
      if (alerts == 0) { print "no alerts found"; bad = 1 }
      exit bad
    }' alerts.yml
}

step "promtool check rules alerts.yml" promtool check rules alerts.yml
step "every alert has a severity and a runbook section" lint_alerts
step "promtool test rules alerts_test.yml" promtool test rules alerts_test.yml

echo "# took $(($(date +%s) - STARTED_AT)) s"
[ "$FAILED" -eq 0 ]
