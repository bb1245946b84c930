package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm/incoming"
)

// The migration's two sides: ferry's sender and the receiving end of
// ferry receive, on the fake guest (guest.go).

// sendMigration fills the guest and migrates it with migrate.Send.
func sendMigration(ctx context.Context, f childFlags) (childResult, error) {
	var res childResult
	mem, mix, fillSecs, err := filledGuest(f)
	if err != nil {
		return res, err
	}
	res.Mix, res.FillSeconds = &mix, fillSecs
	cfg, err := clientTLS(f.tlsDir, f.addr)
	if err != nil {
		return res, err
	}
	mode, err := migrate.ParseCompressMode(f.compress)
	if err != nil {
		return res, err
	}
	opts := migrate.Options{Compress: mode, NoDigest: f.noDigest, Connections: f.conns}
	if f.conns > 1 {
		opts.StreamDial = func(ctx context.Context) (io.ReadWriteCloser, error) { return dial(ctx, f.addr, cfg) }
	}
	src := &source{info: guestInfo(f.size), mem: mem, state: guestState()}

	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	conn, err := dial(ctx, f.addr, cfg)
	if err != nil {
		return res, err
	}
	res.TLSSuite = suite(conn)
	st, err := migrate.Send(ctx, src, conn, opts)
	conn.Close()
	if merr := m.stop(&res); err == nil && merr != nil {
		return res, merr
	}
	if err != nil {
		return res, fmt.Errorf("migrate: %w", err)
	}
	res.Bytes, res.Iterations, res.TableBytes = st.BytesTotal, len(st.Iterations), st.TableBytes
	for _, it := range st.Iterations {
		res.PagesZero += it.PagesZero
		res.PagesSent += it.PagesSent
		res.Compressed += it.CompressedRecords
	}
	// An idle guest: every page once, in iteration 0, and an empty
	// stop-and-copy.
	if !st.Converged || res.PagesZero+res.PagesSent != f.size/pageSize || res.PagesZero != mix.Zero {
		return res, fmt.Errorf("migrate: converged %v, %d zero and %d full pages sent, want %d in all of which %d zero",
			st.Converged, res.PagesZero, res.PagesSent, f.size/pageSize, mix.Zero)
	}
	return res, finish(&res, mem)
}

// receiveMigration is ferry receive's receiving end (vmm/incoming, with a
// Keeper and a Sessions registry) into a fake destination.
func receiveMigration(ctx context.Context, f childFlags, ln net.Listener) (childResult, error) {
	var res childResult
	cfg, err := serverTLS(f.tlsDir)
	if err != nil {
		return res, err
	}
	logf := func(string, ...any) {}
	if f.verbose {
		logf = func(format string, args ...any) { fmt.Fprintf(os.Stderr, "scale recv: "+format+"\n", args...) }
	}
	info, state := guestInfo(f.size), guestState()
	var pool *prefaulted
	if f.prefault {
		if pool, err = prefault(f.size); err != nil {
			return res, err
		}
	}
	keep := migrate.NewKeeper(f.resumeWindow, logf)
	defer keep.Close()
	srv := incoming.NewServer(ln, incoming.Config[*destination]{
		TLS: cfg,
		Receive: migrate.ReceiveOptions{MaxMemory: f.size, MaxVCPUs: info.VCPUs, IdleTimeout: 30 * time.Second,
			Keep: keep, Sessions: migrate.NewSessions()},
		NewTarget: func() *destination { return &destination{want: info, state: state, pool: pool} },
		Logf:      logf,
	})
	defer srv.Close()
	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	dst, err := srv.Serve(ctx)
	if merr := m.stop(&res); err == nil && merr != nil {
		return res, merr
	}
	if err != nil {
		return res, fmt.Errorf("receive: %w", err)
	}
	if !dst.started.Load() {
		return res, errors.New("receive: the guest did not start")
	}
	if os.Getenv(corruptEnv) != "" {
		dst.mem[len(dst.mem)/2] ^= 1
	}
	return res, finish(&res, dst.mem)
}
