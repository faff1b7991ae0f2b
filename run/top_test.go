package run

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestParseRunscPs(t *testing.T) {
	out := "UID       PID       PPID      PGID      C         TTY       STIME     TIME      CMD\n" +
		"0         1         0         1         2         ?         15:58     300ms     sh\n" +
		"1000      226       1         1         0         ?         15:59     1h2m3s    my prog\n"
	ps, err := parseRunscPs([]byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := []Process{{PID: 1, PPID: 0, UID: 0, Time: "00:00:00", Cmd: "sh"}, {PID: 226, PPID: 1, UID: 1000, Time: "01:02:03", Cmd: "my prog"}}
	if len(ps) != 2 || ps[0] != want[0] || ps[1] != want[1] {
		t.Errorf("got %+v, want %+v", ps, want)
	}
	for _, bad := range []string{"", "[1,226]", "UID PID\nx y z\n", "UID\n0 a 0 1 0 ? 1 1s sh\n"} {
		if _, err := parseRunscPs([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestHostProcess(t *testing.T) {
	proc := t.TempDir()
	dir := filepath.Join(proc, "42")
	os.MkdirAll(dir, 0o755)
	// A name with ") (" in it must not shift the fields.
	os.WriteFile(filepath.Join(dir, "stat"), []byte("42 (a) (b) S 7 42 42 0 -1 0 0 0 0 0 250 150 0 0 20 0 1 0 100 0 0\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "status"), []byte("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "cmdline"), []byte("sleep\x0030\x00"), 0o644)
	p, err := hostProcess(proc, 42)
	if err != nil {
		t.Fatal(err)
	}
	want := Process{PID: 42, PPID: 7, UID: 1000, Time: "00:00:04", Cmd: "sleep 30"}
	if p != want {
		t.Errorf("got %+v, want %+v", p, want)
	}
	if _, err := hostProcess(proc, 43); err == nil {
		t.Error("a missing process: no error")
	}
}

func TestCPUTime(t *testing.T) {
	for d, want := range map[time.Duration]string{0: "00:00:00", 61 * time.Second: "00:01:01", 50 * time.Hour: "2-02:00:00"} {
		if got := cpuTime(d); got != want {
			t.Errorf("cpuTime(%v) = %q, want %q", d, got, want)
		}
	}
}
