#!/bin/sh
# Check that every option of a kconfig fragment came out as requested in the
# final .config; print each one that did not and fail.
#
#   scripts/check-config.sh FRAGMENT DOTCONFIG
set -eu
fragment=$1 config=$2
bad=0
while IFS= read -r line; do
	case $line in
	CONFIG_*=*)
		opt=${line%%=*}
		if ! grep -qxF -- "$line" "$config"; then
			got=$(grep -E "^($opt=|# $opt is not set)" "$config" || echo "(absent)")
			echo "config: wanted $line, got $got" >&2
			bad=1
		fi
		;;
	"# CONFIG_"*" is not set")
		opt=${line#\# }
		opt=${opt%% *}
		if got=$(grep -E "^$opt=" "$config"); then
			echo "config: wanted $opt off, got $got" >&2
			bad=1
		fi
		;;
	esac
done < "$fragment"
if [ $bad -ne 0 ]; then
	echo "error: kernel.config asks for options that the kernel's Kconfig did not grant (see above)" >&2
	exit 1
fi
echo "  CHECK   all $(grep -cE '^(CONFIG_|# CONFIG_.* is not set)' "$fragment") options of kernel.config are as requested"
