package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/ferryvmm/ferry/migrate"
)

// The plain loopback copy the migration is compared with, over the same
// number of TCP or TLS connections, and the dialling both share.

// copyChunk is the size of the copy's writes and reads: the size of the
// migration sender's output buffer.
const copyChunk = 4 << 20

// sendCopy fills the same guest memory and writes all of it to the
// receiver over f.conns connections (connection k sends the k-th of
// f.conns equal parts), then waits for the receiver's one-byte
// acknowledgement on each.
func sendCopy(ctx context.Context, f childFlags) (childResult, error) {
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
	conns := make([]net.Conn, f.conns)
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	}()
	for k := range conns {
		if conns[k], err = dial(ctx, f.addr, cfg); err != nil {
			return res, err
		}
	}
	res.TLSSuite = suite(conns[0])
	stop := context.AfterFunc(ctx, func() {
		for _, c := range conns {
			c.SetDeadline(time.Unix(1, 0))
		}
	})
	defer stop()

	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	pages := f.size / pageSize
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for k, c := range conns {
		part := mem[pages*uint64(k)/uint64(len(conns))*pageSize : pages*uint64(k+1)/uint64(len(conns))*pageSize]
		wg.Go(func() {
			for off := 0; off < len(part) && errs[k] == nil; off += copyChunk {
				_, errs[k] = c.Write(part[off:min(off+copyChunk, len(part))])
			}
			if errs[k] == nil {
				errs[k] = closeWrite(c)
			}
			var ack [1]byte
			if errs[k] == nil {
				_, errs[k] = io.ReadFull(c, ack[:])
			}
		})
	}
	wg.Wait()
	if err := m.stop(&res); err != nil {
		return res, err
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("copy: %w", err)
	}
	res.Bytes = int64(f.size)
	return res, finish(&res, mem)
}

// receiveCopy accepts f.conns connections (the TLS handshake as ferry's
// receiver makes it) and reads each to its end into a buffer of its own,
// reused: the bytes go nowhere, so the copy is what the loopback link and
// TLS can carry, without the receiver's page faults.
func receiveCopy(ctx context.Context, f childFlags, ln net.Listener) (childResult, error) {
	var res childResult
	cfg, err := serverTLS(f.tlsDir)
	if err != nil {
		return res, err
	}
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	m, err := startMeter(f.profile)
	if err != nil {
		return res, err
	}
	counts := make([]int64, f.conns)
	errs := make([]error, f.conns)
	var wg sync.WaitGroup
	for k := range f.conns {
		raw, err := ln.Accept()
		if err != nil {
			wg.Wait()
			return res, fmt.Errorf("accept: %w", err)
		}
		wg.Go(func() {
			defer raw.Close()
			// Plain TCP starts with guest bytes: no handshake (ferry's would
			// read them as a record or a TLS hello).
			var c net.Conn = raw
			if cfg != nil {
				if c, errs[k] = migrate.ServerHandshake(raw, cfg, 10*time.Second); errs[k] != nil {
					return
				}
			}
			stop := context.AfterFunc(ctx, func() { raw.SetDeadline(time.Unix(1, 0)) })
			defer stop()
			counts[k], errs[k] = io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, copyChunk))
			if errs[k] == nil {
				_, errs[k] = c.Write([]byte{1})
			}
		})
	}
	wg.Wait()
	if err := m.stop(&res); err != nil {
		return res, err
	}
	if err := errors.Join(errs...); err != nil {
		return res, fmt.Errorf("copy: %w", err)
	}
	for _, n := range counts {
		res.Bytes += n
	}
	if res.Bytes != int64(f.size) {
		return res, fmt.Errorf("copy: received %d bytes, want %d", res.Bytes, f.size)
	}
	return res, nil
}

// dial connects to addr as vmm/control's dialDestination does: TCP, then
// the TLS handshake with cfg if not nil.
func dial(ctx context.Context, addr string, cfg *tls.Config) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	if cfg == nil {
		return conn, nil
	}
	tc := tls.Client(conn, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake with %s: %w", addr, migrate.ExplainTLSError(err))
	}
	return tc, nil
}

// closeWrite ends what c sends (TLS: close_notify; TCP: FIN), so the
// peer reads EOF, and leaves c open for reading.
func closeWrite(c net.Conn) error {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("%T cannot half-close", c)
}
