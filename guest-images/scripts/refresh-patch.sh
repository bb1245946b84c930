#!/bin/sh
# Regenerate a patch in guest-images/patches/ from an edited kernel tree.
#
#   scripts/refresh-patch.sh PATCH PRISTINE_TREE EDITED_TREE [FILE...]
#
# Keeps the patch's description (everything before the first "--- a/"),
# and rewrites the diff of FILE... (default: the files the patch already
# touches) as `diff -u` of PRISTINE_TREE/FILE against EDITED_TREE/FILE,
# with a/ and b/ labels so that `patch -p1` applies it.
set -eu
[ $# -ge 3 ] || { echo "usage: $0 PATCH PRISTINE_TREE EDITED_TREE [FILE...]" >&2; exit 2; }
patchfile=$1 pristine=$2 edited=$3
shift 3
if [ $# -eq 0 ]; then
	[ -f "$patchfile" ] || { echo "$0: $patchfile does not exist: name the files" >&2; exit 2; }
	set -- $(sed -n 's|^--- a/\([^[:space:]]*\).*|\1|p' "$patchfile")
fi
tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
if [ -f "$patchfile" ]; then
	sed '/^--- a\//,$d' "$patchfile" > "$tmp"
fi
for f in "$@"; do
	# diff exits 1 when the files differ: that is the point here.
	diff -u --label "a/$f" --label "b/$f" "$pristine/$f" "$edited/$f" >> "$tmp" || [ $? -eq 1 ]
done
cp "$tmp" "$patchfile"
echo "wrote $patchfile ($*)"
