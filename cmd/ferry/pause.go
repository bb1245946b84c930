package main

var pauseCommand = simpleCommand("pause", "pause a running guest's vCPUs", "POST", "/v1/pause")
