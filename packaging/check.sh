#!/usr/bin/env bash
# Packaging checks, run by scripts/test and runnable alone:
#   bash packaging/check.sh
# 1. The man page renders without a groff warning (if groff is installed).
# 2. `cargo deb` builds the Debian package (cargo-deb, pinned, is installed
#    with `cargo install` if missing); the package holds the binary, the
#    unit, the conffile and the man page, each the same as in the tree, and
#    the packaged binary runs and accepts the packaged configuration.
# 3. `systemd-analyze verify` (if installed) accepts the packaged unit with
#    no message at all, against the extracted package, alone and with the
#    token drop-in its comments document, and rejects a broken copy of it
#    (so the check is known to bite).
# 4. The Dockerfile's COPY sources exist, and those of its build stage make
#    a workspace that Cargo loads with the lock file as it is.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
name=consul-failover-dns
unit=packaging/systemd/$name.service
man=packaging/man/$name.8
config=config/$name.toml
dockerfile=packaging/Dockerfile

say() { echo "packaging/check.sh: $*"; }
fail() {
  echo "packaging/check.sh: FAIL: $*" >&2
  exit 1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- 1. man page -----------------------------------------------------------
if command -v groff >/dev/null 2>&1; then
  # groff exits 0 on warnings: any output is the failure.
  warnings=$(groff -man -ww -z "$man" 2>&1) || fail "groff failed on $man"
  [ -z "$warnings" ] || fail "$man renders with warnings:"$'\n'"$warnings"
  say "man page renders without warnings"
else
  say "groff not installed: man page rendering not checked"
fi

# --- 2. Debian package -----------------------------------------------------
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $CARGO_DEB_VERSION" ]; then
  say "installing cargo-deb $CARGO_DEB_VERSION"
  start=$SECONDS
  cargo install cargo-deb --version "$CARGO_DEB_VERSION" --locked --quiet
  say "cargo-deb installed in $((SECONDS - start)) s"
fi
start=$SECONDS
# Builds the release binary; writes the .deb and the .ddeb (debug symbols,
# see dbgsym in Cargo.toml) to target/debian/ and prints their paths.
cargo deb --locked >"$tmp/built" 2>"$tmp/cargo-deb.log" || {
  cat "$tmp/cargo-deb.log" >&2
  fail "cargo deb failed"
}
say "cargo deb took $((SECONDS - start)) s"
deb=$(grep '\.deb$' "$tmp/built" | tail -n 1)
[ -f "$deb" ] || fail "cargo deb printed no .deb path: $(cat "$tmp/built")"

dpkg-deb -c "$deb" >"$tmp/contents"
# Paths as dpkg-deb lists them, with the mode that matters.
expect_entry() { # MODE PATH
  grep -Eq "^$1 .* \./$2\$" "$tmp/contents" \
    || fail "$deb lacks $2 (mode $1); it holds:"$'\n'"$(cat "$tmp/contents")"
}
unit_path=usr/lib/systemd/system/$name.service
expect_entry '-rwxr-xr-x' "usr/bin/$name"
expect_entry '-rw-r--r--' "$unit_path"
expect_entry '-rw-r--r--' "etc/$name/$name.toml"
expect_entry '-rw-r--r--' "usr/share/man/man8/$name.8.gz"
expect_entry '-rw-r--r--' "usr/share/doc/$name/README.md"
conffiles=$(dpkg-deb -I "$deb" conffiles 2>/dev/null) || fail "$deb has no conffiles"
[ "$conffiles" = "/etc/$name/$name.toml" ] \
  || fail "$deb conffiles are not exactly /etc/$name/$name.toml: $conffiles"
postinst=$(dpkg-deb -I "$deb" postinst 2>/dev/null) || fail "$deb has no postinst"
grep -q 'daemon-reload' <<<"$postinst" || fail "$deb postinst does not reload systemd"
# Installed, neither enabled nor started (see systemd-units in Cargo.toml):
# postinst enables the unit only if it was enabled before, and restarts it
# on upgrade only if it runs (try-restart).
grep -q 'deb-systemd-helper debian-installed' <<<"$postinst" \
  || fail "$deb postinst enables the service on installation"
if grep 'deb-systemd-invoke' <<<"$postinst" | grep -vq 'deb-systemd-invoke try-restart '; then
  fail "$deb postinst starts the service"
fi

root=$tmp/root
dpkg-deb -x "$deb" "$root"
cmp "$unit" "$root/$unit_path" || fail "packaged unit differs from $unit"
cmp "$config" "$root/etc/$name/$name.toml" || fail "packaged config differs from $config"
gzip -dc "$root/usr/share/man/man8/$name.8.gz" | cmp - "$man" \
  || fail "packaged man page differs from $man"
version=$(dpkg-deb -f "$deb" Version) # 0.1.0-1: the crate's, then a revision
[ "$("$root/usr/bin/$name" --version)" = "$name ${version%-*}" ] \
  || fail "packaged binary's --version is not '$name ${version%-*}'"
"$root/usr/bin/$name" check-config -c "$root/etc/$name/$name.toml" >/dev/null \
  || fail "packaged binary rejects the packaged configuration"
if readelf -S "$root/usr/bin/$name" 2>/dev/null | grep -q '\.debug_info'; then
  fail "packaged binary is not stripped (debug info belongs in the .ddeb)"
fi
say "package $(basename "$deb") holds the binary, unit, conffile and man page"

# --- 3. systemd unit ---------------------------------------------------------
# verify, against the extracted package as root directory: ExecStart's
# binary and the man page of Documentation= are looked up there. The
# targets the unit names and /bin/kill (ExecReload) come from this machine.
# It exits 0 on a misspelt key or a bad value (only warning about them), so
# any output at all fails the check.
verify_unit() { # ROOT
  MANPATH="$1/usr/share/man:" systemd-analyze verify --root="$1" "/$unit_path" 2>&1
}
if command -v systemd-analyze >/dev/null 2>&1 && [ -d /lib/systemd/system ] && [ -x /bin/kill ]; then
  mkdir -p "$root/bin"
  cp /lib/systemd/system/*.target "$root/usr/lib/systemd/system/"
  cp /bin/kill "$root/bin/kill"
  output=$(verify_unit "$root") || fail "systemd-analyze verify rejects $unit:"$'\n'"$output"
  [ -z "$output" ] || fail "systemd-analyze verify warns about $unit:"$'\n'"$output"
  # With the token drop-in that the unit's comments show (LoadCredential=,
  # %d), taken from those comments.
  dropin=$root/etc/systemd/system/$name.service.d
  mkdir -p "$dropin"
  sed -n 's/^#   \(\[Service\]\|LoadCredential=.*\|Environment=.*\)$/\1/p' "$unit" >"$dropin/token.conf"
  [ "$(wc -l <"$dropin/token.conf")" -eq 3 ] \
    || fail "$unit: the token drop-in in its comments is not [Service], LoadCredential=, Environment="
  output=$(verify_unit "$root") || fail "systemd-analyze verify rejects $unit with the token drop-in:"$'\n'"$output"
  [ -z "$output" ] || fail "systemd-analyze verify warns about the token drop-in:"$'\n'"$output"
  rm -r "$root/etc/systemd"
  # The same check on a broken copy must fail, or it proves nothing here.
  cp "$root/$unit_path" "$tmp/good.service"
  sed 's/^ProtectSystem=/ProtectSystm=/' "$tmp/good.service" >"$root/$unit_path"
  if output=$(verify_unit "$root") && [ -z "$output" ]; then
    fail "systemd-analyze verify did not notice a misspelt key; the unit check is void"
  fi
  cp "$tmp/good.service" "$root/$unit_path"
  say "systemd-analyze verify accepts the unit, with and without the token drop-in (and rejects a broken copy)"
else
  say "systemd-analyze not installed: unit not verified"
fi

# --- 4. Dockerfile ---------------------------------------------------------
# Docker is not available to the tests: check what can be checked without
# it. Instructions with their continuation lines joined:
sed -e ':a' -e '/\\$/N; s/\\\n//; ta' "$dockerfile" | grep -Ev '^\s*(#|$)' >"$tmp/instructions"
grep -q '^FROM rust:1-bookworm AS build' "$tmp/instructions" || fail "$dockerfile: no rust:1-bookworm build stage"
grep -q '^FROM debian:bookworm-slim' "$tmp/instructions" || fail "$dockerfile: no debian:bookworm-slim stage"
grep -q '^USER ' "$tmp/instructions" || fail "$dockerfile: the image runs as root"
for port in 8600/udp 8600/tcp 8653; do
  grep -Eq "^EXPOSE .*\b$port\b" "$tmp/instructions" || fail "$dockerfile: does not EXPOSE $port"
done
grep -q "\"/etc/$name/$name.toml\"" "$tmp/instructions" || fail "$dockerfile: CMD does not read /etc/$name/$name.toml"
context=$tmp/context
stage=0
while read -r instruction rest; do
  case $instruction in
    FROM) stage=$((stage + 1)) ;;
    COPY)
      read -ra args <<<"$rest"
      case ${args[0]} in --from=*) continue ;; esac
      sources=("${args[@]:0:${#args[@]}-1}")
      dest=${args[-1]}
      for source in "${sources[@]}"; do
        [ -e "$source" ] || fail "$dockerfile: COPY source $source does not exist"
        if [ "$stage" -eq 1 ]; then # the build stage, WORKDIR /src
          target=$context/${dest#./}
          case $dest in */) mkdir -p "$target" ;; *) mkdir -p "$(dirname "$target")" ;; esac
          cp -r "$source" "$target"
        fi
      done
      ;;
  esac
done <"$tmp/instructions"
# The build stage's files are a whole workspace (every member and target
# Cargo.toml names) and Cargo.lock fits it, as `cargo build --locked` needs.
host=$(rustc -vV | sed -n 's/^host: //p')
(cd "$context" && cargo fetch --locked --offline --target "$host" --quiet) 2>"$tmp/fetch.log" || {
  cat "$tmp/fetch.log" >&2
  fail "$dockerfile: the files its build stage copies do not make a buildable workspace"
}
say "Dockerfile: COPY sources exist and the build stage's workspace loads"

echo "packaging/check.sh: all packaging checks passed"
