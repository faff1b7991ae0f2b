package e2e

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// testEngineEvents: `docker events` follows a container's life as it happens (create, start,
// die with its exit code, destroy), replays it with --since/--until, and filters.
func testEngineEvents(t *testing.T, d *dockerCLI) {
	since := time.Now().Add(-time.Second).Format(time.RFC3339Nano)
	follow := exec.Command(d.bin, "events", "--filter", "type=container", "--filter", "container=e2e-events",
		"--format", "{{.Action}} {{.Actor.Attributes.name}} {{index .Actor.Attributes `exitCode`}}")
	follow.Env = append(os.Environ(), d.env...)
	out, err := follow.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := follow.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { follow.Process.Kill(); follow.Wait() }()
	lines := make(chan string, 100)
	go func() {
		s := bufio.NewScanner(out)
		for s.Scan() {
			lines <- s.Text()
		}
		close(lines)
	}()
	time.Sleep(300 * time.Millisecond) // the stream is open before the container's first event
	if r := d.run("", "run", "--name", "e2e-events", "busybox", "sh", "-c", "exit 5"); r.code != 5 {
		t.Fatalf("docker run ... exit 5: %+v", r)
	}
	d.ok("run", "--rm", "busybox", "true") // another container: filtered out
	d.ok("rm", "e2e-events")
	want := []string{"create e2e-events ", "start e2e-events ", "die e2e-events 5", "destroy e2e-events "}
	var got []string
	timeout := time.After(30 * time.Second)
	for len(got) < len(want) {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("docker events ended early; got %q", got)
			}
			got = append(got, l)
		case <-timeout:
			t.Fatalf("docker events: got %q, want %q", got, want)
		}
	}
	// attach/detach events of the CLI's own attach are not emitted; only the life cycle.
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("docker events (followed): got %q, want %q", got, want)
	}
	// Replayed from the past, and ended by --until.
	until := time.Now().Add(time.Second).Format(time.RFC3339Nano)
	replay := d.ok("events", "--since", since, "--until", until, "--filter", "event=die", "--format", "{{.Type}} {{.Action}} {{.Actor.Attributes.exitCode}}")
	if !strings.Contains(replay, "container die 5\n") || !strings.Contains(replay, "container die 0\n") || strings.Contains(replay, "start") {
		t.Errorf("docker events --since --until --filter event=die:\n%s", replay)
	}
	if r := d.run("", "events", "--filter", "nosuchfilter=1", "--until", until); r.code == 0 || !strings.Contains(r.stderr, "invalid filter 'nosuchfilter'") {
		t.Errorf("an unknown filter must be refused: %+v", r)
	}
}
