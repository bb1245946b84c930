// Command ferry runs Linux guests on KVM and live-migrates them.
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
