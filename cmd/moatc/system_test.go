package main

import (
	"os"
	"os/exec"
	"runtime"
	"slices"
	"testing"
)

// TestChildren: the children forked from any thread are listed, not only the main thread's
// (rootless status found containerd only when moatc's kit child had forked it from there).
func TestChildren(t *testing.T) {
	const n = 6
	pids := make(chan int, n)
	release := make(chan struct{})
	defer close(release)
	for range n {
		go func() {
			runtime.LockOSThread() // each fork from its own thread; the thread ends with the test
			cmd := exec.Command("sleep", "60")
			if err := cmd.Start(); err != nil {
				pids <- 0
				return
			}
			pids <- cmd.Process.Pid
			<-release
			cmd.Process.Kill()
			cmd.Wait()
		}()
	}
	var want []int
	for range n {
		p := <-pids
		if p == 0 {
			t.Fatal("starting sleep failed")
		}
		want = append(want, p)
	}
	got := children(os.Getpid())
	for _, p := range want {
		if !slices.Contains(got, p) {
			t.Errorf("children(%d) = %v, missing %d (of %v)", os.Getpid(), got, p, want)
		}
	}
	if c := childNamed(os.Getpid(), "sleep"); !slices.Contains(want, c) {
		t.Errorf("childNamed(sleep) = %d, want one of %v", c, want)
	}
}
