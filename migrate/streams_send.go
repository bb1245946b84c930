package migrate

import (
	"context"
	"fmt"
	"io"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// The source's side of parallel streams (PROTOCOL.md, "Parallel
// streams"). With Options.Connections > 1, every stream (the main
// connection's included) has a goroutine that takes chunks of pending
// pages from the sender's goroutine and runs them through the per-page
// filter into its own connection; the sender's goroutine keeps the dirty
// log, the convergence checks and the records of the main connection, which
// it writes only while no chunk is out (between iterations).

// parallel is the machinery of parallel streams.
type parallel struct {
	jobs     chan chunkJob
	chunks   sync.WaitGroup // chunks handed out and not done
	workers  sync.WaitGroup // stream goroutines running
	inflight atomic.Int64   // pages in chunks handed out and not done
	// errMu guards err, the first error of a stream goroutine.
	errMu sync.Mutex
	err   error
	// unwatch stops cancellation from cutting the extra connections.
	unwatch []func() bool
	stopDog []func()
}

// chunkJob is a chunk of pending pages: the bits of words, page first of
// a region whose memory is mem and whose first global page is base.
type chunkJob struct {
	mem   []byte
	base  uint64
	first uint64
	words []uint64
	pages int64
}

func (p *parallel) setErr(err error) {
	p.errMu.Lock()
	if p.err == nil {
		p.err = err
	}
	p.errMu.Unlock()
}

func (p *parallel) firstErr() error {
	p.errMu.Lock()
	defer p.errMu.Unlock()
	return p.err
}

// openStreams announces the extra streams (STREAMS), opens them, and
// starts a goroutine per stream.
func (s *sender) openStreams() error {
	extra := s.opts.Connections - 1
	if err := s.w.record(RecStreams, encodeStreams(extra)); err != nil {
		return s.ioError("send STREAMS", err)
	}
	if err := s.w.sync(); err != nil {
		return s.ioError("send STREAMS", err)
	}
	for i := range extra {
		conn, err := s.opts.StreamDial(s.ctx)
		if err != nil {
			return fmt.Errorf("migrate: open stream %d of %d: %w", i+2, extra+1, err)
		}
		unwatch := context.AfterFunc(s.ctx, func() { setDeadline(conn, time.Unix(1, 0)) })
		if err := s.streamHello(conn); err != nil {
			unwatch()
			conn.Close()
			return fmt.Errorf("migrate: stream %d of %d: %w", i+2, extra+1, err)
		}
		st := &stream{s: s, conn: conn, w: newRecordWriter(s.ctx, conn, s.opts.BufferSize, s.w.lim)}
		s.streams = append(s.streams, st) // closed with the others, whatever happens
		s.par.unwatch = append(s.par.unwatch, unwatch)
		if s.opts.Compress != CompressOff {
			n := float64(s.opts.Connections)
			st.w.comp, st.w.linkBps = newCompressor(s.opts.Compress), func() float64 { return s.linkRate() / n }
		}
		st.w.startAsync()
		s.par.stopDog = append(s.par.stopDog, watchdog(st.w, conn, s.opts.IOTimeout, &s.commit.stalled))
	}
	if s.w.comp != nil {
		n := float64(s.opts.Connections)
		s.w.linkBps = func() float64 { return s.linkRate() / n }
	}
	s.stats.Connections = len(s.streams)
	s.par.jobs = make(chan chunkJob, 2*len(s.streams))
	for _, st := range s.streams {
		s.par.workers.Add(1)
		go st.work(s.par.jobs)
	}
	return nil
}

// streamHello introduces an extra stream: HELLO{STREAM}, HELLO-ACK{STREAM}.
func (s *sender) streamHello(conn io.ReadWriter) error {
	p, err := encodeHello(s.vm.info, helloFlags{Stream: true})
	if err == nil {
		err = writeRecord(conn, RecHello, p)
	}
	if err != nil {
		return err
	}
	setReadDeadline(conn, time.Now().Add(s.opts.HandshakeTimeout))
	rec, err := newRecordReader(conn).next()
	setReadDeadline(conn, time.Time{})
	switch {
	case err != nil:
		return err
	case rec.Type == RecError:
		return fmt.Errorf("refused: %w", decodeError(rec.Payload))
	case rec.Type != RecHelloAck:
		return fmt.Errorf("%w: %v in answer to its HELLO", ErrUnexpected, rec.Type)
	}
	if f, err := decodeHelloAck(rec.Payload); err != nil || f != (helloFlags{Stream: true}) {
		return fmt.Errorf("%w: acknowledged with %+v (%v)", ErrUnexpected, f, err)
	}
	return nil
}

// work is a stream's goroutine: it sends the chunks it takes. After an
// error (its own or another stream's) it only counts them done.
func (st *stream) work(jobs <-chan chunkJob) {
	p := &st.s.par
	defer p.workers.Done()
	for j := range jobs {
		if p.firstErr() == nil {
			if err := st.sendChunk(j); err != nil {
				p.setErr(err)
			}
		}
		p.inflight.Add(-j.pages)
		p.chunks.Done()
	}
}

// sendChunk runs the pages of one chunk through the filter.
func (st *stream) sendChunk(j chunkJob) error {
	for w, x := range j.words {
		for x != 0 {
			p := j.first + uint64(w)*64 + uint64(bits.TrailingZeros64(x))
			x &= x - 1
			if err := st.sendPage(j.base+p, j.mem[p*PageSize:(p+1)*PageSize]); err != nil {
				return err
			}
		}
	}
	return nil
}

// dispatch hands the pages of words (cleared here) to the streams.
func (s *sender) dispatch(mem []byte, base, first uint64, words []uint64) (int64, error) {
	j := chunkJob{mem: mem, base: base, first: first, words: append([]uint64(nil), words...)}
	for w := range words {
		j.pages += int64(bits.OnesCount64(words[w]))
		words[w] = 0
	}
	s.par.inflight.Add(j.pages)
	s.par.chunks.Add(1)
	s.par.jobs <- j
	if err := s.par.firstErr(); err != nil {
		return j.pages, s.ioError("send pages", err)
	}
	return j.pages, nil
}

// drain waits until every chunk handed out is sent.
func (s *sender) drain() error {
	if s.par.jobs == nil {
		return nil
	}
	s.par.chunks.Wait()
	if err := s.par.firstErr(); err != nil {
		return s.ioError("send pages", err)
	}
	return nil
}

// syncStreams ends the iteration on every stream: its open PAGES record
// is closed, an extra stream then says SYNC with the entries it sent, and
// the extra streams hand everything to their connections; with wait, every
// stream waits until its connection took it all. No chunk may be out.
func (s *sender) syncStreams(wait bool) error {
	for i, st := range s.streams {
		st.w.endPages()
		if i > 0 && st.synced != s.pass.iter+1 {
			if err := st.w.record(RecSync, encodeSync(s.pass.iter, st.entries)); err != nil {
				return s.ioError(fmt.Sprintf("send SYNC on stream %d", i+1), err)
			}
			st.synced = s.pass.iter + 1
		}
		var err error
		switch {
		case wait:
			err = st.w.sync()
		case i > 0:
			err = st.w.flush()
		}
		if err != nil {
			return s.ioError("send pages", err)
		}
	}
	return nil
}

// stopStreams stops the stream goroutines. After a failure one may be
// stuck in a write: the connections are cut if they do not stop within a
// second.
func (s *sender) stopStreams() {
	if s.par.jobs != nil {
		close(s.par.jobs)
		done := make(chan struct{})
		go func() { s.par.workers.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Second):
			for _, st := range s.streams[1:] {
				setDeadline(st.conn, time.Unix(1, 0))
			}
			setWriteDeadline(s.conn, time.Unix(1, 0))
			<-done
		}
		s.par.jobs = nil
	}
}

// closeStreams closes the extra connections (after stopStreams).
func (s *sender) closeStreams() {
	for _, stop := range s.par.stopDog {
		stop()
	}
	for _, unwatch := range s.par.unwatch {
		unwatch()
	}
	for _, st := range s.streams[1:] {
		st.w.stop(time.Second)
		st.conn.Close()
	}
}
