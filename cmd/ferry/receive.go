package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm"
	"github.com/ferryvmm/ferry/vmm/incoming"
)

var receiveCommand = &cli.Command{
	Name:  "receive",
	Usage: "wait for a live migration and run the guest it brings",
	Description: `Listens on --listen for a 'ferry migrate'. A failed, refused or broken
incoming migration is reported and ferry keeps waiting (no guest starts,
nothing stays allocated); one migration is accepted at a time. Once a guest
arrives it runs here exactly as with 'ferry run': console on this terminal,
control socket on --api-socket, exit status 0 when the guest powers off.

A guest that was paused on the source arrives paused: its vCPUs do not
run until 'ferry resume --api-socket PATH' here ('ferry status' says
"paused"). Without --api-socket nothing could resume it, so such a
migration is refused (the guest stays paused on the source).

With --tls-cert, --tls-key and --tls-ca (files from 'ferry certs') only
sources with a certificate from the CA are accepted (mutual TLS 1.3).
Without them ferry receive listens only on loopback addresses, unless
--insecure is given: anyone who can reach the port could send it a guest.

When a migration fails before its last step, ferry receive keeps the
pages it received from that VM for --resume-window (default 10m, 0: keep
nothing), so that 'ferry migrate --resume' from the same source sends
only the pages that differ. A new migration (without --resume) drops
them; so does the end of the window.

--timeout bounds the whole wait: when it expires without a guest running
here, ferry receive exits with status 1.

--disk gives the guest's disks, in the order the source has them: the
same raw image files (storage both hosts see at the same path). Requests
in flight are completed on the source before it pauses. --net gives the
guest's network devices, in the source's order, on this host's taps.`,
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "listen", Usage: "`HOST:PORT` to accept the migration on", Required: true},
		&cli.StringFlag{Name: "api-socket", Usage: "serve the control API (status, pause, resume, migrate, snapshot) on this unix socket `PATH` once the guest is here"},
		&cli.StringFlag{Name: "max-memory", Usage: "largest guest accepted (default: half of this host's memory, at most 64G)"},
		&cli.IntFlag{Name: "max-cpus", Value: vmm.MaxCPUs, Usage: "most vCPUs accepted"},
		&cli.DurationFlag{Name: "timeout", Usage: "give up (exit 1) if no guest runs here after this long (0: wait forever)"},
		&cli.DurationFlag{Name: "idle-timeout", Value: 30 * time.Second, Usage: "drop a connected source that sends nothing for this long"},
		&cli.DurationFlag{Name: "resume-window", Value: 10 * time.Minute, Usage: "keep the pages of a failed migration this long for 'ferry migrate --resume' (0: keep nothing)"},
		&cli.BoolFlag{Name: "insecure", Usage: "allow a non-loopback --listen without TLS (trusted networks only)"},
		&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device node"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print unclaimed I/O ports at exit"},
		memoryHashFlag,
		diskFlag,
		netFlag,
	}, tlsFlags("this host's")...),
	Action: receiveAction,
}

func receiveAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("receive takes no arguments (got %q)", c.Args().First())}
	}
	maxMem, err := guestLimits(c)
	if err != nil {
		return err
	}
	if c.Duration("timeout") < 0 || c.Duration("idle-timeout") <= 0 || c.Duration("resume-window") < 0 {
		return usageError{errors.New("--timeout and --resume-window must not be negative, --idle-timeout must be positive")}
	}
	files, err := tlsFiles(c)
	if err != nil {
		return err
	}
	// The guest's disks (the same image files as on the source: shared
	// storage) and network devices (this host's taps), in the same order.
	disks, nets, err := deviceFlags(c)
	if err != nil {
		return err
	}
	var tlsCfg *tls.Config
	mode := "mutual TLS"
	if files.Enabled() {
		if tlsCfg, err = migrate.ServerTLSConfig(files); err != nil {
			return usageError{err}
		}
	} else if c.Bool("insecure") {
		mode = "no TLS: --insecure"
	} else {
		if err := incoming.LoopbackOnly(c.String("listen")); err != nil {
			return flagError("listen", "%v", err)
		}
		mode = "no TLS, loopback only"
	}
	ln, err := net.Listen("tcp", c.String("listen"))
	if err != nil {
		return flagError("listen", "%v", err)
	}
	defer ln.Close()
	fmt.Fprintf(os.Stderr, "ferry: waiting for a migration on %s (%s; guests up to %d MiB, %d vCPUs)\n",
		ln.Addr(), mode, maxMem>>20, c.Int("max-cpus"))

	ctx := context.Background()
	if d := c.Duration("timeout"); d > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	keep := migrate.NewKeeper(c.Duration("resume-window"), logf)
	cfg := vmm.Config{Console: os.Stdout, KVMPath: c.String("kvm"), Disks: disks, Nets: nets}
	hash := memoryHashLogger(c, "destination before start")
	refusePaused := refusePausedWithout(c.String("api-socket"),
		"this ferry receive has no --api-socket (start it with --api-socket PATH)")
	srv := incoming.NewServer(ln, incoming.Config[*vmm.MigrationDestination]{
		TLS: tlsCfg,
		Receive: migrate.ReceiveOptions{MaxMemory: maxMem, MaxVCPUs: c.Int("max-cpus"), IdleTimeout: c.Duration("idle-timeout"),
			Keep: keep, Sessions: migrate.NewSessions()},
		NewTarget: func() *vmm.MigrationDestination {
			t := vmm.NewMigrationDestination(cfg)
			t.LogMemoryHash = hash
			t.RefusePaused = refusePaused
			return t
		},
		Logf: logf,
	})
	target, err := srv.Serve(ctx)
	defer srv.Close() // after a post-copy, it listens for a recovery until then
	keep.Close()      // a guest runs here, or ferry receive gives up
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no guest arrived within --timeout %v", c.Duration("timeout"))
		}
		return err
	}
	m := target.Machine()
	defer m.Close()
	return serve(c, m)
}

// guestLimits reads --max-memory and --max-cpus, the bounds on a guest
// that arrives from outside (receive, restore).
func guestLimits(c *cli.Context) (uint64, error) {
	maxMem := defaultMaxMemory()
	if s := c.String("max-memory"); s != "" {
		var err error
		if maxMem, err = parseSize(s); err != nil {
			return 0, flagError("max-memory", "%v", err)
		}
	}
	if c.Int("max-cpus") < 1 {
		return 0, flagError("max-cpus", "%d: must be at least 1", c.Int("max-cpus"))
	}
	return maxMem, nil
}

// defaultMaxMemory is half of this host's memory, at most 64 GiB.
func defaultMaxMemory() uint64 {
	const cap64 = 64 << 30
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return cap64
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			if kb, err := strconv.ParseUint(fields[1], 10, 64); err == nil && kb > 0 {
				return min(cap64, kb<<10/2)
			}
		}
	}
	return cap64
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "ferry: "+format+"\n", args...)
}
