package migrate

import (
	"io"
	"sync/atomic"
	"time"
)

// Connection helpers shared by the sender, the receiver and the TLS code.

// watchdog cuts conn when a write of w makes no progress for timeout, and
// sets stalled; the failing write then reports ErrStalled. It returns a
// function that stops it.
func watchdog(w *recordWriter, conn io.ReadWriter, timeout time.Duration, stalled *atomic.Bool) func() {
	stop := make(chan struct{})
	tick := min(timeout/4, time.Second)
	go func() {
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				if since := w.busySince.Load(); since != 0 && time.Since(time.Unix(0, since)) > timeout {
					stalled.Store(true)
					setDeadline(conn, time.Unix(1, 0))
					return
				}
			}
		}
	}()
	return func() { close(stop) }
}

// sendErrorRecord writes an ERROR record, best effort, within 2 seconds.
func sendErrorRecord(conn io.Writer, msg string) {
	const limit = 2 * time.Second
	rec := appendRecord(nil, RecError, encodeError(msg))
	if setWriteDeadline(conn, time.Now().Add(limit)) {
		_, _ = conn.Write(rec)
		return
	}
	done := make(chan struct{})
	go func() {
		_, _ = conn.Write(rec)
		close(done)
	}()
	t := time.NewTimer(limit)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
	}
}

// Deadline helpers: no-ops (returning false) for streams without deadlines.

func setDeadline(c any, t time.Time) bool {
	d, ok := c.(interface{ SetDeadline(time.Time) error })
	return ok && d.SetDeadline(t) == nil
}

func setWriteDeadline(c any, t time.Time) bool {
	d, ok := c.(interface{ SetWriteDeadline(time.Time) error })
	return ok && d.SetWriteDeadline(t) == nil
}

func setReadDeadline(c any, t time.Time) bool {
	d, ok := c.(interface{ SetReadDeadline(time.Time) error })
	return ok && d.SetReadDeadline(t) == nil
}
