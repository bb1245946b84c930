package main

var resumeCommand = simpleCommand("resume", "resume a paused guest (also one that arrived paused by migration or restore)", "POST", "/v1/resume")
