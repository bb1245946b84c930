#!/bin/sh
# Print the Debian packages that building (and testing) the guest images
# needs but that are not installed. Exit status 1 if a required one is
# missing.
required="make gcc libc6-dev bc flex bison libelf-dev patch diffutils xz-utils lz4 binutils linux-source-6.1 musl-tools busybox-static"
optional="qemu-system-x86"

installed() {
	dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"
}

if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "check-deps: dpkg-query not found (not a Debian system?); needed: $required" >&2
	exit 1
fi
missing= missing_opt=
for p in $required; do installed "$p" || missing="$missing $p"; done
for p in $optional; do installed "$p" || missing_opt="$missing_opt $p"; done
if [ -z "$missing" ] && [ -z "$missing_opt" ]; then
	echo "check-deps: all packages installed:"
	echo "  required: $required"
	echo "  for tests: $optional"
	exit 0
fi
[ -n "$missing" ] && echo "missing (required):$missing" && echo "  apt-get install$missing"
[ -n "$missing_opt" ] && echo "missing (for QEMU tests):$missing_opt" && echo "  apt-get install$missing_opt"
[ -z "$missing" ]
