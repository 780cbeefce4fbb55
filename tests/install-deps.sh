#!/usr/bin/env bash
# Installs the Debian packages the lab and the tests use (run as root). Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
need=()
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh >/dev/null 2>&1 || need+=(openssh-client)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || need+=(etcd-client)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v sudo >/dev/null 2>&1 || need+=(sudo)
# The lab's load balancers (AKS Engine's public and internal ones) are Debian's HAProxy; masters
# redirect the internal one's backend port 4443 to 443 with iptables, as AKS Engine's do.
[ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
# promtool, Prometheus' own checker of the text format that status --fleet --prometheus writes.
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
# Debian's kubernetes-client ships kubectl; some images already carry a kubectl of their own,
# which the package would conflict with.
command -v kubectl >/dev/null 2>&1 || need+=(kubernetes-client)
# The review document's browser test (tests/review_browser.rs) opens the HTML in headless Chromium.
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  echo "install-deps: installing ${need[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
