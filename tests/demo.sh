#!/usr/bin/env bash
# The main job on a fresh machine (README "Set-up"): installs what is needed, builds certrotate
# and the lab, brings up a local lab cluster (3 masters, 2 agents, certificates expiring in 20
# days), and runs certrotate against it: status, plan with a saved plan, show and graph of that
# plan, apply of exactly that plan, plan again (no changes), and the evidence of the window. The lab is taken down at the
# end, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
cargo build --locked --workspace --bins
bin=target/debug/certrotate
labdir=$(mktemp -d /tmp/certrotate-demo.XXXXXX)
trap 'target/debug/lab down --dir "$labdir" >/dev/null 2>&1 || true; rm -rf "$labdir"' EXIT

echo "== offline: validate the bundled example cluster definition"
"$bin" validate --api-model tests/fixtures/azurestack-3m2a/apimodel.json --profile rotate-all | tail -3

echo "== lab up --masters 3 --agents 2 --expires-in 20d"
target/debug/lab up --masters 3 --agents 2 --expires-in 20d --dir "$labdir"
# shellcheck disable=SC1091
source "$labdir/lab.env"
cluster=(--api-model "$LAB_API_MODEL" --ssh-host "$LAB_SSH_HOST" --linux-ssh-private-key "$LAB_SSH_KEY" --known-hosts "$LAB_KNOWN_HOSTS")

echo "== certrotate status"
"$bin" status "${cluster[@]}"

echo "== certrotate plan --profile renew-expiring --out $labdir/renew.plan.yaml"
code=0
"$bin" plan "${cluster[@]}" --profile renew-expiring --out "$labdir/renew.plan.yaml" --detailed-exitcode || code=$?
[ "$code" = 2 ] || { echo "expected changes (exit 2), got $code"; exit 1; }

echo "== certrotate show $labdir/renew.plan.yaml (summary)"
"$bin" show "$labdir/renew.plan.yaml" | tail -1
echo "== certrotate graph (first lines of DOT)"
"$bin" graph "$labdir/renew.plan.yaml" | sed -n 1,5p
echo "== certrotate apply $labdir/renew.plan.yaml (masters one at a time; the API stays up)"
"$bin" apply "$labdir/renew.plan.yaml" "${cluster[@]}" --apiserver "$LAB_APISERVER" \
    --resource-group "$LAB_RESOURCE_GROUP" --subscription-id "$LAB_SUBSCRIPTION_ID" \
    --tenant-id "$LAB_TENANT_ID" --ca-bundle "$LAB_ARM_CA_BUNDLE"

echo "== certrotate plan again: nothing left to do"
"$bin" plan "${cluster[@]}" --profile renew-expiring --detailed-exitcode | tail -1

echo "== certrotate status after the rotation"
"$bin" status "${cluster[@]}" | sed -n 1,8p

echo "== certrotate evidence $labdir/renew.plan.yaml --out $labdir/evidence.tar.gz"
"$bin" evidence "$labdir/renew.plan.yaml" "${cluster[@]}" --out "$labdir/evidence.tar.gz"
tar -tzf "$labdir/evidence.tar.gz" | sed -n 1,20p
