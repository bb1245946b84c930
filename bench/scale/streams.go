package main

import (
	"context"
	"errors"
	"io"

	"github.com/ferryvmm/ferry/migrate"
)

// More than one connection per migration (parallel streams) needs
// migrate.Options.Connections and Options.StreamDial, which this ferry
// does not have yet: until they land, -conns values above 1 are refused
// (streamsSupported) and setStreams is only the place where they will be
// set.

// errNoStreams says why -conns above 1 is refused.
var errNoStreams = errors.New("more than one connection per migration needs migrate.Options.Connections and StreamDial " +
	"(parallel streams), which this ferry does not have yet: use -conns 1")

// streamsSupported reports whether a migration can use several connections.
func streamsSupported() bool { return false }

// setStreams makes Send use n connections, dial opening each one after
// the first.
func setStreams(o *migrate.Options, n int, dial func(ctx context.Context) (io.ReadWriteCloser, error)) error {
	if n <= 1 {
		return nil
	}
	return errNoStreams
}
