package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/urfave/cli/v2"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

func newApp() *cli.App {
	return &cli.App{
		Name:        "ferry",
		Usage:       "run Linux guests on KVM and live-migrate them",
		Version:     version,
		HideVersion: true,
		// ferry certs --host takes "name,ip" for one host itself.
		DisableSliceFlagSeparator: true,
		Commands: []*cli.Command{
			runCommand,
			statusCommand,
			pauseCommand,
			resumeCommand,
			migrateCommand,
			receiveCommand,
			snapshotCommand,
			restoreCommand,
			certsCommand,
			probeCommand,
			versionCommand,
		},
		OnUsageError: func(c *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
}

// usageError marks a bad command line: exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// guestExitError carries a non-zero status from a guest that failed.
type guestExitError struct {
	err  error
	code int
}

func (e guestExitError) Error() string { return e.err.Error() }

func exitCode(err error) int {
	var u usageError
	if errors.As(err, &u) {
		return 2
	}
	var g guestExitError
	if errors.As(err, &g) {
		return g.code
	}
	return 1
}

// flagError reports a bad flag value, naming the flag.
func flagError(flag string, format string, args ...any) error {
	return usageError{fmt.Errorf("--%s: %s", flag, fmt.Sprintf(format, args...))}
}

// parseSize reads sizes like 128M, 1G, 512MiB, 65536 (bytes).
func parseSize(s string) (uint64, error) {
	t := strings.TrimSpace(strings.ToUpper(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "IB"), "B")
	mult := uint64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult, t = 1<<10, t[:n-1]
		case 'M':
			mult, t = 1<<20, t[:n-1]
		case 'G':
			mult, t = 1<<30, t[:n-1]
		case 'T':
			mult, t = 1<<40, t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v == 0 {
		return 0, fmt.Errorf("%q is not a size (use e.g. 128M or 1G)", s)
	}
	if v > (1<<63)/mult {
		return 0, fmt.Errorf("%q is too large", s)
	}
	return v * mult, nil
}

// guestImageDir finds the built guest image: $FERRY_GUEST_DIR, then
// guest-images/out next to the binary's bin/ directory, then under the
// current directory.
func guestImageDir() string {
	if d := os.Getenv("FERRY_GUEST_DIR"); d != "" {
		return d
	}
	var dirs []string
	if exe, err := os.Executable(); err == nil {
		dirs = append(dirs, filepath.Join(filepath.Dir(exe), "..", "guest-images", "out"))
	}
	dirs = append(dirs, filepath.Join("guest-images", "out"))
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "vmlinux")); err == nil {
			return d
		}
	}
	return dirs[len(dirs)-1]
}

// checkFile gives the one-line error for a missing or unreadable file flag.
func checkFile(flag, path string) error {
	st, err := os.Stat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return flagError(flag, "%s does not exist", path)
	case err != nil:
		return flagError(flag, "%v", err)
	case st.IsDir():
		return flagError(flag, "%s is a directory, not a file", path)
	}
	f, err := os.Open(path)
	if err != nil {
		return flagError(flag, "cannot read %s: %v", path, err)
	}
	f.Close()
	return nil
}
