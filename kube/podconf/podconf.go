// Package podconf is what moatc and its pod helper (cmd/moatc-pod) agree on. It is small so
// that the static helper does not carry the Kubernetes client.
package podconf

import "github.com/moatc/moatc/proxy"

// ProxyPort is where a cluster run's proxy pod listens.
const ProxyPort = 3128

// ProxyConfig is what the proxy pod serves with: the only place a run's grants are on the
// cluster, in a Secret that only the proxy pod mounts.
type ProxyConfig struct {
	Secret      string             `json:"secret"` // the workload's password at the proxy, not a grant
	Strict      bool               `json:"strict"`
	Allow       []string           `json:"allow,omitempty"`
	Credentials []proxy.Credential `json:"credentials,omitempty"`
	CACert      string             `json:"ca_cert"`
	CAKey       string             `json:"ca_key"`
	UpstreamCA  string             `json:"upstream_ca,omitempty"` // PEM the proxy trusts beside the system's roots
}
