#!/usr/bin/env bash
# The system packages the whole test suite uses: a PostgreSQL server (scale-out tests),
# Debian's Alertmanager (end-to-end test), Chromium (deliveries page in a real browser), with
# a small CJK font so the deliveries page's screenshots show Chinese subjects, not boxes, and
# Dovecot (the reply mailbox: IMAP, and LMTP to deliver replies into it).
# Installs what is missing when run as root with apt-get; otherwise says what is missing,
# and those tests skip (or fail, under CI=true).
set -uo pipefail
want=(postgresql prometheus-alertmanager chromium fonts-wqy-microhei dovecot-imapd dovecot-lmtpd)
missing=()
for pkg in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $EUID -ne 0 ]] || ! command -v apt-get >/dev/null; then
    echo "system-deps: missing ${missing[*]} (as root: apt-get install ${missing[*]}); their tests will skip" >&2
    exit 0
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# No system cluster and no system Alertmanager service: the tests start their own.
mkdir -p /etc/postgresql-common/createcluster.d
echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/50-bridge.conf
# No system services started by the install (Dovecot would listen on 0.0.0.0:143/993).
guard=""
if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    guard=/usr/sbin/policy-rc.d
fi
apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
rc=$?
[[ -n "$guard" ]] && rm -f "$guard"
exit $rc
