package migrate

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"
)

// Tests of the commit handshake (END → READY → COMMIT → DONE-ACK): whatever
// record is lost, the guest never runs on both sides, and before COMMIT the
// source always gets its guest back.

// proxyAction says what relayProxy does with one record.
type proxyAction int

const (
	forward proxyAction = iota
	cutHere             // close both connections instead of relaying it
	swallow             // drop the record, keep the connections open
)

// relayProxy relays whole records both ways between a and b (a is the
// source's side); decide is called for each record with toDst telling the
// direction.
func relayProxy(a, b net.Conn, decide func(toDst bool, t RecordType) proxyAction) {
	var once sync.Once
	cut := func() { once.Do(func() { a.Close(); b.Close() }) }
	pipe := func(from, to net.Conn, toDst bool) {
		rr := newRecordReader(from)
		for {
			rec, err := rr.next()
			if err != nil {
				cut()
				return
			}
			switch decide(toDst, rec.Type) {
			case cutHere:
				cut()
				return
			case swallow:
				continue
			}
			if _, err := to.Write(appendRecordFlags(nil, rec.Type, rec.Flags, rec.Payload)); err != nil {
				cut()
				return
			}
		}
	}
	go pipe(a, b, true)
	go pipe(b, a, false)
}

// at returns a decide function acting on the first record of type rt in
// the given direction.
func at(toDst bool, rt RecordType, act proxyAction) func(bool, RecordType) proxyAction {
	var mu sync.Mutex
	done := false
	return func(d bool, t RecordType) proxyAction {
		mu.Lock()
		defer mu.Unlock()
		if d == toDst && t == rt && !done {
			done = true
			return act
		}
		return forward
	}
}

func TestCommitHandshake(t *testing.T) {
	quick := Options{AckTimeout: 300 * time.Millisecond}
	idle := ReceiveOptions{IdleTimeout: 2 * time.Second}
	cases := []struct {
		name    string
		decide  func(bool, RecordType) proxyAction
		unknown bool // the source must stay paused, outcome unknown
		started bool // the destination runs the guest
		sendMsg string
	}{
		// Before COMMIT: the source resumes, the destination discards.
		{"END cut", at(true, RecEnd, cutHere), false, false, "wait for READY"},
		{"READY cut", at(false, RecReady, cutHere), false, false, "wait for READY"},
		{"READY lost", at(false, RecReady, swallow), false, false, "no READY within"},
		// After COMMIT: never both running.
		{"COMMIT cut", at(true, RecCommit, cutHere), true, false, "DONE-ACK"},
		{"COMMIT lost", at(true, RecCommit, swallow), true, false, "no DONE-ACK within"},
		{"DONE-ACK cut", at(false, RecDoneAck, cutHere), true, true, "DONE-ACK"},
		{"DONE-ACK lost", at(false, RecDoneAck, swallow), true, true, "DONE-ACK"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := newTestSource(true)
			dst := &fakeDest{}
			res := migrateVia(t, src, dst, quick, idle, c.decide)
			if res.sendErr == nil || !strings.Contains(res.sendErr.Error(), c.sendMsg) {
				t.Fatalf("sender error %v, want one mentioning %q", res.sendErr, c.sendMsg)
			}
			if got := errors.Is(res.sendErr, ErrOutcomeUnknown); got != c.unknown {
				t.Fatalf("outcome unknown = %v, want %v (%v)", got, c.unknown, res.sendErr)
			}
			if src.logging {
				t.Fatal("source still logging dirty pages")
			}
			if c.unknown {
				if !src.paused || src.resumes != 0 {
					t.Fatalf("outcome unknown, but the source was resumed (%d) or is not paused", src.resumes)
				}
			} else if src.paused || src.resumes != 1 {
				t.Fatalf("source paused %v resumed %d, want it running again", src.paused, src.resumes)
			}
			if dst.started != c.started || dst.discarded == c.started {
				t.Fatalf("destination started %v discarded %v, want started %v", dst.started, dst.discarded, c.started)
			}
			if dst.started && !src.paused {
				t.Fatal("the guest runs on both sides")
			}
			if !c.started && res.recvErr == nil {
				t.Fatal("receiver reported success without starting the guest")
			}
		})
	}
}

// An ERROR in answer to COMMIT (Start failed) means the destination did not
// start the guest and discarded it before answering: the source resumes.
func TestCommitErrorResumes(t *testing.T) {
	src := newTestSource(true)
	dst := &fakeDest{startErr: errors.New("KVM_RUN failed")}
	res := runMigration(t, src, dst, Options{}, ReceiveOptions{})
	if errors.Is(res.sendErr, ErrOutcomeUnknown) || !strings.Contains(res.sendErr.Error(), "did not start the guest after COMMIT") {
		t.Fatalf("sender error %v", res.sendErr)
	}
	if src.paused || src.resumes != 1 || dst.started || !dst.discarded {
		t.Fatalf("source paused %v resumed %d; destination started %v discarded %v", src.paused, src.resumes, dst.started, dst.discarded)
	}
}

// Cancelling the sender after END (waiting for READY) still aborts and
// resumes; the destination, waiting for COMMIT, discards.
func TestCancelBeforeCommit(t *testing.T) {
	src := newTestSource(true)
	dst := &fakeDest{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s1, p1 := net.Pipe()
	p2, r1 := net.Pipe()
	relayProxy(p1, p2, func(toDst bool, rt RecordType) proxyAction {
		if !toDst && rt == RecReady {
			cancel()
			time.Sleep(50 * time.Millisecond)
		}
		return forward
	})
	var recvErr error
	done := make(chan struct{})
	go func() {
		_, recvErr = Receive(context.Background(), r1, dst, ReceiveOptions{IdleTimeout: 2 * time.Second})
		r1.Close()
		close(done)
	}()
	_, err := Send(ctx, src, s1, Options{})
	s1.Close()
	<-done
	if !errors.Is(err, context.Canceled) || src.paused || src.resumes != 1 {
		t.Fatalf("sender error %v, paused %v resumed %d", err, src.paused, src.resumes)
	}
	if recvErr == nil || dst.started || !dst.discarded {
		t.Fatalf("receiver error %v, started %v discarded %v", recvErr, dst.started, dst.discarded)
	}
}

// A destination that stops reading (a stalled link) is given up after
// IOTimeout: the source gets its guest back.
func TestSenderStall(t *testing.T) {
	src := newTestSource(true)
	a, b := net.Pipe()
	defer b.Close()
	go func() {
		rr := newRecordReader(b)
		if r, err := rr.next(); err != nil || r.Type != RecHello {
			return
		}
		writeRecord(b, RecHelloAck, encodeHelloAck(helloFlags{}))
		// then read nothing more
	}()
	start := time.Now()
	_, err := Send(context.Background(), src, a, Options{IOTimeout: 300 * time.Millisecond})
	a.Close()
	if !errors.Is(err, ErrStalled) || time.Since(start) > 10*time.Second {
		t.Fatalf("error %v after %v, want ErrStalled", err, time.Since(start))
	}
	if src.paused || src.logging {
		t.Fatalf("source paused %v logging %v", src.paused, src.logging)
	}
}

// TestStopDirtyLogErrorAfterDoneAck: once DONE-ACK arrived the guest runs
// on the destination, so a failure to stop dirty logging on the source is
// no failure of the migration, but it must not vanish: Stats.Warnings
// says it.
func TestStopDirtyLogErrorAfterDoneAck(t *testing.T) {
	src := newTestSource(true)
	src.stopErr = errors.New("dirty log ioctl refused")
	dst := &fakeDest{}
	res := runMigration(t, src, dst, Options{}, ReceiveOptions{})
	if res.sendErr != nil || res.recvErr != nil || !dst.started {
		t.Fatalf("send %v, receive %v, started %v: want a migration that succeeded", res.sendErr, res.recvErr, dst.started)
	}
	if len(res.stats.Warnings) != 1 || !strings.Contains(res.stats.Warnings[0], "dirty log ioctl refused") {
		t.Fatalf("warnings %q, want the StopDirtyLog error", res.stats.Warnings)
	}
}

// The downtime's parts add up to the downtime (up to the gaps between the
// marks), and each is measured.
func TestDowntimeParts(t *testing.T) {
	src := newTestSource(true)
	src.beforeFetch = func(n int) {
		if n == 2 { // the stop-and-copy's fetch (1 is the one after iteration 0)
			time.Sleep(20 * time.Millisecond) // a slow final dirty-log sync
		}
	}
	dst := &fakeDest{}
	res := runMigration(t, src, dst, Options{Downtime: time.Hour}, ReceiveOptions{})
	mustSucceed(t, res)
	p := res.stats.DowntimeParts
	sum := p.PauseMS + p.SyncMS + p.PagesMS + p.StateMS + p.FlushMS + p.ReadyMS + p.CommitMS
	if p.SyncMS < 20 || sum > res.stats.DowntimeMS+0.01 || sum < res.stats.DowntimeMS-1 {
		t.Fatalf("downtime %.3f ms, parts %+v (sum %.3f)", res.stats.DowntimeMS, p, sum)
	}
	t.Logf("downtime %.3f ms: %v", res.stats.DowntimeMS, p)
}
