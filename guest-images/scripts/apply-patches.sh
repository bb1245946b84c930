#!/bin/sh
# Bring the kernel tree KDIR to "pristine + PATCH..." (applied in the order
# given, with patch -p1).
#
#   scripts/apply-patches.sh KDIR TARBALL PATCH...
#
# The patches applied last time are kept in KDIR/.ferry-patches/. They are
# first reversed (newest first), so only the files the patches touch change
# and the next kernel build is incremental. If they do not reverse cleanly
# (someone edited the tree), the tree is unpacked again from TARBALL.
set -eu
kdir=$1 tarball=$2
shift 2
applied=$kdir/.ferry-patches

unpack() {
	echo "  UNPACK  $(basename "$kdir") again from $tarball" >&2
	parent=$(dirname "$kdir")
	rm -rf "$kdir"
	tar -C "$parent" -xf "$tarball"
}

if [ -d "$applied" ]; then
	for p in $(ls -r "$applied"); do
		if ! patch -d "$kdir" -p1 -R -s -f --no-backup-if-mismatch < "$applied/$p" >/dev/null; then
			echo "  warning: $p does not reverse cleanly" >&2
			unpack
			break
		fi
	done
	rm -rf "$applied"
fi

mkdir -p "$applied"
n=0
for p in "$@"; do
	n=$((n + 1))
	if ! patch -d "$kdir" -p1 -s -N --no-backup-if-mismatch < "$p"; then
		echo "error: $(basename "$p") does not apply to $(basename "$kdir")" >&2
		# Leave no half-patched tree behind that looks patched.
		unpack
		rm -rf "$applied"
		exit 1
	fi
	cp "$p" "$applied/$(printf '%03d' $n)-$(basename "$p")"
done
