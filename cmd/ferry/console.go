package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// escapeKey (Ctrl-A) starts a console command: Ctrl-A x quits, Ctrl-A
// Ctrl-A sends one Ctrl-A to the guest.
const escapeKey = 0x01

// console connects the host terminal (or a pipe) to the guest's UART.
type console struct {
	in      *os.File
	saved   *unix.Termios // terminal settings to restore
	quit    chan struct{}
	guestIn func([]byte)
}

// attachConsole starts feeding in to the guest. When in is a terminal it is
// put in raw mode (restored by detach) and Ctrl-A x closes the quit channel.
func attachConsole(in *os.File, guestIn func([]byte)) (*console, error) {
	c := &console{in: in, quit: make(chan struct{}), guestIn: guestIn}
	if t, err := unix.IoctlGetTermios(int(in.Fd()), unix.TCGETS); err == nil {
		saved := *t
		raw := *t
		raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
		raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
		raw.Cflag &^= unix.CSIZE | unix.PARENB
		raw.Cflag |= unix.CS8
		raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
		if err := unix.IoctlSetTermios(int(in.Fd()), unix.TCSETS, &raw); err != nil {
			return nil, fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		c.saved = &saved
		fmt.Fprintf(os.Stderr, "ferry: console attached; Ctrl-A x quits\r\n")
	}
	go c.pump()
	return c, nil
}

func (c *console) pump() {
	buf := make([]byte, 256)
	escaped := false
	for {
		n, err := c.in.Read(buf)
		if n > 0 {
			out := buf[:0:0]
			for _, b := range buf[:n] {
				switch {
				case c.saved == nil:
					out = append(out, b) // a pipe: pass everything through
				case escaped && b == 'x':
					close(c.quit)
					return
				case escaped:
					escaped = false
					out = append(out, b)
				case b == escapeKey:
					escaped = true
				default:
					out = append(out, b)
				}
			}
			if len(out) > 0 {
				c.guestIn(out)
			}
		}
		if err != nil {
			if err != io.EOF {
				fmt.Fprintf(os.Stderr, "ferry: console input: %v\r\n", err)
			}
			return
		}
	}
}

// detach restores the terminal.
func (c *console) detach() {
	if c.saved != nil {
		unix.IoctlSetTermios(int(c.in.Fd()), unix.TCSETS, c.saved)
		c.saved = nil
	}
}
