package migrate

import (
	"errors"
	"net"
	"strings"
	"testing"
	"time"
)

// pausedSource is the test source with its guest paused by the user.
func pausedSource() *fakeSource {
	src := newTestSource(true)
	src.paused = true
	return src
}

// A paused source is sent in one pass: a single iteration, the final one,
// with every page exactly once; no dirty logging, and the guest is never
// paused or resumed. The bandwidth cap (for a running guest's traffic)
// does not hold it back.
func TestPausedSourceOnePass(t *testing.T) {
	for _, manual := range []bool{true, false} {
		src := pausedSource()
		src.manual = manual
		dst := &fakeDest{}
		opts := Options{SourcePaused: true, MaxBandwidth: 64 << 10} // 5 s for 320 pages if it applied
		start := time.Now()
		res := runMigration(t, src, dst, opts, ReceiveOptions{})
		mustSucceed(t, res)
		sameMemory(t, src, dst)
		if el := time.Since(start); el > 3*time.Second {
			t.Errorf("manual=%v: took %v: the bandwidth cap held back a paused guest", manual, el)
		}
		starts := 0
		for _, rt := range res.wire.types {
			if rt == RecIterationStart {
				starts++
			}
		}
		if starts != 1 || len(res.stats.Iterations) != 1 || !res.stats.Iterations[0].StopAndCopy || !res.stats.Converged {
			t.Fatalf("manual=%v: %d ITERATION-START records, iterations %+v; want one stop-and-copy pass", manual, starts, res.stats.Iterations)
		}
		it := res.stats.Iterations[0]
		if it.PagesDirty != r0Pages+r1Pages || it.PagesSent+it.PagesZero != r0Pages+r1Pages {
			t.Errorf("manual=%v: the pass saw %d pages and sent %d + %d zero, want all %d", manual, it.PagesDirty, it.PagesSent, it.PagesZero, r0Pages+r1Pages)
		}
		for g := uint64(0); g < r0Pages+r1Pages; g++ {
			if n := res.wire.full[g] + res.wire.zero[g]; n != 1 {
				t.Fatalf("manual=%v: page %d sent %d times, want once", manual, g, n)
			}
		}
		if src.pauses != 0 || src.resumes != 0 || !src.paused {
			t.Errorf("manual=%v: the source was paused %d and resumed %d times (paused now: %v); want neither", manual, src.pauses, src.resumes, src.paused)
		}
		if src.starts != 0 || src.fetches != 0 || src.clears != 0 {
			t.Errorf("manual=%v: dirty log started %d times, fetched %d, cleared %d; a paused guest needs none", manual, src.starts, src.fetches, src.clears)
		}
		if !dst.started {
			t.Error("the destination did not start the guest")
		}
	}
}

// Whatever ends a migration of a paused source — before COMMIT, on an
// ERROR answering COMMIT (the destination discarded its copy), on an
// unknown outcome — the source guest is never resumed (nor paused again).
func TestPausedSourceFailureStaysPaused(t *testing.T) {
	cases := []struct {
		name    string
		dst     *fakeDest
		decide  func(bool, RecordType) proxyAction
		stateEr error
		want    string
	}{
		{"prepare refused", &fakeDest{prepareErr: errors.New("no room here")}, nil, nil, "no room here"},
		{"cut in the pages", &fakeDest{}, at(true, RecPages, cutHere), nil, ""},
		{"state fails", &fakeDest{}, nil, errors.New("vCPU state"), "vCPU state"},
		{"restore refused", &fakeDest{restoreErr: errors.New("bad state")}, nil, nil, "bad state"},
		{"start fails after COMMIT", &fakeDest{startErr: errors.New("KVM_RUN failed")}, nil, nil, "did not start the guest after COMMIT"},
		{"DONE-ACK lost", &fakeDest{}, at(false, RecDoneAck, cutHere), nil, "outcome unknown"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			src := pausedSource()
			src.stateErr = c.stateEr
			opts := Options{SourcePaused: true, AckTimeout: 2 * time.Second}
			var link func(b net.Conn) net.Conn
			if c.decide != nil {
				link = func(b net.Conn) net.Conn {
					p2, r := net.Pipe()
					relayProxy(b, p2, c.decide)
					return r
				}
			}
			res := runFull(t, src, c.dst, opts, ReceiveOptions{IdleTimeout: 2 * time.Second}, link, nil)
			if res.sendErr == nil || !strings.Contains(res.sendErr.Error(), c.want) {
				t.Fatalf("sender error %v, want one mentioning %q", res.sendErr, c.want)
			}
			if src.pauses != 0 || src.resumes != 0 || !src.paused {
				t.Errorf("the source was paused %d and resumed %d times (paused now: %v); a paused guest must stay paused",
					src.pauses, src.resumes, src.paused)
			}
		})
	}
}

// A cut migration of a paused source resumes as any other: the one pass
// skips the pages the destination kept, and the guest stays paused
// throughout.
func TestPausedSourceResume(t *testing.T) {
	src := resumeSource(4)
	src.paused = true
	keep := NewKeeper(time.Minute, nil)
	defer keep.Close()
	opts := resumeOpts
	opts.SourcePaused = true
	kd := newKeptDest()
	res := migrateVia(t, src, kd, opts, ReceiveOptions{Keep: keep}, cutAtPages(3)) // 32 pages arrive
	if res.sendErr == nil || kd.suspends != 1 || !strings.HasPrefix(keep.Holding(), "32 of 320 pages") {
		t.Fatalf("the cut: send %v, suspended %d, keeper holds %q", res.sendErr, kd.suspends, keep.Holding())
	}
	opts.Resume = true
	res = migrateVia(t, src, newKeptDest(), opts, ReceiveOptions{Keep: keep}, nil)
	mustSucceed(t, res)
	sameMemory(t, src, kd.fakeDest)
	if its := res.stats.Iterations; len(its) != 1 || !its[0].StopAndCopy || its[0].PagesReused != 32 ||
		its[0].PagesSent+its[0].PagesZero != r0Pages+r1Pages-32 {
		t.Fatalf("iterations %+v: want one pass that skips the 32 held pages", its)
	}
	for p := range uint64(32) {
		if n := res.wire.full[p] + res.wire.zero[p]; n != 0 {
			t.Fatalf("held page %d was sent %d times", p, n)
		}
	}
	if src.pauses != 0 || src.resumes != 0 || !src.paused {
		t.Errorf("the source was paused %d and resumed %d times (paused now: %v)", src.pauses, src.resumes, src.paused)
	}
}
