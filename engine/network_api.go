package engine

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/network"

	"github.com/moatc/moatc/internal/atomicfile"
)

func init() {
	route("GET /networks", networkList)
	route("GET /networks/{id}", networkInspect)
	route("POST /networks/create", networkCreate)
	route("DELETE /networks/{id}", networkRemove)
	route("POST /networks/{id}/connect", networkConnect)
	route("POST /networks/{id}/disconnect", networkDisconnect)
	route("POST /networks/prune", networkPrune)
}

// networkView is a network as Docker shows it; with containers for inspect.
func (e *Engine) networkView(name string, rec *netRecord, withCtrs bool) network.Inspect {
	n := network.Inspect{Network: network.Network{
		Name: name, ID: e.builtinID(name), Scope: "local", Driver: name, EnableIPv4: name != network.NetworkNone,
		IPAM:    network.IPAM{Driver: "default", Options: map[string]string{}, Config: []network.IPAMConfig{}},
		Options: map[string]string{}, Labels: map[string]string{},
	}}
	if name == network.NetworkNone {
		n.Driver = "null"
	}
	if rec != nil {
		n.ID, n.Driver, n.Created = rec.ID, "bridge", rec.Created
		if rec.Labels != nil {
			n.Labels = rec.Labels
		}
		if rec.Options != nil {
			n.Options = rec.Options
		}
	} else if name == network.NetworkBridge {
		n.Options = map[string]string{"com.docker.network.bridge.default_bridge": "true"}
	}
	if n.Driver == "bridge" && e.nw.run != nil {
		n.IPAM.Config = []network.IPAMConfig{{Subnet: e.nw.run.Subnet, Gateway: e.nw.run.Gateway}}
		n.Options["com.docker.network.bridge.name"] = "mc-" + e.cfg.NetRun
	}
	if withCtrs {
		n.Containers = map[string]network.EndpointResource{}
		e.mu.Lock()
		for _, id := range e.netUsers(name) {
			cn := e.nw.ctrs[id]
			cname := ""
			if c := e.ctrs[id]; c != nil {
				cname = c.rec.Name
			}
			n.Containers[id] = network.EndpointResource{Name: cname, EndpointID: e.builtinID("endpoint/" + id + "/" + name),
				IPv4Address: netip.PrefixFrom(cn.IP, cn.Subnet.Bits())}
		}
		e.mu.Unlock()
	}
	return n
}

var networkFilters = []string{"name", "id", "label", "driver", "type", "dangling", "scope"}

// networkList is GET /networks.
func networkList(e *Engine, w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r.URL.Query().Get("filters"), networkFilters...)
	if err != nil {
		return err
	}
	for _, v := range f["type"] {
		if v != "custom" && v != "builtin" {
			return invalid("invalid filter: 'type'='%s'", v)
		}
	}
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	e.netLoad()
	out := []network.Summary{}
	add := func(name string, rec *netRecord) {
		n := e.networkView(name, rec, false)
		typ := "builtin"
		if rec != nil {
			typ = "custom"
		}
		dangling := rec != nil && len(e.netUsers(name)) == 0
		if f.matchLabel(n.Labels) &&
			f.matchAny("name", func(v string) bool { return strings.Contains(n.Name, v) }) &&
			f.matchAny("id", func(v string) bool { return strings.HasPrefix(n.ID, v) }) &&
			f.matchAny("driver", func(v string) bool { return v == n.Driver }) &&
			f.matchAny("scope", func(v string) bool { return v == n.Scope }) &&
			f.matchAny("type", func(v string) bool { return v == typ }) &&
			f.matchAny("dangling", func(v string) bool { return (v == "true" || v == "1") == dangling }) {
			out = append(out, network.Summary{Network: n.Network})
		}
	}
	for _, b := range builtinNets {
		add(b, nil)
	}
	recs := make([]*netRecord, 0, len(e.nw.nets))
	for _, rec := range e.nw.nets {
		recs = append(recs, rec)
	}
	sort.Slice(recs, func(i, j int) bool { return recs[i].Created.Before(recs[j].Created) })
	for _, rec := range recs {
		add(rec.Name, rec)
	}
	return writeJSON(w, http.StatusOK, out)
}

// networkInspect is GET /networks/{id}.
func networkInspect(e *Engine, w http.ResponseWriter, r *http.Request) error {
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	name, rec, err := e.findNetwork(r.PathValue("id"))
	if err != nil {
		return err
	}
	return writeJSON(w, http.StatusOK, e.networkView(name, rec, true))
}

// networkCreate is POST /networks/create: a record; every user network is the run's own
// network underneath.
func networkCreate(e *Engine, w http.ResponseWriter, r *http.Request) error {
	var req network.CreateRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		return err
	}
	switch {
	case req.Name == "":
		return invalid("network name is required")
	case !validName.MatchString(req.Name):
		return invalid("invalid network name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", req.Name)
	case req.Driver != "" && req.Driver != "bridge":
		return notImplemented("moatc supports the bridge network driver only, not %s", req.Driver)
	case req.Internal:
		return notImplemented("moatc does not support internal networks: every network of the engine is the run's own, with the run's egress")
	case req.EnableIPv6 != nil && *req.EnableIPv6:
		return notImplemented("moatc's networks have no IPv6")
	case req.IPAM != nil && len(req.IPAM.Config) > 0:
		return notImplemented("moatc does not support choosing a network's subnet: all networks of the engine share the run's")
	case req.ConfigOnly || req.ConfigFrom != nil || req.Ingress:
		return notImplemented("moatc does not support config-only, config-from or ingress networks")
	}
	e.nw.mu.Lock()
	e.netLoad()
	for _, b := range builtinNets {
		if b == req.Name {
			e.nw.mu.Unlock()
			return forbidden("%s is a pre-defined network and cannot be created", req.Name)
		}
	}
	for _, o := range e.nw.nets {
		if o.Name == req.Name {
			e.nw.mu.Unlock()
			return conflict("network with name %s already exists", req.Name)
		}
	}
	rec := &netRecord{ID: newID(), Name: req.Name, Created: time.Now().UTC(), Labels: req.Labels, Options: req.Options}
	b, _ := json.Marshal(rec)
	err := os.MkdirAll(e.networksDir(), 0o700)
	if err == nil {
		err = atomicfile.WriteNoSync(filepath.Join(e.networksDir(), rec.ID+".json"), b, 0o600)
	}
	if err != nil {
		e.nw.mu.Unlock()
		return fmt.Errorf("creating network %s: %w", req.Name, err)
	}
	e.nw.nets[rec.ID] = rec
	e.nw.mu.Unlock()
	e.emit(events.NetworkEventType, events.ActionCreate, rec.ID, map[string]string{"name": rec.Name, "type": "bridge"})
	return writeJSON(w, http.StatusCreated, network.CreateResponse{ID: rec.ID})
}

// networkRemove is DELETE /networks/{id}.
func networkRemove(e *Engine, w http.ResponseWriter, r *http.Request) error {
	e.nw.mu.Lock()
	name, rec, err := e.findNetwork(r.PathValue("id"))
	if err == nil {
		err = e.removeNetworkLocked(name, rec)
	}
	e.nw.mu.Unlock()
	if err != nil {
		return err
	}
	e.emit(events.NetworkEventType, events.ActionDestroy, rec.ID, map[string]string{"name": rec.Name, "type": "bridge"})
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Engine) removeNetworkLocked(name string, rec *netRecord) error {
	if rec == nil {
		return forbidden("%s is a pre-defined network and cannot be removed", name)
	}
	if len(e.netUsers(name)) > 0 {
		return forbidden("error while removing network: network %s id %s has active endpoints", name, rec.ID)
	}
	if err := os.Remove(filepath.Join(e.networksDir(), rec.ID+".json")); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("removing network %s: %w", name, err)
	}
	delete(e.nw.nets, rec.ID)
	return nil
}

// networkPrune is POST /networks/prune: the user networks no container uses.
func networkPrune(e *Engine, w http.ResponseWriter, r *http.Request) error {
	f, err := parseFilters(r.URL.Query().Get("filters"), "label", "label!", "until")
	if err != nil {
		return err
	}
	if len(f["until"]) > 0 || len(f["label!"]) > 0 {
		return notImplemented("moatc does not support the network prune filters until and label! yet")
	}
	e.nw.mu.Lock()
	e.netLoad()
	var gone []*netRecord
	for _, rec := range e.nw.nets {
		if f.matchLabel(rec.Labels) && len(e.netUsers(rec.Name)) == 0 && e.removeNetworkLocked(rec.Name, rec) == nil {
			gone = append(gone, rec)
		}
	}
	e.nw.mu.Unlock()
	rep := network.PruneReport{NetworksDeleted: []string{}}
	for _, rec := range gone {
		rep.NetworksDeleted = append(rep.NetworksDeleted, rec.Name)
		e.emit(events.NetworkEventType, events.ActionDestroy, rec.ID, map[string]string{"name": rec.Name, "type": "bridge"})
	}
	return writeJSON(w, http.StatusOK, rep)
}

// connectTarget finds the container and the network of a connect or disconnect request.
func (e *Engine) connectTarget(r *http.Request, container string) (c *ctr, name, id string, err error) {
	if c, err = e.lookup(container); err != nil {
		return nil, "", "", err
	}
	e.nw.mu.Lock()
	defer e.nw.mu.Unlock()
	if name, _, err = e.findNetwork(r.PathValue("id")); err != nil {
		return nil, "", "", err
	}
	return c, name, e.netID(name), nil
}

// networkConnect is POST /networks/{id}/connect.
func networkConnect(e *Engine, w http.ResponseWriter, r *http.Request) error {
	var req network.ConnectRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		return err
	}
	var aliases []string
	if req.EndpointConfig != nil {
		aliases = req.EndpointConfig.Aliases
	}
	if err := checkNames("", aliases); err != nil {
		return err
	}
	c, name, id, err := e.connectTarget(r, req.Container)
	if err != nil {
		return err
	}
	if name == network.NetworkHost || name == network.NetworkNone {
		return forbidden("container cannot be connected to network %s: moatc keeps every container on the run's network", name)
	}
	if err := e.connect(c, name, aliases); err != nil {
		return err
	}
	e.emit(events.NetworkEventType, events.ActionConnect, id, map[string]string{"container": c.rec.ID, "name": name, "type": "bridge"})
	w.WriteHeader(http.StatusOK)
	return nil
}

// networkDisconnect is POST /networks/{id}/disconnect. The container keeps its address on the
// run's network: only its names on the network go.
func networkDisconnect(e *Engine, w http.ResponseWriter, r *http.Request) error {
	var req network.DisconnectRequest
	if err := decodeJSON(w, r, &req, false); err != nil {
		return err
	}
	c, name, id, err := e.connectTarget(r, req.Container)
	if err != nil {
		return err
	}
	if err := e.disconnect(c, name); err != nil {
		return err
	}
	e.emit(events.NetworkEventType, events.ActionDisconnect, id, map[string]string{"container": c.rec.ID, "name": name, "type": "bridge"})
	w.WriteHeader(http.StatusOK)
	return nil
}
