package main

var resumeCommand = simpleCommand("resume", "resume a paused guest", "POST", "/v1/resume")
