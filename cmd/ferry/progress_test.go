package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm/control"
)

var (
	livePass  = migrate.PassProgress{Iteration: 0, PagesDone: 250, PagesTotal: 1000, Bytes: 4 << 20, Seconds: 2}
	livePass2 = migrate.PassProgress{Iteration: 0, PagesDone: 500, PagesTotal: 1000, Bytes: 8 << 20, Seconds: 4}
	iteration = migrate.IterationStats{Iteration: 0, PagesDirty: 1000, PagesSent: 1000, Bytes: 4 << 20, Seconds: 2}
)

// On a terminal the live line is drawn in place, each report over the
// last, and erased before an iteration line, which stays whole.
func TestMigrateOutputTerminal(t *testing.T) {
	var b bytes.Buffer
	o := &migrateOutput{w: &b, tty: true}
	o.Live(livePass)
	o.Live(livePass2)
	o.Println(migrate.FormatIteration(iteration))
	o.Println("summary")
	o.Clear() // nothing left to erase
	want := "\r\x1b[K" + livePass.String() + "\r\x1b[K" + livePass2.String() +
		"\r\x1b[K" + migrate.FormatIteration(iteration) + "\n" + "summary\n"
	if got := b.String(); got != want {
		t.Errorf("output %q\nwant   %q", got, want)
	}

	// A live line left when the command ends is erased (an error follows).
	b.Reset()
	o.Live(livePass)
	o.Clear()
	if got, want := b.String(), "\r\x1b[K"+livePass.String()+"\r\x1b[K"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}

	// A narrow terminal: the live line is cut to stay on one row.
	b.Reset()
	o = &migrateOutput{w: &b, tty: true, width: 20}
	o.Live(livePass)
	if got, want := b.String(), "\r\x1b[K"+livePass.String()[:19]; got != want {
		t.Errorf("narrow terminal: %q, want %q", got, want)
	}
}

// Not on a terminal, live reports print nothing: the output is the
// iteration lines as they always were.
func TestMigrateOutputPipe(t *testing.T) {
	var b bytes.Buffer
	o := &migrateOutput{w: &b}
	o.Live(livePass)
	o.Println(migrate.FormatIteration(iteration))
	o.Live(livePass2)
	o.Clear()
	if got, want := b.String(), migrate.FormatIteration(iteration)+"\n"; got != want {
		t.Errorf("output %q, want %q", got, want)
	}
}

// newMigrateOutput finds a terminal: a file or a pipe is none, the slave
// side of a pseudo-terminal is one.
func TestMigrateOutputDetectsTerminal(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	for _, nt := range []*os.File{f, w} {
		if newMigrateOutput(nt).tty {
			t.Errorf("%s taken for a terminal", nt.Name())
		}
	}
	if newMigrateOutput(&bytes.Buffer{}).tty {
		t.Error("a buffer taken for a terminal")
	}

	ptmx, pts, err := openPTY()
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer ptmx.Close()
	defer pts.Close()
	if !newMigrateOutput(pts).tty {
		t.Errorf("%s (a pseudo-terminal) not taken for a terminal", pts.Name())
	}
}

// openPTY opens a new pseudo-terminal: its master and slave sides (the
// slave is a terminal while the master is open).
func openPTY() (ptmx, pts *os.File, err error) {
	ptmx, err = os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, nil, err
	}
	n, err := unix.IoctlGetInt(int(ptmx.Fd()), unix.TIOCGPTN)
	if err == nil {
		err = unix.IoctlSetPointerInt(int(ptmx.Fd()), unix.TIOCSPTLCK, 0)
	}
	if err == nil {
		pts, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	}
	if err != nil {
		ptmx.Close()
		return nil, nil, fmt.Errorf("pseudo-terminal: %w", err)
	}
	return ptmx, pts, nil
}

// fakeSource serves a control socket whose migration answers two Live
// lines, the iteration line, and the statistics.
func fakeSource(t *testing.T) (sock string, stats *migrate.Stats) {
	sock = filepath.Join(t.TempDir(), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	stats = &migrate.Stats{Iterations: []migrate.IterationStats{iteration}, Converged: true}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/migrate" {
			http.NotFound(w, r)
			return
		}
		enc := json.NewEncoder(w)
		for _, ev := range []control.MigrateEvent{{Live: &livePass}, {Live: &livePass2}, {Progress: &iteration}, {Stats: stats}} {
			enc.Encode(ev)
		}
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock, stats
}

// ferry migrate with its output not on a terminal: the source's Live
// lines print nothing, the iteration lines and the summary are as always.
func TestMigrateCommandPipe(t *testing.T) {
	sock, stats := fakeSource(t)
	var out, errOut bytes.Buffer
	app := newApp()
	app.Writer, app.ErrWriter = &out, &errOut
	if err := app.Run([]string{"ferry", "migrate", "--api-socket", sock, "--to", "h:1"}); err != nil {
		t.Fatalf("ferry migrate: %v", err)
	}
	want := migrate.FormatIteration(iteration) + "\n" + stats.Summary() + "\n" +
		fmt.Sprintf("downtime: %v\n", stats.DowntimeParts)
	if out.String() != want {
		t.Errorf("output %q\nwant   %q", out.String(), want)
	}
	if strings.Contains(out.String()+errOut.String(), "pages (") {
		t.Errorf("a live line on a pipe: %q %q", out.String(), errOut.String())
	}
}

// ferry migrate on a terminal: the live line, then the iteration line in
// its place, whole, then the summary.
func TestMigrateCommandTerminal(t *testing.T) {
	sock, stats := fakeSource(t)
	ptmx, pts, err := openPTY()
	if err != nil {
		t.Skipf("no pseudo-terminal here: %v", err)
	}
	defer ptmx.Close()
	screen := make(chan string)
	go func() {
		b, _ := io.ReadAll(ptmx) // until the slave side is closed (EIO)
		screen <- string(b)
	}()
	app := newApp()
	app.Writer = pts
	err = app.Run([]string{"ferry", "migrate", "--api-socket", sock, "--to", "h:1"})
	pts.Close()
	if err != nil {
		t.Fatalf("ferry migrate: %v", err)
	}
	got := strings.ReplaceAll(<-screen, "\r\n", "\n") // the terminal's ONLCR
	want := "\r\x1b[K" + livePass.String() + "\r\x1b[K" + livePass2.String() + "\r\x1b[K" +
		migrate.FormatIteration(iteration) + "\n" + stats.Summary() + "\n" + fmt.Sprintf("downtime: %v\n", stats.DowntimeParts)
	if got != want {
		t.Errorf("screen %q\nwant   %q", got, want)
	}
}
