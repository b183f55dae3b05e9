#!/usr/bin/env bash
# Builds the Debian package of corebus with cargo-deb:
#
#   scripts/deb.sh                  # release build -> target/debian/corebus_<version>_<arch>.deb
#   PROFILE=checked scripts/deb.sh  # the test suite's build (CI checks the package with it)
#
# The package holds the binary (/usr/bin/corebus), the systemd unit (the one
# in deploy/, run as the `corebus` system user its postinst creates), the
# default configuration (/etc/corebus/corebus.toml, a conffile), the manual
# pages and the bash, zsh and fish completions, all generated from the clap
# definitions. Installs cargo-deb when it is missing (crates.io).
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-release}
target=${CARGO_TARGET_DIR:-target}
command -v cargo-deb >/dev/null || cargo install --locked cargo-deb

cargo build --profile "$profile" -p corebus
bin="$target/$profile/corebus"

# Generated assets, where broker/Cargo.toml's [package.metadata.deb] finds them (ignored by git).
assets=deploy/debian/build
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/systemd"
"$bin" man --out-dir "$assets/man" >/dev/null
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/corebus.bash"
"$bin" completions zsh >"$assets/completions/_corebus"
"$bin" completions fish >"$assets/completions/corebus.fish"
# deploy/corebus.service, for a package: the binary in /usr/bin and the
# system user the postinst creates instead of a dynamic one.
sed -e 's|^ExecStart=/usr/local/bin/corebus |ExecStart=/usr/bin/corebus |' \
    -e 's|^DynamicUser=yes$|User=corebus\nGroup=corebus|' \
    deploy/corebus.service >"$assets/systemd/corebus.service"
grep -q '^User=corebus$' "$assets/systemd/corebus.service"
grep -q '^ExecStart=/usr/bin/corebus ' "$assets/systemd/corebus.service"

cargo deb -p corebus --no-build --profile "$profile" --output target/debian/
