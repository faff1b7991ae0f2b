package state

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestCreateClaimsNamesOnceUnderConcurrency(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make([]error, 20)
	for i := range errs {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			errs[i] = s.Create(&Run{ID: NewID(), Name: "same", State: Created, Created: time.Now()})
		}(i)
	}
	wg.Wait()
	ok := 0
	for _, err := range errs {
		var inUse *NameInUseError
		switch {
		case err == nil:
			ok++
		case !errors.As(err, &inUse):
			t.Errorf("unexpected error: %v", err)
		}
	}
	if ok != 1 {
		t.Errorf("%d creates of one name succeeded, want 1", ok)
	}
}

func TestUpdateIsAtomicAndSerialized(t *testing.T) {
	s, _ := Open(t.TempDir())
	r := &Run{ID: "abc123def456", Name: "n", State: Created, Created: time.Now()}
	if err := s.Create(r); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.Update(r.ID, func(r *Run) error { r.Pid++; return nil })
		}()
	}
	wg.Wait()
	got, err := s.Get(r.ID)
	if err != nil || got.Pid != 50 {
		t.Fatalf("pid %d (%v), want 50: updates were lost", got.Pid, err)
	}
	// No temp files are left next to the record.
	ents, _ := os.ReadDir(s.Dir(r.ID))
	for _, e := range ents {
		if e.Name() != "metadata.json" && e.Name() != ".lock" {
			t.Errorf("stray file %s", e.Name())
		}
	}
	// A failing update changes nothing.
	s.Update(r.ID, func(r *Run) error { r.Pid = -1; return fmt.Errorf("no") })
	if got, _ := s.Get(r.ID); got.Pid != 50 {
		t.Errorf("failed update was written")
	}
}

func TestFind(t *testing.T) {
	s, _ := Open(t.TempDir())
	for i, id := range []string{"aa1111111111", "aa2222222222", "bb3333333333"} {
		s.Create(&Run{ID: id, Name: fmt.Sprintf("run%d", i), Created: time.Now()})
	}
	for ref, want := range map[string]string{"run1": "aa2222222222", "bb": "bb3333333333", "aa1": "aa1111111111", "aa2222222222": "aa2222222222"} {
		if r, err := s.Find(ref); err != nil || r.ID != want {
			t.Errorf("Find(%q) = %v, %v; want %s", ref, r, err, want)
		}
	}
	var amb *AmbiguousError
	if _, err := s.Find("aa"); !errors.As(err, &amb) || len(amb.IDs) != 2 {
		t.Errorf("Find(aa): %v, want ambiguous", err)
	}
	if _, err := s.Find("zz"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Find(zz): %v", err)
	}
	// A directory without a record (being created) is skipped, not an error.
	os.Mkdir(filepath.Join(s.dir, "cc4444444444"), 0o700)
	if runs, err := s.List(); err != nil || len(runs) != 3 {
		t.Errorf("List: %d runs, %v", len(runs), err)
	}
}

func TestProcessAlive(t *testing.T) {
	self := Self()
	if !self.Alive() {
		t.Fatal("this process is not alive")
	}
	if (&Process{Pid: self.Pid, Start: self.Start + 1}).Alive() {
		t.Error("a reused pid (other start time) counts as alive")
	}
	var nilProc *Process
	if nilProc.Alive() {
		t.Error("nil process alive")
	}
}
