package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/ferryvmm/ferry/migrate"
)

// migrateOutput prints what ferry migrate shows: the iteration lines and
// the summary, and, on a terminal only, one live line saying where the
// pass under way stands, redrawn in place and erased before the next line
// is printed, so that the iteration lines stay intact. Not on a terminal
// (a pipe, a file), live lines are not printed at all.
type migrateOutput struct {
	w     io.Writer
	tty   bool // w is a terminal
	width int  // its columns (0: unknown); a longer live line is cut to stay on one row
	shown bool // a live line is on the screen
}

// eraseLine takes the cursor back to the start of the row and erases it.
const eraseLine = "\r\x1b[K"

// newMigrateOutput prints to w, with a live line if w is a terminal.
func newMigrateOutput(w io.Writer) *migrateOutput {
	o := &migrateOutput{w: w}
	if f, ok := w.(*os.File); ok {
		o.tty, o.width = terminal(int(f.Fd()))
	}
	return o
}

// terminal reports whether fd is a terminal, and its width when known.
func terminal(fd int) (tty bool, width int) {
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
		return false, 0
	}
	if ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ); err == nil {
		width = int(ws.Col)
	}
	return true, width
}

// Live shows p on the live line (on a terminal; otherwise nothing).
func (o *migrateOutput) Live(p migrate.PassProgress) {
	if !o.tty {
		return
	}
	line := p.String() // ASCII
	if o.width > 1 && len(line) >= o.width {
		line = line[:o.width-1]
	}
	fmt.Fprint(o.w, eraseLine+line)
	o.shown = true
}

// Println prints one line, in place of the live line if one is shown.
func (o *migrateOutput) Println(line string) {
	o.Clear()
	fmt.Fprintln(o.w, line)
}

// Clear erases the live line if one is shown.
func (o *migrateOutput) Clear() {
	if o.shown {
		fmt.Fprint(o.w, eraseLine)
		o.shown = false
	}
}
