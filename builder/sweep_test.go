package builder

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/leases"
	"github.com/containerd/containerd/v2/core/snapshots"
	bkclient "github.com/moby/buildkit/client"
)

// buildChildEnv carries a childBuild to the test binary run as a child (see TestMain).
const buildChildEnv = "MOATC_BUILDER_TEST_CHILD"

// childBuild is a build run in a child process, for a test to kill as a user kills moatc.
type childBuild struct {
	Dir, Prefix, Address, Namespace string
	Dockerfile, Tag, LogPath        string
}

func buildChild() int {
	var b childBuild
	if err := json.Unmarshal([]byte(os.Getenv(buildChildEnv)), &b); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	d := &Daemon{Dir: b.Dir, Prefix: b.Prefix, ContainerdAddress: b.Address, Namespace: b.Namespace}
	_, err := Build(context.Background(), d, Request{Dockerfile: []byte(b.Dockerfile), Tag: b.Tag, Mode: ModeQuiet, LogPath: b.LogPath})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// inventory is what a containerd namespace holds: leases (with their labels), snapshots
// (with their kind) and containers.
type inventory struct {
	leases map[string]map[string]string
	snaps  map[string]snapshots.Kind
	ctrs   []string
}

func takeInventory(t *testing.T, c *containerd.Client) inventory {
	t.Helper()
	ctx := context.Background()
	inv := inventory{leases: map[string]map[string]string{}, snaps: map[string]snapshots.Kind{}}
	ls, err := c.LeasesService().List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range ls {
		inv.leases[l.ID] = l.Labels
	}
	err = c.SnapshotService("overlayfs").Walk(ctx, func(_ context.Context, i snapshots.Info) error {
		inv.snaps[i.Name] = i.Kind
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	ctrs, err := c.Containers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ctrs {
		inv.ctrs = append(inv.ctrs, x.ID())
	}
	sort.Strings(inv.ctrs)
	return inv
}

func (inv inventory) String() string {
	var ls, ss []string
	for id := range inv.leases {
		ls = append(ls, id)
	}
	for n, k := range inv.snaps {
		ss = append(ss, n+"("+k.String()+")")
	}
	sort.Strings(ls)
	sort.Strings(ss)
	return fmt.Sprintf("leases %v; snapshots %v; containers %v", ls, ss, inv.ctrs)
}

// temporary lists BuildKit's temporary leases.
func (inv inventory) temporary() []string {
	var out []string
	for id, l := range inv.leases {
		if _, ok := l[labelTemporary]; ok {
			out = append(out, id)
		}
	}
	sort.Strings(out)
	return out
}

func waitFor(t *testing.T, what string, limit time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", limit, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func fileHas(path, s string) bool {
	b, _ := os.ReadFile(path)
	return strings.Contains(string(b), s)
}

// TestKilledBuildLeftovers: a build whose process is killed with SIGKILL in the middle of a
// RUN step, next to a live build on the same buildkitd. While the live build runs, Sweep
// touches nothing (it is still there, unchanged, and succeeds). Once it is over, Sweep removes
// every lease and snapshot the killed build left that is not BuildKit's cache, and every
// temporary lease, and the killed build's mark.
func TestKilledBuildLeftovers(t *testing.T) {
	requireStack(t)
	ctx := context.Background()
	// A buildkitd and namespace of this test's own; RUN steps under runc in the host's
	// network: the leases are the same under gVisor, and the shared build network stays
	// the other tests'.
	ns := testNamespace + "-kill"
	d := &Daemon{Dir: filepath.Join(testDir, "bk-kill"), Prefix: prefix, ContainerdAddress: ctrdSock, Namespace: ns}
	extraDaemons = append(extraDaemons, d)
	if out, err := ctrIn(ns, "images", "import", filepath.Join(prefix, "images", "busybox.oci.tar")); err != nil {
		t.Fatalf("importing busybox: %v\n%s", err, out)
	}
	c, err := containerd.New(ctrdSock, containerd.WithDefaultNamespace(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := d.Start(ctx); err != nil {
		t.Fatal(err)
	}
	before := takeInventory(t, c)

	// The build to kill, in a process of its own.
	stamp := time.Now().UnixNano()
	childLog := filepath.Join(testDir, "logs", "killed.log")
	os.MkdirAll(filepath.Dir(childLog), 0o700)
	spec, _ := json.Marshal(childBuild{Dir: d.Dir, Prefix: prefix, Address: ctrdSock, Namespace: ns,
		Dockerfile: fmt.Sprintf("FROM docker.io/library/busybox:latest\nRUN echo killed-%d-running && sleep 120\n", stamp),
		Tag:        "moatc/run:killed", LogPath: childLog})
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = append(os.Environ(), buildChildEnv+"="+string(spec))
	out, err := os.Create(filepath.Join(testDir, "logs", "killed.out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	child.Stdout, child.Stderr = out, out
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- child.Wait() }()
	defer child.Process.Kill()
	waitFor(t, "the build to kill to reach its RUN step", 60*time.Second, func() bool {
		select {
		case err := <-exited:
			b, _ := os.ReadFile(out.Name())
			t.Fatalf("the build to kill ended by itself: %v\n%s", err, b)
		default:
		}
		return fileHas(childLog, fmt.Sprintf("killed-%d-running", stamp))
	})

	// The live build, in this process.
	liveLog := filepath.Join(testDir, "logs", "live.log")
	liveErr := make(chan error, 1)
	go func() {
		_, err := Build(ctx, d, Request{
			Dockerfile: []byte(fmt.Sprintf("FROM docker.io/library/busybox:latest\nRUN echo live-%d-running && sleep 8 && echo done > /done\n", stamp)),
			Tag:        "moatc/run:live", Mode: ModeQuiet, LogPath: liveLog, Rebuild: true})
		liveErr <- err
	}()
	waitFor(t, "the live build to reach its RUN step", 60*time.Second, func() bool {
		return fileHas(liveLog, fmt.Sprintf("live-%d-running", stamp))
	})
	during := takeInventory(t, c)
	t.Logf("during both builds: %d temporary leases, %d containers %v", len(during.temporary()), len(during.ctrs), during.ctrs)

	// kill -9, as of a moatc in the middle of `moatc build`.
	killed := time.Now()
	if err := child.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-exited
	waitFor(t, "buildkitd to end the killed build's RUN step", 20*time.Second, func() bool {
		return len(takeInventory(t, c).ctrs) == 1 // the live build's
	})
	t.Logf("buildkitd removed the killed build's RUN container %.1fs after the kill", time.Since(killed).Seconds())
	if !d.Abandoned() {
		t.Fatal("Abandoned() is false after a build's process was killed")
	}

	// While the live build runs: nothing is touched.
	pre := takeInventory(t, c)
	ids, err := d.Sweep(ctx, false)
	if err != nil || len(ids) > 0 {
		t.Fatalf("Sweep during a live build = %v, %v; want nothing done", ids, err)
	}
	post := takeInventory(t, c)
	left := pre.temporary()
	t.Logf("after the kill, during the live build: temporary leases %v", left)
	if len(left) == 0 {
		t.Errorf("no temporary lease after the kill: nothing for the sweep to show")
	}
	if pre.String() != post.String() {
		t.Errorf("Sweep during a live build changed containerd:\nbefore %s\nafter  %s", pre, post)
	}
	if !d.Answering() || !d.Abandoned() {
		t.Errorf("Sweep during a live build: buildkitd answering %v, killed build's mark kept %v; want both", d.Answering(), d.Abandoned())
	}
	if err := <-liveErr; err != nil {
		t.Fatalf("the live build next to the sweep failed: %v", err)
	}

	// BuildKit's cache records, which stay by design: the next build reuses them.
	bk, err := bkclient.New(ctx, d.Address())
	if err != nil {
		t.Fatal(err)
	}
	du, err := bk.DiskUsage(ctx)
	bk.Close()
	if err != nil {
		t.Fatal(err)
	}
	record := map[string]bool{}
	for _, u := range du {
		record[u.ID] = true
	}
	isCache := func(id string) bool { return record[id] || record[strings.TrimSuffix(id, "-variants")] }
	// The snapshots the records' leases hold, and their parents.
	cached := map[string]bool{}
	var keep func(name string)
	keep = func(name string) {
		if name == "" || cached[name] {
			return
		}
		cached[name] = true
		if info, err := c.SnapshotService("overlayfs").Stat(ctx, name); err == nil {
			keep(info.Parent)
		}
	}
	for id := range record {
		rs, err := c.LeasesService().ListResources(ctx, leases.Lease{ID: id})
		if err != nil {
			t.Fatalf("resources of cache record %s: %v", id, err)
		}
		for _, r := range rs {
			if r.Type == "snapshots/overlayfs" {
				keep(r.ID)
			}
		}
	}

	// No build is live: the dry run lists, the sweep removes.
	dryIDs, err := d.Sweep(ctx, true)
	if err != nil || len(dryIDs) == 0 {
		t.Fatalf("Sweep(dry) after the builds = %v, %v; want the temporary leases", dryIDs, err)
	}
	if got := takeInventory(t, c).temporary(); strings.Join(got, " ") != strings.Join(dryIDs, " ") || !d.Answering() {
		t.Errorf("after Sweep(dry): temporary leases %v (it listed %v), buildkitd answering %v; want nothing changed", got, dryIDs, d.Answering())
	}
	start := time.Now()
	ids, err = d.Sweep(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Sweep removed %d temporary leases in %v: %v", len(ids), time.Since(start).Round(time.Millisecond), ids)
	after := takeInventory(t, c)
	if tmp := after.temporary(); len(tmp) > 0 {
		t.Errorf("temporary leases left: %v", tmp)
	}
	for _, id := range left {
		if _, ok := after.leases[id]; ok {
			t.Errorf("lease %s, there since the kill, is still there", id)
		}
	}
	for id := range during.leases {
		_, old := before.leases[id]
		if _, left := after.leases[id]; !old && left && !isCache(id) {
			t.Errorf("lease %s of the builds is still there and is no cache record: %v", id, after.leases[id])
		}
	}
	for name, kind := range during.snaps {
		_, old := before.snaps[name]
		if _, left := after.snaps[name]; !old && left && !cached[name] {
			t.Errorf("snapshot %s (%s) of the builds is still there and no cache record holds it", name, kind)
		}
	}
	var goneL, goneS []string
	for id := range during.leases {
		if _, left := after.leases[id]; !left {
			goneL = append(goneL, id)
		}
	}
	for name, kind := range during.snaps {
		if _, left := after.snaps[name]; !left {
			goneS = append(goneS, name+"("+kind.String()+")")
		}
	}
	sort.Strings(goneL)
	sort.Strings(goneS)
	t.Logf("of what was there during the builds, gone now: leases %v; snapshots %v", goneL, goneS)
	for name, kind := range after.snaps {
		if kind == snapshots.KindView {
			t.Errorf("view snapshot %s left", name)
		}
	}
	if len(after.ctrs) > 0 {
		t.Errorf("containers left: %v", after.ctrs)
	}
	if d.Abandoned() || d.Answering() {
		t.Errorf("after Sweep: a killed build's mark left %v, buildkitd still answering %v", d.Abandoned(), d.Answering())
	}
	if ents, _ := os.ReadDir(d.marksDir()); len(ents) > 0 {
		t.Errorf("marks left: %v", ents)
	}
	t.Logf("before: %d leases, %d snapshots; during: %d, %d; after: %d, %d (%d cache records)",
		len(before.leases), len(before.snaps), len(during.leases), len(during.snaps), len(after.leases), len(after.snaps), len(record))

	// The next build starts buildkitd again and finds its cache.
	var progress strings.Builder
	if _, err := Build(ctx, d, Request{
		Dockerfile: []byte(fmt.Sprintf("FROM docker.io/library/busybox:latest\nRUN echo live-%d-running && sleep 8 && echo done > /done\n", stamp)),
		Tag:        "moatc/run:live", Mode: ModePlain, Progress: &progress, Rebuild: true}); err != nil {
		t.Fatalf("a build after the sweep: %v", err)
	}
	if !strings.Contains(progress.String(), "CACHED") {
		t.Errorf("the build after the sweep did not reuse the cache:\n%s", lastLines(progress.String(), 20))
	}
}
