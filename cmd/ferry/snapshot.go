package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/ferryvmm/ferry/vmm/control"
)

var snapshotCommand = &cli.Command{
	Name:      "snapshot",
	Usage:     "save a running guest to a file (ferry restore boots it again)",
	ArgsUsage: " ",
	Description: `Asks the ferry serving --api-socket to pause its guest, write the whole VM
(memory, vCPUs, devices) to --to, then resume the guest; with --stop the
VM ends once the file is safely written. A guest that was paused stays
paused, and is saved as paused: 'ferry restore' brings it back paused
(see its --run). Pause and resume are refused (409) while the snapshot
is being written.

The file is the record stream of a migration (every record checksummed,
every page with its digest; see migrate/PROTOCOL.md) behind a short
header. It is written to a temporary file next to --to, synced, then
renamed: --to is either the complete snapshot or untouched. It holds the
guest's memory and is readable by its owner only.`,
	Flags: []cli.Flag{
		apiSocketFlag,
		&cli.StringFlag{Name: "to", Usage: "snapshot `FILE` to write (replaced if it exists)", Required: true},
		&cli.BoolFlag{Name: "stop", Usage: "end the VM after saving it instead of resuming the guest"},
	},
	Action: snapshotAction,
}

func snapshotAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usageError{fmt.Errorf("snapshot takes no arguments (got %q); the file goes in --to", c.Args().First())}
	}
	path, err := filepath.Abs(c.String("to"))
	if err != nil {
		return flagError("to", "%v", err)
	}
	body, _ := json.Marshal(control.SnapshotRequest{Path: path, Stop: c.Bool("stop")})
	resp, err := apiCall(c.String("api-socket"), "POST", "/v1/snapshot", bytes.NewReader(body), 0)
	if err != nil {
		return fmt.Errorf("snapshot failed: %w", err)
	}
	defer resp.Body.Close()
	var res control.SnapshotResult
	if err := json.NewDecoder(resp.Body).Decode(&res); err != nil {
		return fmt.Errorf("bad answer from the ferry at --api-socket: %v", err)
	}
	after := fmt.Sprintf(", guest paused %.0f ms; the guest runs on", res.PausedMS)
	switch {
	case res.Paused && res.Stopped:
		after = "; the guest was paused (saved as paused); the VM has ended"
	case res.Paused:
		after = "; the guest was paused and stays paused (saved as paused)"
	case res.Stopped:
		after = "; the VM has ended"
	}
	st := res.Stats
	fmt.Fprintf(c.App.Writer, "saved to %s: %.1f MiB (%d pages, %d of them zero; %d KiB of state) in %v%s\n",
		res.Path, float64(st.Bytes)/(1<<20), st.PagesFull+st.PagesZero, st.PagesZero, st.StateBytes>>10,
		time.Duration(st.Seconds*float64(time.Second)).Round(time.Millisecond), after)
	return nil
}
