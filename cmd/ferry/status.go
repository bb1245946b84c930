package main

var statusCommand = simpleCommand("status", "print a running guest's state as JSON", "GET", "/v1/status")
