// moatc-pod is the one binary of moatc's helper image, what moatc runs inside a cluster
// run's pods (see docs/kubernetes.md). Static: the image holds nothing else.
//
//	moatc-pod init DIR          install itself in DIR/bin, then wait for DIR/ready (the copy in)
//	moatc-pod wait FILE         wait until FILE exists (the sync container's hold)
//	moatc-pod unpack DIR MARK   extract the tar on stdin into DIR, then create MARK
//	moatc-pod pack DIR          write DIR as a tar to stdout
//	moatc-pod mark FILE         create FILE
//	moatc-pod gate MARK -- CMD  wait for MARK (moatc attached to the output), then exec CMD
//	moatc-pod proxy CONFIG      serve the run's proxy (its grants are in CONFIG, a Secret)
package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/moatc/moatc/kube/wsync"
)

func main() {
	if len(os.Args) < 3 {
		fail(2, "usage: moatc-pod init|wait|unpack|pack|mark|gate|proxy ARGS (see docs/kubernetes.md)")
	}
	arg := os.Args[2]
	var err error
	switch os.Args[1] {
	case "init":
		err = install(filepath.Join(arg, "bin"))
		if err == nil {
			err = wait(filepath.Join(arg, "ready"))
		}
		if err == nil {
			// The unpack that made the mark is still exiting: were this container to end now,
			// the runtime would kill it and moatc would read its exec as killed (137).
			waitAlone(10 * time.Second)
		}
	case "wait":
		err = wait(arg)
	case "unpack":
		if len(os.Args) != 4 {
			fail(2, "usage: moatc-pod unpack DIR MARK")
		}
		err = wsync.Unpack(os.Stdin, arg)
		if err == nil {
			err = mark(os.Args[3])
		}
	case "pack":
		err = wsync.Pack(os.Stdout, arg)
	case "mark":
		err = mark(arg)
	case "gate":
		if len(os.Args) < 5 || os.Args[3] != "--" {
			fail(2, "usage: moatc-pod gate MARK -- CMD [ARGS...]")
		}
		err = gate(arg, os.Args[4:])
	case "proxy":
		err = serveProxy(arg)
	default:
		fail(2, "moatc-pod: unknown command "+os.Args[1])
	}
	if err != nil {
		fail(1, "moatc-pod: "+err.Error())
	}
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, msg)
	os.Exit(code)
}

// install copies this binary into dir, where the workload's container runs it as its gate.
func install(dir string) error {
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return err
	}
	defer self.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	tmp := filepath.Join(dir, ".moatc-pod.tmp")
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(f, self); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, "moatc-pod"))
}

// wait polls for file; SIGTERM (the pod deleted) ends it at once.
func wait(file string) error {
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(file); err == nil {
			return nil
		}
		select {
		case <-term:
			return errors.New("stopped while waiting for " + file)
		case <-tick.C:
		}
	}
}

// waitAlone waits, at most limit, until this process is the container's only live one.
func waitAlone(limit time.Duration) {
	self := strconv.Itoa(os.Getpid())
	for deadline := time.Now().Add(limit); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		ents, err := os.ReadDir("/proc")
		if err != nil {
			return
		}
		alone := true
		for _, e := range ents {
			if _, err := strconv.Atoi(e.Name()); err != nil || e.Name() == self {
				continue
			}
			b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
			if err != nil {
				continue // gone meanwhile
			}
			// The state follows the command's closing parenthesis; a zombie holds nothing.
			if i := bytes.LastIndexByte(b, ')'); i >= 0 && i+2 < len(b) && b[i+2] == 'Z' {
				continue
			}
			alone = false
			break
		}
		if alone {
			return
		}
	}
}

func mark(file string) error {
	f, err := os.OpenFile(file, os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	return f.Close()
}

// gate holds the workload until moatc is attached to its output, so none is lost, then
// becomes the workload (the same PID, so signals and the exit code are the workload's own).
func gate(file string, argv []string) error {
	if err := wait(file); err != nil {
		os.Exit(143)
	}
	bin, err := exec.LookPath(argv[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "moatc: %s: executable file not found in $PATH\n", argv[0])
		os.Exit(127)
	}
	err = syscall.Exec(bin, argv, os.Environ())
	fmt.Fprintf(os.Stderr, "moatc: %s: %v\n", argv[0], err)
	os.Exit(126)
	return nil
}
