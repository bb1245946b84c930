package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/migrate"
	"github.com/ferryvmm/ferry/vmm/control"
)

var migrateCommand = &cli.Command{
	Name:  "migrate",
	Usage: "live-migrate a guest to a `ferry receive` on another host",
	Description: `Asks the ferry serving --api-socket to move its guest to the 'ferry
receive' listening at --to, with pre-copy live migration. Prints one line
per iteration; exits 0 once the guest is on the destination. On a
terminal, one live line shows where the pass under way stands (pages done
of total, MiB/s, time to the end of the pass), replaced by the iteration
line when the pass ends; on a pipe or file there is no live line.

A guest paused with 'ferry pause' can be migrated too: it cannot change
its memory, so every page is sent in one pass, with no pre-copy and no
--max-bandwidth cap. It is never resumed here, even if the migration
fails, and it arrives paused: it runs only after 'ferry resume' on the
destination's --api-socket (a destination without one refuses it).
Pause and resume are refused (409) while a migration runs.

With --tls-cert, --tls-key and --tls-ca (files from 'ferry certs') the
connection is mutual TLS 1.3: the destination's certificate must come from
the CA and name the host of --to. The paths are passed to the source ferry.

With --resume, a migration that was cut goes on where it stopped: the
destination ('ferry receive', still waiting) keeps what it received from
this VM for its --resume-window, tells this side which pages it holds
(with their digests), and only the pages whose content differs are sent
again. A destination that keeps nothing for this VM refuses; then migrate
without --resume.

A guest that rewrites memory faster than the link carries it away does
not converge. Then, by default, its vCPUs are slowed down step by step
(auto-converge; --no-auto-converge turns it off). With --postcopy (or
--postcopy-after N|DURATION) the migration instead switches to
post-copy: the guest runs on the destination at once and the pages it
lacks follow, those it touches first. If the link breaks after the
switch, nothing is lost: exit status 4, the guest runs there and waits
for its pages, this host keeps them ('ferry status': handed-over); run
the same command with --resume to finish. If the DESTINATION DIES during
post-copy, THE GUEST IS LOST: part of its memory was only here, its
newest state only there.

Exit status: 0 migrated; 1 failed, the guest stays on this host as it was
(running, or paused if it was paused);
3 outcome unknown: the connection broke after COMMIT (the last step), so the
guest may be running on the destination; it stays paused here. Check the
destination, then 'ferry resume' here only if the guest does not run there;
4 post-copy interrupted: the guest runs on the destination and waits for
pages this host keeps; finish with the same command and --resume.`,
	Flags: append([]cli.Flag{
		apiSocketFlag,
		&cli.StringFlag{Name: "to", Usage: "destination `HOST:PORT` (a ferry receive --listen)", Required: true},
		&cli.DurationFlag{Name: "downtime", Value: 300 * time.Millisecond, Usage: "stop-and-copy budget"},
		&cli.IntFlag{Name: "max-iterations", Value: 30, Usage: "pre-copy iterations before --on-timeout applies"},
		&cli.DurationFlag{Name: "timeout", Usage: "pre-copy time before --on-timeout applies (0: none)"},
		&cli.StringFlag{Name: "on-timeout", Value: "abort", Usage: "at a limit without convergence: abort (guest stays) or force (stop-and-copy anyway)"},
		&cli.StringFlag{Name: "max-bandwidth", Usage: "cap, e.g. 32MiB/s (default unlimited)"},
		&cli.BoolFlag{Name: "no-digest", Usage: "plain pre-copy: resend every dirty page (for comparison)"},
		&cli.BoolFlag{Name: "no-clear-before-send", Usage: "clear the dirty log right after fetching it, as classic pre-copy (for comparison)"},
		&cli.BoolFlag{Name: "postcopy", Usage: "switch to post-copy right after the first pass if pre-copy has not converged by then (see --postcopy-after)"},
		&cli.StringFlag{Name: "postcopy-after", Usage: "switch to post-copy after `N` iterations, or a DURATION (e.g. 5s), if pre-copy has not converged by then; the guest then runs on the destination while the pages it lacks follow. If the link breaks, finish with --resume; if the destination dies, the guest is lost"},
		&cli.BoolFlag{Name: "no-auto-converge", Usage: "never slow the guest's vCPUs down when pre-copy does not converge (by default: 20%, then 10% more per iteration that still does not, at most 99%)"},
		&cli.BoolFlag{Name: "no-delta", Usage: "send every changed page whole, not only its changed 512-byte blocks (for comparison)"},
		&cli.StringFlag{Name: "compress", Value: "auto", Usage: "compress page records with zstd: auto (while it pays at the measured link rate), off, or zstd (always)"},
		&cli.StringFlag{Name: "stats-json", Usage: "write the migration statistics to `FILE`"},
		&cli.BoolFlag{Name: "resume", Usage: "resume a cut migration into the pages the destination kept (sends only the pages that differ)"},
		&cli.IntFlag{Name: "connections", Value: migrate.DefaultConnections(), Usage: "connections that carry the pages in parallel, 1 to 64, each a TCP (or TLS) connection to --to, each with a goroutine that hashes, filters and writes its share (the default is half this host's cores, 1 to 4)"},
	}, tlsFlags("this host's")...),
	Action: migrateAction,
}

// optionFlags names each migrate.Options field by its flag.
var optionFlags = map[string]string{
	"Downtime":                "downtime",
	"MaxIterations":           "max-iterations",
	"Timeout":                 "timeout",
	"OnTimeout":               "on-timeout",
	"MaxBandwidth":            "max-bandwidth",
	"NoDigest":                "no-digest",
	"NoClearBeforeSend":       "no-clear-before-send",
	"NoDelta":                 "no-delta",
	"NoAutoConverge":          "no-auto-converge",
	"PostcopyAfter":           "postcopy-after",
	"PostcopyAfterIterations": "postcopy-after",
	"Compress":                "compress",
	"Resume":                  "resume",
	"Connections":             "connections",
}

func migrateAction(c *cli.Context) error {
	req := control.MigrateRequest{
		To:                c.String("to"),
		DowntimeMS:        int(c.Duration("downtime") / time.Millisecond),
		MaxIterations:     c.Int("max-iterations"),
		TimeoutSeconds:    c.Duration("timeout").Seconds(),
		OnTimeout:         c.String("on-timeout"),
		NoDigest:          c.Bool("no-digest"),
		NoClearBeforeSend: c.Bool("no-clear-before-send"),
		NoDelta:           c.Bool("no-delta"),
		NoAutoConverge:    c.Bool("no-auto-converge"),
		Compress:          c.String("compress"),
		Resume:            c.Bool("resume"),
		Connections:       c.Int("connections"),
	}
	// A flag given as 0 would mean "the default" to migrate.Options: the
	// flags show their defaults, so 0 is refused here instead.
	if req.DowntimeMS <= 0 {
		return flagError("downtime", "%v: must be positive", c.Duration("downtime"))
	}
	if c.Int("connections") < 1 {
		return flagError("connections", "%d: must be at least 1", c.Int("connections"))
	}
	if c.Int("max-iterations") < 1 {
		return flagError("max-iterations", "%d: must be at least 1", c.Int("max-iterations"))
	}
	if s := c.String("max-bandwidth"); s != "" {
		bw, err := parseSize(strings.TrimSuffix(strings.TrimSpace(s), "/s"))
		if err != nil {
			return flagError("max-bandwidth", "%v", err)
		}
		req.MaxBandwidth = int64(bw)
	}
	if err := postcopyFlags(c, &req); err != nil {
		return err
	}
	// Everything else is checked where the options are defined.
	if _, err := req.MigrateOptions(); err != nil {
		if oe := (*migrate.OptionError)(nil); errors.As(err, &oe) {
			return flagError(optionFlags[oe.Option], "%v", oe.Err)
		}
		return usageError{err}
	}
	files, err := tlsFiles(c)
	if err != nil {
		return err
	}
	req.TLS = files
	body, _ := json.Marshal(req)
	resp, err := apiCall(c.String("api-socket"), "POST", "/v1/migrate", bytes.NewReader(body), 0)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out := newMigrateOutput(c.App.Writer)
	defer out.Clear() // before an error is printed
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev control.MigrateEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("bad answer from the source ferry: %v", err)
		}
		switch {
		case ev.Live != nil:
			out.Live(*ev.Live)
		case ev.Progress != nil:
			out.Println(migrate.FormatIteration(*ev.Progress))
		case ev.Error != "" && ev.Outcome == control.OutcomeUnknown:
			return guestExitError{err: fmt.Errorf("migration outcome unknown: %s", ev.Error), code: exitOutcomeUnknown}
		case ev.Error != "" && ev.Outcome == control.OutcomePostcopyInterrupted:
			return guestExitError{err: fmt.Errorf("%s; finish it with the same command and --resume", ev.Error), code: exitPostcopyInterrupted}
		case ev.Error != "":
			return fmt.Errorf("migration failed: %s", ev.Error)
		case ev.Stats != nil:
			out.Println(ev.Stats.Summary())
			out.Println(fmt.Sprintf("downtime: %v", ev.Stats.DowntimeParts))
			for _, warn := range ev.Stats.Warnings {
				fmt.Fprintf(c.App.ErrWriter, "warning: %s\n", warn)
			}
			if f := c.String("stats-json"); f != "" {
				b, _ := json.MarshalIndent(ev.Stats, "", "  ")
				if err := os.WriteFile(f, append(b, '\n'), 0o644); err != nil {
					return fmt.Errorf("--stats-json: %w (the migration itself succeeded)", err)
				}
			}
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("lost the source ferry during the migration: %w", err)
	}
	return fmt.Errorf("the source ferry ended the migration without a result")
}

// exitOutcomeUnknown is ferry migrate's exit status when the source sent
// COMMIT but got no answer: the guest is paused here and may run there.
const exitOutcomeUnknown = 3

// exitPostcopyInterrupted is ferry migrate's exit status when the link
// broke after a post-copy switch: the guest runs on the destination and
// the source keeps the pages it lacks until `ferry migrate --resume`.
const exitPostcopyInterrupted = 4

// postcopyFlags reads --postcopy and --postcopy-after (N iterations, or a
// duration) into the request.
func postcopyFlags(c *cli.Context, req *control.MigrateRequest) error {
	if c.Bool("postcopy") {
		if c.IsSet("postcopy-after") {
			return usageError{errors.New("--postcopy and --postcopy-after: give one")}
		}
		req.PostcopyAfterIterations = 1
		return nil
	}
	v := c.String("postcopy-after")
	if v == "" {
		return nil
	}
	if n, err := strconv.Atoi(v); err == nil {
		if n < 1 {
			return flagError("postcopy-after", "%d: want at least 1 iteration, or a duration", n)
		}
		req.PostcopyAfterIterations = n
		return nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return flagError("postcopy-after", "%q: want a number of iterations (e.g. 3) or a duration (e.g. 5s)", v)
	}
	req.PostcopyAfterSeconds = d.Seconds()
	return nil
}
