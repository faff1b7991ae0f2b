package engine

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/docker/go-units"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"

	"github.com/moatc/moatc/ctrd"
)

func init() {
	route("GET /containers/json", containerList)
}

// listFilters are the filters GET /containers/json takes.
var listFilters = []string{"label", "name", "status", "id", "ancestor", "exited",
	"before", "since", "network", "volume", "health", "publish", "expose", "is-task", "annotation"}

// containerList is GET /containers/json?all=1&limit=N&filters=JSON, newest first.
func containerList(e *Engine, w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r.URL.Query().Get("filters"), listFilters...)
	if err != nil {
		return err
	}
	for _, s := range f["health"] {
		if container.ValidateHealthStatus(container.HealthStatus(s)) != nil {
			return invalid("unrecognized filter value for health: %s", s)
		}
	}
	// before= and since= name a container: those created before (after) it.
	var before, since time.Time
	for k, at := range map[string]*time.Time{"before": &before, "since": &since} {
		for _, v := range f[k] {
			c, err := e.lookup(v)
			if err != nil {
				return err
			}
			*at = c.rec.Created
		}
	}
	for _, k := range []string{"publish", "expose", "is-task", "annotation"} {
		if len(f[k]) > 0 {
			return notImplemented("moatc does not support the container filter %q yet", k)
		}
	}
	for _, s := range f["status"] {
		if container.ValidateContainerState(container.ContainerState(s)) != nil {
			return invalid("invalid filter 'status=%s'", s)
		}
	}
	var exited []int
	for _, s := range f["exited"] {
		n, err := strconv.Atoi(s)
		if err != nil {
			return invalid("invalid filter 'exited=%s'", s)
		}
		exited = append(exited, n)
	}
	limit, err := intParam(r, "limit", -1)
	if err != nil {
		return err
	}
	all := boolParam(r, "all") || limit > 0 || len(f["status"]) > 0 || len(exited) > 0
	out := []container.Summary{}
	for _, rec := range e.snapshot() {
		if limit > 0 && len(out) >= limit {
			break
		}
		if !all && rec.State.Status != container.StateRunning {
			continue
		}
		if !matchContainer(f, exited, rec) || (!before.IsZero() && !rec.Created.Before(before)) || (!since.IsZero() && !rec.Created.After(since)) {
			continue
		}
		s := summary(rec)
		s.NetworkSettings.Networks = e.containerNetworks(rec)
		s.Ports = e.portSummary(rec)
		if !e.matchNetworkFilter(f, s.NetworkSettings.Networks) {
			continue
		}
		s.Mounts = e.mountPoints(e.containerDir(rec.ID))
		if !f.matchAny("volume", func(v string) bool {
			return slices.ContainsFunc(s.Mounts, func(m container.MountPoint) bool { return m.Name == v || m.Destination == v })
		}) {
			continue
		}
		out = append(out, s)
	}
	return writeJSON(w, http.StatusOK, out)
}

// matchContainer reports whether rec passes the list's filters.
func matchContainer(f filters, exited []int, rec record) bool {
	if !f.matchLabel(rec.Config.Labels) {
		return false
	}
	if len(exited) > 0 && (rec.State.Status != container.StateExited || !slices.Contains(exited, rec.State.ExitCode)) {
		return false
	}
	return f.matchAny("name", func(v string) bool { return matchRegexp(v, "/"+rec.Name) }) &&
		f.matchAny("status", func(v string) bool { return v == string(rec.State.Status) }) &&
		f.matchAny("id", func(v string) bool { return strings.HasPrefix(rec.ID, v) }) &&
		f.matchAny("ancestor", func(v string) bool { return matchImage(v, rec) }) &&
		f.matchAny("health", func(v string) bool { return v == string(healthStatus(rec.State)) })
}

// healthStatus is what the health filter matches: none without a health check.
func healthStatus(st state) container.HealthStatus {
	if st.Health == nil {
		return container.NoHealthcheck
	}
	return st.Health.Status
}

// matchImage reports whether ref names rec's image: by name (busybox is
// docker.io/library/busybox:latest), or by ID or a prefix of it.
func matchImage(ref string, rec record) bool {
	if n, err := ctrd.Normalize(ref); err == nil && n == rec.Image {
		return true
	}
	id := strings.TrimPrefix(ref, "sha256:")
	return id != "" && strings.HasPrefix(strings.TrimPrefix(rec.ImageID, "sha256:"), id)
}

// summary is a container's row in the list.
func summary(rec record) container.Summary {
	s := container.Summary{
		ID:              rec.ID,
		Names:           []string{"/" + rec.Name},
		Image:           rec.Config.Image,
		ImageID:         rec.ImageID,
		Command:         strings.Join(append([]string{rec.Path}, rec.Args...), " "),
		Created:         rec.Created.Unix(),
		Ports:           []container.PortSummary{},
		Labels:          rec.Config.Labels,
		State:           rec.State.Status,
		Status:          statusText(rec.State, time.Now()),
		NetworkSettings: &container.NetworkSettingsSummary{Networks: map[string]*network.EndpointSettings{}},
		Mounts:          []container.MountPoint{},
	}
	if s.Labels == nil {
		s.Labels = map[string]string{}
	}
	s.HostConfig.NetworkMode = string(rec.HostConfig.NetworkMode)
	return s
}

// statusText is Docker's Status column: "Up 5 seconds", "Exited (7) 3 minutes ago",
// "Created".
func statusText(st state, now time.Time) string {
	switch st.Status {
	case container.StateRunning:
		if st.Health != nil {
			h := string(st.Health.Status)
			if st.Health.Status == container.Starting {
				h = "health: starting"
			}
			return "Up " + units.HumanDuration(now.Sub(st.StartedAt)) + " (" + h + ")"
		}
		return "Up " + units.HumanDuration(now.Sub(st.StartedAt))
	case container.StateExited:
		if st.FinishedAt.IsZero() {
			return fmt.Sprintf("Exited (%d)", st.ExitCode)
		}
		return fmt.Sprintf("Exited (%d) %s ago", st.ExitCode, units.HumanDuration(now.Sub(st.FinishedAt)))
	case container.StateCreated:
		return "Created"
	}
	return string(st.Status)
}
