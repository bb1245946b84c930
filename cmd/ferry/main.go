// Command ferry runs Linux guests on KVM and live-migrates them: one
// small file per command, on github.com/urfave/cli/v2. The machine is
// package vmm; the running guest is controlled through its control socket
// (vmm/control), which the client commands talk to.
//
//	main.go      main: run the app, exit with its status
//	app.go       the app and its commands; exit statuses, flag errors, sizes, the guest image
//	run.go       ferry run; the flags and serving shared with receive and restore
//	console.go   the serial console on this terminal (Ctrl-A x quits)
//	receive.go   ferry receive (vmm/incoming), and the --max-memory/--max-cpus limits
//	restore.go   ferry restore of a snapshot file
//	migrate.go   ferry migrate: POST /v1/migrate, the iteration lines, the exit status
//	progress.go  ferry migrate's output: the live line of the pass under way, on a terminal only
//	snapshot.go  ferry snapshot: POST /v1/snapshot
//	status.go    ferry status: GET /v1/status
//	pause.go     ferry pause: POST /v1/pause
//	resume.go    ferry resume: POST /v1/resume
//	client.go    the control socket client the commands above share
//	certs.go     ferry certs, and the --tls-* flags of receive and migrate
//	probe.go     ferry probe: the KVM capabilities ferry needs and uses
//	version.go   ferry version
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newApp().Run(flagsFirst(os.Args)); err != nil {
		fmt.Fprintf(os.Stderr, "ferry: %v\n", err)
		os.Exit(exitCode(err))
	}
}
