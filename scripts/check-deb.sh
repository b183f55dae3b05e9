#!/usr/bin/env bash
# Builds the Debian package (scripts/deb.sh) and checks it: its contents,
# control fields and maintainer scripts (dpkg-deb -c, -I), the unit it
# ships; then, as root, installs it on this machine with dpkg -i, runs the
# installed `corebus doctor`, starts the broker as the package's user with
# the packaged configuration, and purges the package again.
#
#   PROFILE=checked scripts/check-deb.sh   # CI: reuses the test suite's build
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "check-deb: $*" >&2; exit 1; }
has() { grep -qxF -- "$1" <<<"$2" || fail "expected ${3:-line} '$1'"; }

bash scripts/deb.sh
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
deb="target/debian/corebus_${version}-1_$(dpkg --print-architecture).deb"
[ -f "$deb" ] || fail "no package at $deb"

contents=$(dpkg-deb -c "$deb" | awk '{print $1, $6}')
for entry in \
    "-rwxr-xr-x ./usr/bin/corebus" \
    "-rw------- ./etc/corebus/corebus.toml" \
    "-rw-r--r-- ./usr/lib/systemd/system/corebus.service" \
    "-rw-r--r-- ./usr/share/man/man1/corebus.1.gz" \
    "-rw-r--r-- ./usr/share/man/man1/corebus-serve.1.gz" \
    "-rw-r--r-- ./usr/share/bash-completion/completions/corebus" \
    "-rw-r--r-- ./usr/share/zsh/vendor-completions/_corebus" \
    "-rw-r--r-- ./usr/share/fish/vendor_completions.d/corebus.fish" \
    "-rw-r--r-- ./usr/share/doc/corebus/docs/operations.md"; do
    has "$entry" "$contents" "entry"
done

info=$(dpkg-deb -I "$deb")
has " Package: corebus" "$info" "control field"
grep -q "^ Depends: .*libc6" <<<"$info" || fail "Depends names libc6"
has "/etc/corebus/corebus.toml" "$(dpkg-deb -I "$deb" conffiles)" "conffile"
postinst=$(dpkg-deb -I "$deb" postinst)
grep -q "useradd --system" <<<"$postinst" || fail "the postinst creates the corebus user"
grep -q "deb-systemd-helper enable corebus.service" <<<"$postinst" ||
    fail "the postinst enables the unit"
grep -q "rm -rf /var/lib/corebus" <<<"$(dpkg-deb -I "$deb" postrm)" ||
    fail "the postrm removes the state directory on purge"
unit=$(dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/corebus.service)
for line in "Type=notify" "User=corebus" "Group=corebus" \
    "ExecStart=/usr/bin/corebus serve --config /etc/corebus/corebus.toml" \
    'ExecReload=/bin/kill -HUP $MAINPID' "StateDirectory=corebus"; do
    has "$line" "$unit" "unit line"
done
grep -q "^DynamicUser" <<<"$unit" && fail "the package's unit runs as the corebus user, not a dynamic one"
echo "check-deb: contents, control fields, maintainer scripts and unit are as expected"

if [ "$(id -u)" != 0 ]; then
    echo "check-deb: not root: the installation is not checked" >&2
    exit 0
fi
if dpkg -s corebus >/dev/null 2>&1; then
    fail "a corebus package is installed already; this check installs and purges its own"
fi
cleanup() { dpkg --purge corebus >/dev/null 2>&1 || true; [ -n "${broker:-}" ] && kill "$broker" 2>/dev/null || true; }
trap cleanup EXIT
dpkg -i "$deb"
id corebus >/dev/null || fail "no corebus user after the installation"
[ "$(stat -c '%U %a' /var/lib/corebus)" = "corebus 700" ] || fail "/var/lib/corebus is not corebus's, mode 700"
[ "$(stat -c '%U %a' /etc/corebus/corebus.toml)" = "corebus 600" ] || fail "the configuration is not corebus's, mode 600"
/usr/bin/corebus doctor
/usr/bin/corebus config check /etc/corebus/corebus.toml
# The service's command, as its user, with its configuration (on port 0).
out=$(mktemp)
# setpriv execs it (no process in between to take the signal); systemd
# would pass the unit's StateDirectory= as STATE_DIRECTORY.
STATE_DIRECTORY=/var/lib/corebus setpriv --reuid=corebus --regid=corebus --init-groups \
    /usr/bin/corebus serve --config /etc/corebus/corebus.toml --listen 127.0.0.1:0 >"$out" 2>&1 &
broker=$!
for _ in $(seq 100); do
    grep -q "corebus listening on" "$out" && break
    kill -0 "$broker" 2>/dev/null || { cat "$out" >&2; fail "the packaged broker did not start"; }
    sleep 0.1
done
grep -q "corebus listening on" "$out" || { cat "$out" >&2; fail "the packaged broker did not listen"; }
kill -TERM "$broker"
wait "$broker" || { cat "$out" >&2; fail "the packaged broker did not stop cleanly"; }
broker=
rm -f "$out"
dpkg --purge corebus
[ ! -e /var/lib/corebus ] || fail "the purge left /var/lib/corebus"
trap - EXIT
echo "check-deb: installed, doctor passed, served as the corebus user, purged"
