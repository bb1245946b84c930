package main

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"fmt"
	"runtime"
	"time"
)

// The references measured in the parent, on one core (one goroutine
// locked to its thread): memcpy bandwidth and AES-128-GCM's seal rate.
// The loopback copies over TCP and TLS run as children like the
// migrations (child.go).

// memcpyRate copies a 256 MiB buffer into another, again and again for
// at least d, and returns the bytes copied per second (each byte counted
// once, not read + write).
func memcpyRate(d time.Duration) float64 {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	const size = 256 << 20
	src, dst := make([]byte, size), make([]byte, size)
	for o := 0; o < size; o += pageSize {
		randomPage(src[o:o+pageSize], uint64(o)) // faults src in
	}
	copy(dst, src) // faults dst in
	var n int64
	t0 := time.Now()
	for time.Since(t0) < d || n < 4*size {
		copy(dst, src)
		n += size
	}
	return float64(n) / time.Since(t0).Seconds()
}

// tlsRecord is the plaintext of a full TLS record (2^14 bytes).
const tlsRecord = 16 << 10

// aesGCMRate seals 16 KiB records with AES-128-GCM (crypto/cipher, what
// TLS 1.3's TLS_AES_128_GCM_SHA256 uses) for at least d, and returns the
// plaintext bytes sealed per second.
func aesGCMRate(d time.Duration) (float64, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	block, err := aes.NewCipher(make([]byte, 16))
	if err != nil {
		return 0, fmt.Errorf("AES: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return 0, fmt.Errorf("AES-GCM: %w", err)
	}
	plain := make([]byte, tlsRecord)
	randomPage(plain[:pageSize], 2)
	out := make([]byte, 0, tlsRecord+aead.Overhead())
	nonce := make([]byte, aead.NonceSize())
	var seq uint64
	t0 := time.Now()
	for time.Since(t0) < d || seq*tlsRecord < 64<<20 {
		for range 64 {
			binary.BigEndian.PutUint64(nonce[len(nonce)-8:], seq) // as TLS 1.3 XORs its sequence number in
			out = aead.Seal(out[:0], nonce, plain, nil)
			seq++
		}
	}
	n := seq * tlsRecord
	return float64(n) / time.Since(t0).Seconds(), nil
}
