package control

import (
	"encoding/json"
	"io"
	"net/http"
	"sync"

	"github.com/ferryvmm/ferry/migrate"
)

// eventWriter writes the MigrateEvent lines of POST /v1/migrate's answer.
//
// Iteration lines and the outcome are written by the caller, at once and
// in order, as they come. Live lines must never hold up the sender that
// reports them, even when the client reads slowly: Live only leaves its
// event in a one-slot mailbox, where a newer one replaces it, and a
// goroutine writes what the mailbox holds. A slow client misses live
// lines, never an iteration line. An iteration line drops the live event
// still in the mailbox (its pass has ended), so no live line of a pass
// follows the pass's iteration line.
type eventWriter struct {
	w     io.Writer
	flush func()

	// write orders the lines: it is held while one is written.
	write sync.Mutex
	// slot guards live, the mailbox; it is never held during a write.
	slot sync.Mutex
	live *migrate.PassProgress

	started bool          // start was called (by the handler's goroutine, as stop)
	wake    chan struct{} // a live event waits in the mailbox
	quit    chan struct{} // closed by stop
	done    chan struct{} // closed when the live goroutine has ended
}

// newEventWriter writes events to w. Live events are written only between
// start and stop.
func newEventWriter(w io.Writer) *eventWriter {
	e := &eventWriter{w: w, flush: func() {}, wake: make(chan struct{}, 1),
		quit: make(chan struct{}), done: make(chan struct{})}
	if f, ok := w.(http.Flusher); ok {
		e.flush = f.Flush
	}
	return e
}

// start launches the goroutine that writes live events.
func (e *eventWriter) start() {
	e.started = true
	go e.writeLive()
}

// stop ends the live goroutine and drops the event left in the mailbox;
// once it returns, no live line is written any more.
func (e *eventWriter) stop() {
	if e.started {
		close(e.quit)
		<-e.done
		e.started = false
	}
	e.take()
}

// Emit writes ev now, after any live line being written, and drops the
// live event not written yet.
func (e *eventWriter) Emit(ev MigrateEvent) {
	e.write.Lock()
	defer e.write.Unlock()
	e.take()
	e.encode(ev)
}

// Live queues p as the next live line, replacing one not written yet. It
// never waits for the client.
func (e *eventWriter) Live(p migrate.PassProgress) {
	e.slot.Lock()
	e.live = &p
	e.slot.Unlock()
	select {
	case e.wake <- struct{}{}:
	default: // the goroutine is already told
	}
}

// take empties the mailbox.
func (e *eventWriter) take() *migrate.PassProgress {
	e.slot.Lock()
	defer e.slot.Unlock()
	p := e.live
	e.live = nil
	return p
}

func (e *eventWriter) writeLive() {
	defer close(e.done)
	for {
		select {
		case <-e.quit:
			return
		case <-e.wake:
		}
		e.write.Lock()
		if p := e.take(); p != nil {
			e.encode(MigrateEvent{Live: p})
		}
		e.write.Unlock()
	}
}

// encode writes one line; the caller holds e.write. A failed write (the
// client went away) is not the migration's business: the request's
// context ends it if it must.
func (e *eventWriter) encode(ev MigrateEvent) {
	json.NewEncoder(e.w).Encode(ev)
	e.flush()
}
