package state

import (
	"fmt"
	"path"
	"strings"
)

// RunFilter selects runs, as `moatc list --filter` does (and Docker's ps): values of one key
// OR, different keys AND.
type RunFilter map[string][]string

// RunFilterKeys are the keys a RunFilter takes.
var RunFilterKeys = []string{"id", "name", "state", "label"}

// listStates are the states --filter state= takes; exited is stopped or failed.
var listStates = []string{Created, Running, Stopping, Stopped, Failed, "exited"}

// ParseRunFilters reads KEY=VALUE filters: id=PREFIX, name=NAME (a glob: web-*),
// state=STATE, label=KEY or label=KEY=VALUE.
func ParseRunFilters(specs []string) (RunFilter, error) {
	f := RunFilter{}
	for _, s := range specs {
		k, v, ok := strings.Cut(s, "=")
		if !ok || v == "" {
			return nil, fmt.Errorf("filter %q is not KEY=VALUE (keys: %s)", s, strings.Join(RunFilterKeys, ", "))
		}
		switch k {
		case "id":
		case "name":
			if _, err := path.Match(v, ""); err != nil {
				return nil, fmt.Errorf("filter %q: bad pattern: %w", s, err)
			}
		case "state":
			if !contains(listStates, v) {
				return nil, fmt.Errorf("filter %q: no state %q (states: %s)", s, v, strings.Join(listStates, ", "))
			}
		case "label":
			if lk, _, _ := strings.Cut(v, "="); lk == "" {
				return nil, fmt.Errorf("filter %q: give label=KEY or label=KEY=VALUE", s)
			}
		default:
			return nil, fmt.Errorf("filter %q: unknown key %q (keys: %s)", s, k, strings.Join(RunFilterKeys, ", "))
		}
		f[k] = append(f[k], v)
	}
	return f, nil
}

// Match reports whether r passes every key of the filter.
func (f RunFilter) Match(r *Run) bool {
	for k, vs := range f {
		ok := false
		for _, v := range vs {
			if matchRun(r, k, v) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

func matchRun(r *Run, k, v string) bool {
	switch k {
	case "id":
		return strings.HasPrefix(r.ID, v)
	case "name":
		ok, _ := path.Match(v, r.Name)
		return ok
	case "state":
		return r.State == v || (v == "exited" && (r.State == Stopped || r.State == Failed))
	case "label":
		lk, lv, hasValue := strings.Cut(v, "=")
		got, ok := r.Spec.Labels[lk]
		return ok && (!hasValue || got == lv)
	}
	return false
}

// Filter returns the runs that match, in order.
func (f RunFilter) Filter(runs []*Run) []*Run {
	out := []*Run{}
	for _, r := range runs {
		if f.Match(r) {
			out = append(out, r)
		}
	}
	return out
}
