package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm"
)

var restoreCommand = &cli.Command{
	Name:      "restore",
	Usage:     "boot a guest saved by ferry snapshot",
	ArgsUsage: "FILE",
	Description: `Loads a snapshot written by 'ferry snapshot' and runs the guest from where
it was saved, exactly as with 'ferry run': console on this terminal
(Ctrl-A x quits), control socket on --api-socket, exit status 0 when the
guest powers off.

Every record of the file is checked (checksum, page digests, order,
limits) before the guest starts: a corrupted, truncated or foreign file is
refused with the reason and its place in the file, and nothing runs.
The restored VM gets a new VM id (the same file may be restored twice).

A guest that was paused when it was saved (ferry snapshot keeps a paused
guest paused) is restored paused, as a migration brings it: its vCPUs do
not run until 'ferry resume --api-socket PATH', so --api-socket is then
required. --run restores it running at once instead (for instance when
it was paused only to copy its disk image along with the snapshot).

A guest saved with --disk or --net needs the same --disk and --net flags
here. The snapshot does not contain disk contents: restore it with the
disk image as it was when the snapshot was taken (a copy made then).`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "api-socket", Usage: "serve the control API (status, pause, resume, migrate, snapshot) on this unix socket `PATH`"},
		&cli.BoolFlag{Name: "run", Usage: "run the guest at once even if it was saved paused"},
		&cli.StringFlag{Name: "max-memory", Usage: "largest guest accepted (default: half of this host's memory, at most 64G)"},
		&cli.IntFlag{Name: "max-cpus", Value: vmm.MaxCPUs, Usage: "most vCPUs accepted"},
		&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device node"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print unclaimed I/O ports at exit"},
		memoryHashFlag,
		diskFlag,
		netFlag,
	},
	Action: restoreAction,
}

func restoreAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{errors.New("restore takes one argument: the snapshot FILE")}
	}
	file := c.Args().First()
	maxMem, err := guestLimits(c)
	if err != nil {
		return err
	}
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("restore: %w", err)
	}
	defer f.Close()
	if st, err := f.Stat(); err == nil && st.IsDir() {
		return fmt.Errorf("restore: %s is a directory, not a snapshot file", file)
	}
	// Disks and taps as the saved guest had them. A snapshot holds no disk
	// contents: the image must be as it was when the snapshot was taken.
	disks, nets, err := deviceFlags(c)
	if err != nil {
		return err
	}
	target := vmm.NewMigrationDestination(vmm.Config{Console: os.Stdout, KVMPath: c.String("kvm"), Disks: disks, Nets: nets})
	target.NewID = true
	target.Run = c.Bool("run")
	target.RefusePaused = refusePausedWithout(c.String("api-socket"),
		"ferry restore has no --api-socket: give --api-socket PATH (then 'ferry resume'), or --run to run it at once")
	target.LogMemoryHash = memoryHashLogger(c, "restored before start")
	opts := migrate.ReceiveOptions{MaxMemory: maxMem, MaxVCPUs: c.Int("max-cpus")}
	st, err := migrate.ReadSnapshot(context.Background(), bufio.NewReaderSize(f, 1<<20), target, opts)
	if err != nil {
		return fmt.Errorf("restore: snapshot %s refused, nothing was started: %w", file, err)
	}
	m := target.Machine()
	fmt.Fprintf(os.Stderr, "ferry: restored %s: %d MiB, %d vCPUs, %d pages (%d zero), %d KiB of state, read in %.3f s\n",
		file, m.Memory().Size()>>20, m.CPUs(), st.PagesFull+st.PagesZero, st.PagesZero, st.StateBytes>>10, st.Seconds)
	if target.StartsPaused() {
		fmt.Fprintf(os.Stderr, "ferry: the guest was saved paused and stays paused: 'ferry resume --api-socket %s' runs it\n", c.String("api-socket"))
	}
	if err := target.Start(); err != nil {
		target.Discard()
		return fmt.Errorf("restore: start the guest from %s: %w", file, err)
	}
	m = <-target.Started()
	defer m.Close()
	return serve(c, m)
}

// flagsFirst lets 'ferry restore FILE --flag ...' work as documented: the
// CLI library stops parsing flags at the first argument, so the
// arguments of restore are reordered, flags first, then "--" and FILE.
func flagsFirst(args []string) []string {
	if len(args) < 3 || args[1] != restoreCommand.Name {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range restoreCommand.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			takesValue[n] = !isBool
		}
	}
	var flags, rest []string
	for i := 2; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--":
			rest = append(rest, args[i+1:]...)
			i = len(args)
		case len(a) > 1 && a[0] == '-':
			flags = append(flags, a)
			name := strings.TrimLeft(a, "-")
			if !strings.Contains(name, "=") && takesValue[name] && i+1 < len(args) {
				i++
				flags = append(flags, args[i])
			}
		default:
			rest = append(rest, a)
		}
	}
	out := append([]string{args[0], args[1]}, flags...)
	return append(append(out, "--"), rest...)
}
