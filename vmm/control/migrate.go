package control

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// MigrateRequest is the body of POST /v1/migrate.
type MigrateRequest struct {
	To                string  `json:"to"` // HOST:PORT of `ferry receive`
	DowntimeMS        int     `json:"downtime_ms,omitempty"`
	MaxIterations     int     `json:"max_iterations,omitempty"`
	TimeoutSeconds    float64 `json:"timeout_seconds,omitempty"`
	OnTimeout         string  `json:"on_timeout,omitempty"`    // "abort" (default) or "force"
	MaxBandwidth      int64   `json:"max_bandwidth,omitempty"` // bytes per second, 0 = unlimited
	NoDigest          bool    `json:"no_digest,omitempty"`
	NoClearBeforeSend bool    `json:"no_clear_before_send,omitempty"`
	// NoDelta sends changed pages whole; Compress is auto (default), off
	// or zstd (migrate.CompressMode).
	NoDelta  bool   `json:"no_delta,omitempty"`
	Compress string `json:"compress,omitempty"`
	// NoAutoConverge: never slow the guest down when pre-copy does not
	// converge.
	NoAutoConverge bool `json:"no_auto_converge,omitempty"`
	// PostcopyAfterSeconds and PostcopyAfterIterations allow a switch to
	// post-copy (migrate.Options.PostcopyAfter...).
	PostcopyAfterSeconds    float64 `json:"postcopy_after_seconds,omitempty"`
	PostcopyAfterIterations int     `json:"postcopy_after_iterations,omitempty"`
	// Resume resumes a cut migration into the pages the destination kept.
	Resume bool `json:"resume,omitempty"`
	// Connections is how many connections carry the pages (0: the
	// default of this host, migrate.DefaultConnections).
	Connections int `json:"connections,omitempty"`
	// postcopyResume: this request finishes an interrupted post-copy (the
	// controller sets it in state handed-over).
	postcopyResume bool
	// TLS names the PEM files (absolute paths, read by this process) for a
	// mutually authenticated TLS 1.3 connection; empty: plain TCP.
	TLS migrate.TLSFiles `json:"tls,omitempty"`
}

// MigrateEvent is one line of the newline-delimited JSON answer to
// POST /v1/migrate: progress lines, then either Stats or Error. During a
// pass, Live lines say where it stands (at most every 250 ms; a client
// that reads slowly misses some), before the pass's Progress line.
type MigrateEvent struct {
	Progress *migrate.IterationStats `json:"progress,omitempty"`
	Live     *migrate.PassProgress   `json:"live,omitempty"`
	Stats    *migrate.Stats          `json:"stats,omitempty"`
	Error    string                  `json:"error,omitempty"`
	Outcome  string                  `json:"outcome,omitempty"` // with Error: OutcomeFailed or OutcomeUnknown
}

// MigrateOptions turns the request into migrate.Options and checks them
// with migrate.Options.Validate: a bad setting is an *migrate.OptionError
// naming the Options field (OptionJSON has its JSON name here; ferry
// migrate names its flag).
func (r MigrateRequest) MigrateOptions() (migrate.Options, error) {
	o := migrate.Options{
		Downtime:                time.Duration(r.DowntimeMS) * time.Millisecond,
		MaxIterations:           r.MaxIterations,
		Timeout:                 time.Duration(r.TimeoutSeconds * float64(time.Second)),
		MaxBandwidth:            r.MaxBandwidth,
		NoDigest:                r.NoDigest,
		NoClearBeforeSend:       r.NoClearBeforeSend,
		NoDelta:                 r.NoDelta,
		NoAutoConverge:          r.NoAutoConverge,
		PostcopyAfter:           time.Duration(r.PostcopyAfterSeconds * float64(time.Second)),
		PostcopyAfterIterations: r.PostcopyAfterIterations,
		Resume:                  r.Resume,
		Connections:             r.Connections,
	}
	if o.Connections == 0 {
		o.Connections = migrate.DefaultConnections()
	}
	var err error
	if o.OnTimeout, err = migrate.ParseTimeoutAction(r.OnTimeout); err != nil {
		return o, err
	}
	if o.Compress, err = migrate.ParseCompressMode(r.Compress); err != nil {
		return o, err
	}
	return o, o.Validate()
}

// Options checks the whole request (options, destination, TLS files) and
// turns it into migrate.Options; errors name the JSON fields.
func (r MigrateRequest) Options() (migrate.Options, error) {
	o, err := r.MigrateOptions()
	if oe := (*migrate.OptionError)(nil); errors.As(err, &oe) {
		return o, fmt.Errorf("%s: %w", OptionJSON[oe.Option], oe.Err)
	} else if err != nil {
		return o, err
	}
	if r.To == "" {
		return o, errors.New("no destination: give HOST:PORT of a `ferry receive`")
	}
	if err := r.TLS.Check(); err != nil {
		return o, err
	}
	return o, nil
}

// OptionJSON names each migrate.Options field a request sets by its JSON
// field in MigrateRequest.
var OptionJSON = map[string]string{
	"Downtime":                "downtime_ms",
	"MaxIterations":           "max_iterations",
	"Timeout":                 "timeout_seconds",
	"OnTimeout":               "on_timeout",
	"MaxBandwidth":            "max_bandwidth",
	"NoDigest":                "no_digest",
	"NoClearBeforeSend":       "no_clear_before_send",
	"NoDelta":                 "no_delta",
	"NoAutoConverge":          "no_auto_converge",
	"PostcopyAfter":           "postcopy_after_seconds",
	"PostcopyAfterIterations": "postcopy_after_iterations",
	"Compress":                "compress",
	"Resume":                  "resume",
	"Connections":             "connections",
}

// dialDestination connects to req.To, with the TLS handshake when req.TLS
// names certificate files.
func dialDestination(ctx context.Context, req MigrateRequest) (net.Conn, error) {
	var cfg *tls.Config
	if req.TLS.Enabled() {
		var err error
		if cfg, err = migrate.ClientTLSConfig(req.TLS, req.To); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", req.To)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", req.To, err)
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", req.To, migrate.ExplainTLSError(err))
	}
	return tc, nil
}
