// Command moatc-pause is the only process of a warm pool's idle gVisor sandbox (see the pool
// package): it waits, doing nothing, until it is told to end. `moatc-pause hostname NAME`,
// run in the sandbox when a run takes it, sets the sandbox's hostname (the UTS namespace
// every container in the sandbox shares) to the run's. It is static and uses only the
// standard library: the sandbox's root holds nothing else.
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) == 3 && os.Args[1] == "hostname" {
		if err := syscall.Sethostname([]byte(os.Args[2])); err != nil {
			fmt.Fprintf(os.Stderr, "moatc-pause: setting the hostname: %v\n", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: moatc-pause [hostname NAME]")
		os.Exit(2)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	<-sig
}
