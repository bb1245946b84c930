package main

var statusCommand = simpleCommand("status", "print a guest's state as JSON: running, paused, migrating, snapshot or stopped", "GET", "/v1/status")
