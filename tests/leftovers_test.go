package tests

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

type procInfo struct {
	pid     int
	cmdline string
}

func (p procInfo) String() string { return fmt.Sprintf("process %d: %s", p.pid, p.cmdline) }

// processesWithEnv lists the live processes (this one aside) whose
// environment holds entry ("NAME=value"): what a command started with it
// in its environment left running, whatever became of its parents.
func processesWithEnv(entry string) []procInfo {
	dirs, _ := os.ReadDir("/proc")
	var ps []procInfo
	for _, d := range dirs {
		pid, err := strconv.Atoi(d.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		env, err := os.ReadFile(filepath.Join("/proc", d.Name(), "environ"))
		if err != nil || !hasEntry(env, entry) {
			continue // gone, a zombie (empty environment), or not ours to read
		}
		cmdline, _ := os.ReadFile(filepath.Join("/proc", d.Name(), "cmdline"))
		ps = append(ps, procInfo{pid, strings.TrimSpace(string(bytes.ReplaceAll(cmdline, []byte{0}, []byte{' '})))})
	}
	return ps
}

func hasEntry(environ []byte, entry string) bool {
	for _, e := range bytes.Split(environ, []byte{0}) {
		if string(e) == entry {
			return true
		}
	}
	return false
}

// netnsExists reports whether network namespace ns is listed by ip netns.
func netnsExists(ns string) bool {
	out, _ := exec.Command("ip", "netns", "list").Output()
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == ns {
			return true
		}
	}
	return false
}

// linkExists reports whether interface name exists in this namespace.
func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}
