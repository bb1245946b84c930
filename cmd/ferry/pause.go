package main

var pauseCommand = simpleCommand("pause", "pause a running guest's vCPUs (refused while a migration or snapshot runs)", "POST", "/v1/pause")
