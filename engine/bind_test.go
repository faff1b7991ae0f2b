package engine

import (
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/mount"

	"github.com/moatc/moatc/ctrd"
	mountpin "github.com/moatc/moatc/mounts"
)

func TestMapBindLongestPrefix(t *testing.T) {
	ms := []Mount{{Target: "/workspace", Source: "/h/ws"}, {Target: "/workspace/cache", Source: "/h/cache", ReadOnly: true}, {Target: "/data/", Source: "/h/data"}}
	for src, want := range map[string][2]string{
		"/workspace":              {"/h/ws", "."},
		"/workspace/":             {"/h/ws", "."},
		"/workspace/sub":          {"/h/ws", "sub"},
		"/workspace/sub/../x":     {"/h/ws", "x"},
		"/workspace/cache":        {"/h/cache", "."},
		"/workspace/cache/a/b":    {"/h/cache", "a/b"},
		"/workspace/cachex":       {"/h/ws", "cachex"},
		"/data/d":                 {"/h/data", "d"},
		"/workspace/./sub//inner": {"/h/ws", "sub/inner"},
	} {
		m, rel, err := mapBind(ms, "", src)
		if err != nil || m.Source != want[0] || rel != want[1] {
			t.Errorf("%s: %s %s %v, want %v", src, m.Source, rel, err, want)
		}
	}
	for _, src := range []string{"/etc", "/", "/workspacex", "/workspace/../etc", "/dat", "/var/run/docker.sock"} {
		_, _, err := mapBind(ms, "/var/run/docker.sock", src)
		if err == nil || statusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), "/workspace") {
			t.Errorf("%s: %v, want 403 naming the mounts", src, err)
		}
	}
	if _, _, err := mapBind(ms, "", "rel/path"); statusOf(err) != http.StatusBadRequest {
		t.Errorf("relative: %v", err)
	}
	if _, _, err := mapBind(nil, "", "/workspace"); err == nil || !strings.Contains(err.Error(), "has none") {
		t.Errorf("no mounts: %v", err)
	}
}

func TestOpenBeneathRefusesEscapes(t *testing.T) {
	ws, outside := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(ws, "real", "deep"), 0o755)
	os.WriteFile(filepath.Join(ws, "real", "f"), []byte("x"), 0o644)
	os.Symlink("real", filepath.Join(ws, "inside"))
	os.Symlink("../../real", filepath.Join(ws, "real", "deep", "up"))
	os.Symlink("/etc", filepath.Join(ws, "etc"))
	os.Symlink("../..", filepath.Join(ws, "up2"))
	os.Symlink(outside, filepath.Join(ws, "abs-out"))
	os.Symlink("/proc/self/root", filepath.Join(ws, "magic"))
	os.Symlink(filepath.Join(ws, "real"), filepath.Join(ws, "abs-in"))
	root := Mount{Target: "/workspace", Source: ws}
	for rel, want := range map[string]string{"real": "real", "inside": "real", "real/deep/up": "real", "real/f": "real/f", ".": ""} {
		f, err := openBeneath(root, "/workspace/"+rel, rel, false)
		if err != nil {
			t.Fatalf("%s: %v", rel, err)
		}
		got, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(f.Fd())))
		f.Close()
		if got != filepath.Join(ws, want) {
			t.Errorf("%s resolved to %s", rel, got)
		}
	}
	for _, rel := range []string{"etc", "etc/passwd", "up2", "up2/etc", "abs-out", "magic", "magic/etc", "abs-in", "../x", "real/../../x"} {
		_, err := openBeneath(root, "/workspace/"+rel, rel, true)
		if statusOf(err) != http.StatusForbidden || !strings.Contains(err.Error(), "/workspace") {
			t.Errorf("%s: %v, want 403", rel, err)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "x")); err == nil {
		t.Error("a create followed a link out")
	}
	// Missing: made with create, refused without, never made in a read-only mount.
	if _, err := openBeneath(root, "/workspace/new/dir", "new/dir", false); statusOf(err) != http.StatusBadRequest {
		t.Errorf("missing: %v", err)
	}
	f, err := openBeneath(root, "/workspace/new/dir", "new/dir", true)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if st, err := os.Stat(filepath.Join(ws, "new", "dir")); err != nil || !st.IsDir() {
		t.Errorf("not made: %v", err)
	}
	if _, err := openBeneath(root, "/workspace/abs-out/made", "abs-out/made", true); statusOf(err) != http.StatusForbidden {
		t.Errorf("create through a link out: %v", err)
	}
	if _, err := os.Stat(filepath.Join(outside, "made")); err == nil {
		t.Error("made a directory outside")
	}
	ro := Mount{Target: "/workspace", Source: ws, ReadOnly: true}
	if _, err := openBeneath(ro, "/workspace/other", "other", true); err == nil {
		t.Error("made a directory in a read-only mount")
	}
}

func TestParseBind(t *testing.T) {
	for in, want := range map[string]ctrMount{
		"/workspace/a:/data":         {Kind: kindBind, Source: "/workspace/a", Dest: "/data"},
		"/workspace/a:/data:ro":      {Kind: kindBind, Source: "/workspace/a", Dest: "/data", ReadOnly: true},
		"/workspace/a:/data:ro,Z":    {Kind: kindBind, Source: "/workspace/a", Dest: "/data", ReadOnly: true},
		"/workspace/a:/d:rshared":    {Kind: kindBind, Source: "/workspace/a", Dest: "/d", Propagation: "rshared"},
		"vol:/data":                  {Kind: kindVolume, Source: "vol", Dest: "/data"},
		"vol:/data:rw,nocopy":        {Kind: kindVolume, Source: "vol", Dest: "/data", NoCopy: true},
		"/only":                      {Kind: kindVolume, Dest: "/only", Anonymous: true},
		"/var/run/docker.sock:/s.sk": {Kind: kindBind, Source: "/var/run/docker.sock", Dest: "/s.sk"},
	} {
		got, err := parseBind(in)
		if err != nil || got != want {
			t.Errorf("%s: %+v %v, want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{":/data", "a:b:c:d", "/x:/y:bogus", "bad name:/x", "v:/x:rshared", "-v:/x"} {
		if _, err := parseBind(in); statusOf(err) != http.StatusBadRequest {
			t.Errorf("%s: %v, want 400", in, err)
		}
	}
}

func TestParseMounts(t *testing.T) {
	hc := &container.HostConfig{Binds: []string{"/workspace/a:/a:ro", "v1:/v"}, Mounts: []mount.Mount{
		{Type: mount.TypeVolume, Target: "/anon"},
		{Type: mount.TypeBind, Source: "/workspace/b", Target: "/b", BindOptions: &mount.BindOptions{NonRecursive: true}},
		{Type: mount.TypeTmpfs, Target: "/t", TmpfsOptions: &mount.TmpfsOptions{SizeBytes: 1 << 20, Mode: 0o1777}},
		{Type: mount.TypeVolume, Source: "v2", Target: "/sub", VolumeOptions: &mount.VolumeOptions{Subpath: "x/y"}},
	}}
	cfg := &container.Config{Volumes: map[string]struct{}{"/v": {}, "/img": {}}}
	ms, tmpfs, err := parseMounts(hc, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 6 || ms[5].Dest != "/img" || !ms[5].Anonymous || !ms[2].Anonymous || !ms[3].NonRecursive || ms[4].Subpath != "x/y" {
		t.Errorf("mounts: %+v", ms)
	}
	if len(tmpfs) != 1 || !strings.Contains(strings.Join(tmpfs[0].Options, ","), "size=1048576,mode=777") {
		t.Errorf("tmpfs: %+v", tmpfs)
	}
	o := tmpfs[0].Options
	if o[len(o)-2] != "nosuid" || o[len(o)-1] != "nodev" {
		t.Errorf("tmpfs must end nosuid,nodev: %v", o)
	}
	bad := map[int][]mount.Mount{
		http.StatusForbidden: {
			{Type: mount.TypeBind, Source: "/w", Target: "/x", BindOptions: &mount.BindOptions{Propagation: mount.PropagationRShared}},
			{Type: mount.TypeBind, Source: "/w", Target: "/x", BindOptions: &mount.BindOptions{Propagation: mount.PropagationSlave}},
			{Type: mount.TypeBind, Source: "/w", Target: "/x", BindOptions: &mount.BindOptions{ReadOnlyNonRecursive: true}},
			{Type: mount.TypeVolume, Source: "v", Target: "/x", VolumeOptions: &mount.VolumeOptions{DriverConfig: &mount.Driver{Options: map[string]string{"device": "/dev/sda"}}}},
			{Type: mount.TypeTmpfs, Target: "/x", TmpfsOptions: &mount.TmpfsOptions{Options: [][]string{{"dev"}}}},
			{Type: mount.TypeTmpfs, Target: "/x", TmpfsOptions: &mount.TmpfsOptions{Options: [][]string{{"suid"}}}},
		},
		http.StatusBadRequest: {
			{Type: mount.TypeBind, Source: "rel", Target: "/x"},
			{Type: mount.TypeBind, Source: "/w", Target: "x"},
			{Type: mount.TypeBind, Source: "/w", Target: "/"},
			{Type: mount.TypeVolume, Source: "v", Target: "/x", VolumeOptions: &mount.VolumeOptions{Subpath: "../x"}},
			{Type: mount.TypeVolume, Source: "v", Target: "/x", VolumeOptions: &mount.VolumeOptions{Subpath: "/abs"}},
			{Type: mount.TypeVolume, Source: "../v", Target: "/x"},
			{Type: mount.TypeTmpfs, Source: "x", Target: "/x"},
		},
		http.StatusNotImplemented: {
			{Type: mount.TypeImage, Source: "busybox", Target: "/x"},
			{Type: mount.TypeVolume, Source: "v", Target: "/x", VolumeOptions: &mount.VolumeOptions{DriverConfig: &mount.Driver{Name: "nfs"}}},
		},
	}
	for code, list := range bad {
		for _, m := range list {
			_, _, err := parseMounts(&container.HostConfig{Mounts: []mount.Mount{m}}, &container.Config{})
			if statusOf(err) != code {
				t.Errorf("%+v: %v, want %d", m, err, code)
			}
		}
	}
	if _, _, err := parseMounts(&container.HostConfig{Binds: []string{"v:/x", "w:/x/"}}, &container.Config{}); statusOf(err) != http.StatusBadRequest {
		t.Errorf("duplicate: %v", err)
	}
}

func TestCheckHostConfigRefusesEscapes(t *testing.T) {
	neg := -500
	_ = neg
	for name, hc := range map[string]container.HostConfig{
		"cap-add ALL":         {CapAdd: []string{"ALL"}},
		"cap-add SYS_ADMIN":   {CapAdd: []string{"SYS_ADMIN"}},
		"no-new-privs false":  {SecurityOpt: []string{"no-new-privileges=false"}},
		"no-new-privs:false":  {SecurityOpt: []string{"no-new-privileges:false"}},
		"oom-score-adj < 0":   {OomScoreAdj: -500},
		"tmpfs dev":           {Tmpfs: map[string]string{"/t": "dev"}},
		"privileged":          {Privileged: true},
		"seccomp unconfined":  {SecurityOpt: []string{"seccomp=unconfined"}},
		"apparmor unconfined": {SecurityOpt: []string{"apparmor:unconfined"}},
		"cgroupns host":       {CgroupnsMode: "host"},
		"ipc host":            {IpcMode: "host"},
	} {
		if _, err := checkHostConfig(&hc, &container.Config{}); statusOf(err) != http.StatusForbidden {
			t.Errorf("%s: %v, want 403", name, err)
		}
	}
	for name, hc := range map[string]container.HostConfig{
		"ipc container": {IpcMode: "container:x"},
		"runtime":       {Runtime: "runc"},
		"volume driver": {VolumeDriver: "nfs"},
	} {
		if _, err := checkHostConfig(&hc, &container.Config{}); statusOf(err) != http.StatusNotImplemented {
			t.Errorf("%s: %v, want 501", name, err)
		}
	}
	if _, err := checkHostConfig(&container.HostConfig{CapAdd: []string{"chown", "CAP_KILL"}, OomScoreAdj: 100, Tmpfs: map[string]string{"/t": "size=1m,exec"}}, &container.Config{}); err != nil {
		t.Errorf("allowed settings refused: %v", err)
	}
}

func TestVolumeFilters(t *testing.T) {
	v := volRecord{Name: "data-1", Labels: map[string]string{"a": "b"}}
	for _, c := range []struct {
		f     filters
		inUse bool
		want  bool
	}{
		{filters{}, false, true},
		{filters{"name": {"data"}}, false, true},
		{filters{"name": {"other"}}, false, false},
		{filters{"label": {"a=b"}}, false, true},
		{filters{"label": {"a=c"}}, false, false},
		{filters{"dangling": {"true"}}, true, false},
		{filters{"dangling": {"1"}}, false, true},
		{filters{"dangling": {"false"}}, true, true},
		{filters{"driver": {"local"}}, false, true},
		{filters{"driver": {"nfs"}}, false, false},
	} {
		if got, err := volumeFilters(c.f, v, c.inUse); err != nil || got != c.want {
			t.Errorf("%v inUse=%v: %v %v", c.f, c.inUse, got, err)
		}
	}
	if _, err := volumeFilters(filters{"dangling": {"maybe"}}, v, false); err == nil {
		t.Error("dangling=maybe accepted")
	}
}

func TestCapDrop(t *testing.T) {
	got := capDrop(&container.HostConfig{CapDrop: []string{"ALL"}, CapAdd: []string{"chown"}})
	if len(got) != len(defaultCaps)-1 || slices.Contains(got, "CAP_CHOWN") || !slices.Contains(got, "CAP_KILL") {
		t.Errorf("ALL but CHOWN: %v", got)
	}
	if got := capDrop(&container.HostConfig{CapDrop: []string{"net_raw", "CAP_MKNOD"}}); !slices.Equal(got, []string{"CAP_NET_RAW", "CAP_MKNOD"}) {
		t.Errorf("named: %v", got)
	}
}

// Pins a killed engine left are unmounted, never removed through.
func TestUnpinAllKeepsTheWorkspace(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("pinning needs root")
		}
		t.Skip("pinning needs root (not CI, so skipping)")
	}
	ws, stateDir := t.TempDir(), t.TempDir()
	os.WriteFile(filepath.Join(ws, "keep"), []byte("x"), 0o644)
	f, err := openBeneath(Mount{Target: "/workspace", Source: ws}, "/workspace", ".", false)
	if err != nil {
		t.Fatal(err)
	}
	e := &Engine{cfg: Config{StateDir: stateDir}}
	p, err := mountpin.Pin(f, e.pinDir("c1"), "0")
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p, "keep")); err != nil {
		t.Fatalf("the pin does not show the workspace: %v", err)
	}
	if err := e.unpinAll(); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(stateDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(ws, "keep")); err != nil {
		t.Errorf("the workspace lost its file: %v", err)
	}
}

// Only a container binding the engine's socket gets runsc's host-uds.
func TestSocketRuntime(t *testing.T) {
	if g, ok := socketRuntime(ctrd.GVisor{Platform: "systrap"}).(ctrd.GVisor); !ok || !g.HostUDS || g.Platform != "systrap" {
		t.Errorf("gVisor: %+v", g)
	}
	if _, ok := socketRuntime(ctrd.Runc{}).(ctrd.Runc); !ok {
		t.Error("runc changed")
	}
	if hasSocket([]ctrMount{{Kind: kindBind}, {Kind: kindVolume}}) || !hasSocket([]ctrMount{{Kind: kindSocket}}) {
		t.Error("hasSocket")
	}
}
