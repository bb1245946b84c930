package migrate

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// randomFill fills b with xorshift64* output (fast, incompressible enough).
func randomFill(b []byte, seed uint64) {
	x := seed | 1
	for o := 0; o+8 <= len(b); o += 8 {
		x ^= x >> 12
		x ^= x << 25
		x ^= x >> 27
		binary.LittleEndian.PutUint64(b[o:], x*2685821657736338717)
	}
}

var sinkDigest Digest

// BenchmarkDigestHash hashes 64 MiB (more than the caches) page by page and,
// as the baseline, copies the same bytes page by page into a 4 MiB ring the
// way the sender copies pages into its output buffer. Metrics: hash_GB/s,
// memcpy_GB/s and their ratio.
func BenchmarkDigestHash(b *testing.B) {
	buf := make([]byte, 64<<20)
	randomFill(buf, 1)
	ring := make([]byte, 4<<20)
	copy(ring, buf) // fault the ring in
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for range b.N {
		for o := 0; o < len(buf); o += PageSize {
			sinkDigest = HashPage(buf[o : o+PageSize])
		}
	}
	b.StopTimer()
	hashRate := float64(b.N) * float64(len(buf)) / b.Elapsed().Seconds()
	t0 := time.Now()
	for range b.N {
		for o := 0; o < len(buf); o += PageSize {
			r := o % len(ring)
			copy(ring[r:r+PageSize], buf[o:o+PageSize])
		}
	}
	copyRate := float64(b.N) * float64(len(buf)) / time.Since(t0).Seconds()
	b.ReportMetric(hashRate/1e9, "hash_GB/s")
	b.ReportMetric(copyRate/1e9, "memcpy_GB/s")
	b.ReportMetric(hashRate/copyRate, "hash/memcpy")
}

// BenchmarkDigestHashHot hashes one page that stays in L1: the hash alone.
func BenchmarkDigestHashHot(b *testing.B) {
	p := make([]byte, PageSize)
	randomFill(p, 2)
	b.SetBytes(PageSize)
	for range b.N {
		sinkDigest = HashPage(p)
	}
}

// BenchmarkSenderCPU runs iteration 0 of a 256 MiB guest into io.Discard:
// the sender's own cost per byte (zero check, copy, hash, CRC, table).
func BenchmarkSenderCPU(b *testing.B) {
	const size = 256 << 20
	src := idleSource(size)
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		s := &sender{ctx: context.Background(), src: src, opts: mustNormalize(Options{})}
		s.w = newRecordWriter(s.ctx, io.Discard, s.opts.BufferSize, nil)
		s.peer.ch = make(chan peerMsg)
		if err := s.setup(); err != nil {
			b.Fatal(err)
		}
		if err := s.beginIteration(false); err != nil {
			b.Fatal(err)
		}
		if _, err := s.sendAll(false, false); err != nil {
			b.Fatal(err)
		}
		if err := s.endIteration(); err != nil {
			b.Fatal(err)
		}
	}
}

func mustNormalize(o Options) Options {
	o, err := o.normalize()
	if err != nil {
		panic(err)
	}
	return o
}

// idleSource is a guest of size bytes: 9 pages in 10 hold random data, the
// 10th is zero. Nothing writes it during the migration.
func idleSource(size uint64) *fakeSource {
	src := newFakeSource(true, size)
	randomFill(src.mem[0], 3)
	for p := uint64(0); p < size/PageSize; p += 10 {
		clear(src.page(0, p))
	}
	return src
}

// benchDest keeps one pre-faulted memory across runs, so the benchmark
// measures the engine, not the kernel's page-fault path.
type benchDest struct {
	fakeDest
	keep []byte
}

func (d *benchDest) Prepare(info VMInfo) error {
	d.mem = [][]byte{d.keep}
	return nil
}

// BenchmarkMigrateIdle1GiB migrates an idle 1 GiB guest (90% non-zero
// pages) over loopback TCP, receiver included, and measures raw loopback TCP
// (1 GiB, no protocol) in the same run. Metrics: guest_GB/s (guest RAM per
// second of total migration time), raw_tcp_GB/s, and their ratio.
func BenchmarkMigrateIdle1GiB(b *testing.B) {
	const size = 1 << 30
	src := idleSource(size)
	dst := &benchDest{keep: make([]byte, size)}
	for i := 0; i < size; i += PageSize {
		dst.keep[i] = 1 // fault in
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	ctx := context.Background()
	b.SetBytes(size)
	b.ResetTimer()
	for range b.N {
		recvErr := make(chan error, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				recvErr <- err
				return
			}
			_, err = Receive(ctx, c, dst, ReceiveOptions{})
			c.Close()
			recvErr <- err
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		st, err := Send(ctx, src, c, Options{})
		c.Close()
		if rerr := <-recvErr; err != nil || rerr != nil {
			b.Fatalf("send: %v; receive: %v", err, rerr)
		}
		if len(st.Iterations) != 2 || !st.Converged {
			b.Fatalf("idle guest: %d iterations, converged %v", len(st.Iterations), st.Converged)
		}
	}
	b.StopTimer()
	rate := float64(b.N) * size / b.Elapsed().Seconds()
	if !bytes.Equal(src.mem[0], dst.keep) {
		b.Fatal("destination memory differs from the source")
	}
	raw := rawLoopback(b, ln, size)
	b.ReportMetric(rate/1e9, "guest_GB/s")
	b.ReportMetric(raw/1e9, "raw_tcp_GB/s")
	b.ReportMetric(rate/raw, "guest/raw")
}

// rawLoopback sends n bytes over a fresh loopback TCP connection with 4 MiB
// writes and 1 MiB reads, and returns bytes per second.
func rawLoopback(b *testing.B, ln net.Listener, n int64) float64 {
	done := make(chan int64, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- 0
			return
		}
		m, _ := io.CopyBuffer(io.Discard, struct{ io.Reader }{c}, make([]byte, 1<<20))
		c.Close()
		done <- m
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 4<<20)
	randomFill(buf, 4)
	t0 := time.Now()
	for sent := int64(0); sent < n; sent += int64(len(buf)) {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	c.Close()
	got := <-done
	el := time.Since(t0)
	if got != n {
		b.Fatalf("raw loopback moved %d of %d bytes", got, n)
	}
	return float64(n) / el.Seconds()
}
