package vmm

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// stateSeeds are the checked-in seed corpus of FuzzDecodeState
// (testdata/fuzz/FuzzDecodeState): a valid state and near misses.
func stateSeeds(t *testing.T) map[string][]byte {
	good, err := EncodeState(sampleState())
	if err != nil {
		t.Fatal(err)
	}
	flip := append([]byte(nil), good...)
	flip[len(flip)/2] ^= 0x10
	return map[string][]byte{
		"valid":            good,
		"truncated":        good[:len(good)-10],
		"bit-flip":         flip,
		"resealed-flip":    reseal(append([]byte(nil), flip...)),
		"trailing":         reseal(append(append([]byte(nil), good...), 0)),
		"magic-only":       []byte(stateMagic),
		"header-truncated": good[:stateHdrLen-1],
	}
}

func seedFile(b []byte) []byte { return []byte(fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)) }

// TestFuzzStateSeeds checks that the corpus matches the current format
// (FERRY_WRITE_FUZZ_SEEDS=1 rewrites it).
func TestFuzzStateSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeState")
	write := os.Getenv("FERRY_WRITE_FUZZ_SEEDS") != ""
	for name, b := range stateSeeds(t) {
		p := filepath.Join(dir, name)
		if write {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, seedFile(b), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if got, err := os.ReadFile(p); err != nil || !bytes.Equal(got, seedFile(b)) {
			t.Errorf("%s is missing or stale (%v): rewrite with FERRY_WRITE_FUZZ_SEEDS=1 go test -run TestFuzzStateSeeds ./vmm", p, err)
		}
	}
	if _, err := DecodeState(stateSeeds(t)["valid"]); err != nil {
		t.Fatalf("the valid seed does not decode: %v", err)
	}
}
