package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm"
)

var receiveCommand = &cli.Command{
	Name:  "receive",
	Usage: "wait for a live migration and run the guest it brings",
	Description: `Listens on --listen for one 'ferry migrate'. A failed or refused incoming
migration is reported and ferry keeps waiting. Once a guest arrives it runs
here exactly as with 'ferry run': console on this terminal, control socket
on --api-socket, exit status 0 when the guest powers off.`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "listen", Usage: "`HOST:PORT` to accept the migration on", Required: true},
		&cli.StringFlag{Name: "api-socket", Usage: "serve the control API on this unix socket `PATH` once the guest runs"},
		&cli.StringFlag{Name: "max-memory", Value: "64G", Usage: "largest guest accepted"},
		&cli.IntFlag{Name: "max-cpus", Value: 32, Usage: "most vCPUs accepted"},
		&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device node"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print unclaimed I/O ports at exit"},
		memoryHashFlag,
	},
	Action: receiveAction,
}

func receiveAction(c *cli.Context) error {
	maxMem, err := parseSize(c.String("max-memory"))
	if err != nil {
		return flagError("max-memory", "%v", err)
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return flagError("listen", "%v", err)
	}
	defer ln.Close()
	fmt.Fprintf(os.Stderr, "ferry: waiting for a migration on %s\n", ln.Addr())
	opts := migrate.ReceiveOptions{MaxMemory: maxMem, MaxVCPUs: c.Int("max-cpus")}
	for {
		conn, err := ln.Accept()
		if err != nil {
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		m, err := receiveOne(conn, c.String("kvm"), opts, memoryHashLogger(c, "destination before start"))
		conn.Close()
		if err != nil {
			fmt.Fprintf(os.Stderr, "ferry: incoming migration from %s failed: %v; still waiting\n", conn.RemoteAddr(), err)
			continue
		}
		fmt.Fprintf(os.Stderr, "ferry: guest received from %s and running\n", conn.RemoteAddr())
		ln.Close()
		defer m.Close()
		return serve(c, m)
	}
}

// receiveOne runs the receiving side of one migration and returns the
// running machine.
func receiveOne(conn net.Conn, kvmPath string, opts migrate.ReceiveOptions, logHash func(string)) (*vmm.Machine, error) {
	target := vmm.NewMigrationTarget(vmm.Config{Console: os.Stdout, KVMPath: kvmPath})
	target.LogMemoryHash = logHash
	stats, err := migrate.Receive(context.Background(), conn, target, opts)
	if err != nil {
		target.Discard()
		return nil, err
	}
	select {
	case m := <-target.Started():
		fmt.Fprintf(os.Stderr, "ferry: received %d pages (%d zero), %d KiB of state, %.1f MiB in %.3f s\n",
			stats.PagesFull+stats.PagesZero, stats.PagesZero, stats.StateBytes>>10, float64(stats.BytesTotal)/(1<<20), stats.Seconds)
		return m, nil
	default:
		target.Discard()
		return nil, errors.New("the migration ended without starting the guest")
	}
}
