package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"time"
)

// QMP, QEMU's control protocol on a unix socket: the connection and the
// parts of query-migrate the benchmark reads.

type qmpConn struct {
	c net.Conn
	r *bufio.Reader
}

func dialQMP(path string, d time.Duration) (*qmpConn, error) {
	deadline := time.Now().Add(d)
	var c net.Conn
	var err error
	for {
		if c, err = net.Dial("unix", path); err == nil {
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("QMP %s: %v", path, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	q := &qmpConn{c: c, r: bufio.NewReader(c)}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := q.r.ReadBytes('\n'); err != nil { // greeting
		c.Close()
		return nil, fmt.Errorf("QMP greeting: %v", err)
	}
	if _, err := q.cmd("qmp_capabilities", nil); err != nil {
		c.Close()
		return nil, err
	}
	return q, nil
}

// cmd runs one QMP command and returns its "return" value (events are skipped).
func (q *qmpConn) cmd(name string, args any) (json.RawMessage, error) {
	q.c.SetDeadline(time.Now().Add(10 * time.Second))
	req := map[string]any{"execute": name}
	if args != nil {
		req["arguments"] = args
	}
	data, _ := json.Marshal(req)
	if _, err := q.c.Write(append(data, '\n')); err != nil {
		return nil, fmt.Errorf("QMP %s: %v", name, err)
	}
	for {
		l, err := q.r.ReadBytes('\n')
		if err != nil {
			return nil, fmt.Errorf("QMP %s: %v", name, err)
		}
		var resp struct {
			Return json.RawMessage `json:"return"`
			Error  *struct {
				Class string `json:"class"`
				Desc  string `json:"desc"`
			} `json:"error"`
			Event string `json:"event"`
		}
		if err := json.Unmarshal(l, &resp); err != nil {
			return nil, fmt.Errorf("QMP %s: %v: %s", name, err, l)
		}
		switch {
		case resp.Event != "":
			continue
		case resp.Error != nil:
			return nil, fmt.Errorf("QMP %s: %s: %s", name, resp.Error.Class, resp.Error.Desc)
		}
		return resp.Return, nil
	}
}

func (q *qmpConn) close() { q.c.Close() }

// migInfo is the part of query-migrate the benchmark uses.
type migInfo struct {
	Status    string `json:"status"`
	TotalTime int64  `json:"total-time"`
	Downtime  *int64 `json:"downtime"`
	SetupTime int64  `json:"setup-time"`
	ErrorDesc string `json:"error-desc"`
	// CPUThrottle: auto-converge's current throttle, percent.
	CPUThrottle int     `json:"cpu-throttle-percentage"`
	RAM         *migRAM `json:"ram"`
	XBZRLE      *struct {
		CacheSize     int64   `json:"cache-size"`
		Bytes         int64   `json:"bytes"`
		Pages         int64   `json:"pages"`
		CacheMiss     int64   `json:"cache-miss"`
		CacheMissRate float64 `json:"cache-miss-rate"`
		EncodingRate  float64 `json:"encoding-rate"`
		Overflow      int64   `json:"overflow"`
	} `json:"xbzrle-cache"`
}

// migRAM is query-migrate's "ram".
type migRAM struct {
	Transferred    int64   `json:"transferred"`
	Remaining      int64   `json:"remaining"`
	Total          int64   `json:"total"`
	Duplicate      int64   `json:"duplicate"`
	Normal         int64   `json:"normal"`
	NormalBytes    int64   `json:"normal-bytes"`
	DirtySyncCount int64   `json:"dirty-sync-count"`
	Mbps           float64 `json:"mbps"`
	DirtyPagesRate int64   `json:"dirty-pages-rate"`
	MultifdBytes   int64   `json:"multifd-bytes"`
	// Post-copy: page requests from the destination, bytes sent
	// after the switch.
	PostcopyRequests int64 `json:"postcopy-requests"`
	PostcopyBytes    int64 `json:"postcopy-bytes"`
}

type migSample struct {
	t          time.Time
	secs       float64 // since the migrate command
	sync       int64
	normal     int64
	duplicate  int64
	xbzrle     int64
	transfered int64
	tx         int64 // the source veth's tx bytes, -1 if unknown
}
