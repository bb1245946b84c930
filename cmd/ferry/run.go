package main

import (
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/vmm"
	"github.com/ferryvmm/ferry/vmm/control"
)

var runCommand = &cli.Command{
	Name:      "run",
	Usage:     "boot a Linux guest with a serial console",
	ArgsUsage: " ",
	Description: `Boots a kernel (an uncompressed vmlinux with a PVH entry, or a bzImage)
with an optional initramfs. The guest's serial console is this terminal;
Ctrl-A x quits. ferry exits 0 when the guest powers off or reboots, and
non-zero when the guest cannot continue.

Without --kernel/--initrd, ferry boots the image that 'make guest' built
(guest-images/out, or $FERRY_GUEST_DIR). --cmdline adds to ferry's default
kernel parameters (see --no-default-cmdline).`,
	Flags: []cli.Flag{
		&cli.StringFlag{Name: "kernel", Usage: "kernel image: vmlinux (PVH) or bzImage (default: the built guest image)"},
		&cli.StringFlag{Name: "initrd", Usage: "initramfs (default: the built guest image's)"},
		&cli.StringFlag{Name: "cmdline", Usage: "kernel parameters added to ferry's defaults, e.g. \"ferry.run=shell\""},
		&cli.BoolFlag{Name: "no-default-cmdline", Usage: "pass only --cmdline to the kernel"},
		&cli.StringFlag{Name: "memory", Aliases: []string{"m"}, Value: "128M", Usage: "guest RAM, e.g. 128M or 1G"},
		&cli.IntFlag{Name: "cpus", Value: 1, Usage: "number of vCPUs"},
		&cli.StringFlag{Name: "kvm", Value: "/dev/kvm", Usage: "KVM device node"},
		&cli.StringFlag{Name: "api-socket", Usage: "serve the control API (status, pause, resume, migrate, snapshot) on this unix socket `PATH`"},
		&cli.BoolFlag{Name: "verbose", Aliases: []string{"v"}, Usage: "print boot details and unclaimed I/O ports"},
		memoryHashFlag,
		diskFlag,
		netFlag,
	},
	Action: runAction,
}

// machineFlags validates the flags shared by run and receive.
func machineFlags(c *cli.Context) (vmm.Config, error) {
	mem, err := parseSize(c.String("memory"))
	if err != nil {
		return vmm.Config{}, flagError("memory", "%v", err)
	}
	if err := vmm.CheckMemory(mem); err != nil {
		return vmm.Config{}, flagError("memory", "%s: %v", c.String("memory"), err)
	}
	if err := vmm.CheckCPUs(c.Int("cpus")); err != nil {
		return vmm.Config{}, flagError("cpus", "%d: %v", c.Int("cpus"), err)
	}
	disks, nets, err := deviceFlags(c)
	if err != nil {
		return vmm.Config{}, err
	}
	return vmm.Config{Memory: mem, CPUs: c.Int("cpus"), Console: os.Stdout, KVMPath: c.String("kvm"), Disks: disks, Nets: nets}, nil
}

// deviceFlags parses the --disk and --net flags.
func deviceFlags(c *cli.Context) ([]vmm.DiskConfig, []vmm.NetConfig, error) {
	var disks []vmm.DiskConfig
	for _, v := range c.StringSlice("disk") {
		d, err := vmm.ParseDisk(v)
		if err != nil {
			return nil, nil, flagError("disk", "%v", err)
		}
		disks = append(disks, d)
	}
	var nets []vmm.NetConfig
	for i, v := range c.StringSlice("net") {
		n, err := vmm.ParseNet(v, i)
		if err != nil {
			return nil, nil, flagError("net", "%v", err)
		}
		nets = append(nets, n)
	}
	return disks, nets, nil
}

// diskFlag attaches virtio-blk disks (run and receive: a migrated guest's
// disks must be the same files on both hosts).
var diskFlag = &cli.StringSliceFlag{Name: "disk", Usage: "virtio-blk disk: a raw image `PATH[,readonly]` (repeatable; /dev/vda, /dev/vdb, ... in the guest)"}

// netFlag attaches virtio-net devices on tap interfaces (on a migration's
// destination: that host's taps).
var netFlag = &cli.StringSliceFlag{Name: "net", Usage: "virtio-net on a tap interface: `tap=NAME[,mac=MAC]` (repeatable; eth0, eth1, ... in the guest)"}

func runAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("run takes no arguments (got %q); kernel parameters go in --cmdline", c.Args().First())}
	}
	cfg, err := machineFlags(c)
	if err != nil {
		return err
	}
	kernel, initrd := c.String("kernel"), c.String("initrd")
	if kernel == "" {
		kernel = filepath.Join(guestImageDir(), "vmlinux")
		if _, err := os.Stat(kernel); err != nil {
			return flagError("kernel", "not given, and no built guest image at %s: run 'make guest' or pass --kernel", kernel)
		}
		if initrd == "" && !c.IsSet("initrd") {
			initrd = filepath.Join(guestImageDir(), "initramfs.cpio")
		}
	}
	if err := checkFile("kernel", kernel); err != nil {
		return err
	}
	if initrd != "" {
		if err := checkFile("initrd", initrd); err != nil {
			return err
		}
	}

	m, err := vmm.New(cfg)
	if err != nil {
		return err
	}
	defer m.Close()
	// The virtio-mmio device parameters go before the user's, which win.
	extra := strings.TrimSpace(m.KernelParams() + " " + c.String("cmdline"))
	cmdline := vmm.Cmdline(m.TSCKHz(), m.Emulated(), extra, c.Bool("no-default-cmdline"))
	bi, err := m.Boot(kernel, initrd, cmdline)
	if err != nil {
		return err
	}
	if c.Bool("verbose") {
		fmt.Fprintf(os.Stderr, "ferry: %s kernel, entry %#x, %d MiB, %d vCPUs, TSC %d kHz\nferry: cmdline: %s\n",
			bi.Format, bi.Entry, cfg.Memory>>20, cfg.CPUs, m.TSCKHz(), cmdline)
	}
	if err := m.Start(); err != nil {
		return err
	}
	return serve(c, m)
}

// memoryHashFlag makes migrations print a hash of all guest RAM on both
// sides, taken while the guest is stopped: the integration tests compare them.
var memoryHashFlag = &cli.BoolFlag{Name: "memory-hash", Usage: "print a hash of guest RAM when a migration stops the guest (reads all RAM; for tests)"}

func memoryHashLogger(c *cli.Context, side string) func(string) {
	if !c.Bool("memory-hash") {
		return nil
	}
	return func(h string) { fmt.Fprintf(os.Stderr, "ferry: memory hash (%s): %s\n", side, h) }
}

// refusePausedWithout is the reason a guest that arrives paused (from a
// migration or a snapshot) is refused when there is no control socket to
// resume it; "" with one.
func refusePausedWithout(apiSocket, why string) string {
	if apiSocket != "" {
		return ""
	}
	return why
}

// startAPI serves --api-socket if given; the returned stop is never nil.
// Every pause and resume of the machine from now on goes through the
// controller's state machine.
func startAPI(c *cli.Context, m *vmm.Machine) (func(), error) {
	path := c.String("api-socket")
	if path == "" {
		return func() {}, nil
	}
	ctl := control.New(&control.VM{M: m, LogMemoryHash: memoryHashLogger(c, "paused source")})
	s, err := control.Serve(path, ctl)
	if err != nil {
		return nil, err
	}
	return s.Close, nil
}

// serve connects a running machine to the console and the control socket
// until the guest stops, the user quits, or a signal arrives.
func serve(c *cli.Context, m *vmm.Machine) error {
	stopAPI, err := startAPI(c, m)
	if err != nil {
		return err
	}
	defer stopAPI()
	con, err := attachConsole(os.Stdin, m.Serial().Input)
	if err != nil {
		return err
	}
	defer con.detach()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer signal.Stop(sigs)
	var quitBy string
	select {
	case <-m.Done():
	case <-con.quit:
		quitBy = "quit from the console"
	case s := <-sigs:
		quitBy = "signal " + s.String()
	}
	if quitBy != "" {
		m.Stop(quitBy)
	}
	exit := m.Wait()
	con.detach()
	if c.Bool("verbose") {
		if u := m.UnclaimedPorts(); len(u) > 0 {
			fmt.Fprintf(os.Stderr, "ferry: unclaimed I/O ports: %v\n", u)
		}
	}
	if exit.Err != nil {
		return guestExitError{err: exit.Err, code: 1}
	}
	fmt.Fprintf(os.Stderr, "ferry: %s\n", exit.Reason)
	if quitBy != "" && quitBy != "quit from the console" {
		return guestExitError{err: fmt.Errorf("stopped by %s", quitBy), code: 130}
	}
	return nil
}
