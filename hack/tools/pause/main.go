// pause holds a pod's namespaces open until the runtime stops it, as registry.k8s.io/pause
// does: it sleeps, reaps orphans (it may be PID 1 of a shared PID namespace) and exits on
// SIGINT or SIGTERM. Static, standard library only, so the image is this one file.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
