package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// cannedAnswer is what the fake APIs answer every prompt with.
const cannedAnswer = "CANNED-ANSWER-42"

// anthropicAnswer is a streamed Messages API reply (what Claude Code reads).
var anthropicAnswer = strings.Join([]string{
	`event: message_start`,
	`data: {"type":"message_start","message":{"id":"msg_fake1","type":"message","role":"assistant","model":"claude-fake","content":[],"stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":1}}}`, ``,
	`event: content_block_start`,
	`data: {"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}`, ``,
	`event: content_block_delta`,
	`data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"` + cannedAnswer + `"}}`, ``,
	`event: content_block_stop`,
	`data: {"type":"content_block_stop","index":0}`, ``,
	`event: message_delta`,
	`data: {"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":1}}`, ``,
	`event: message_stop`,
	`data: {"type":"message_stop"}`, ``, ``,
}, "\n")

// openaiAnswer is a streamed Responses API reply (what Codex reads).
var openaiAnswer = strings.Join([]string{
	`event: response.created`,
	`data: {"type":"response.created","response":{"id":"resp_fake1"}}`, ``,
	`event: response.output_item.done`,
	`data: {"type":"response.output_item.done","output_index":0,"item":{"type":"message","role":"assistant","id":"msg_fake1","content":[{"type":"output_text","text":"` + cannedAnswer + `"}]}}`, ``,
	`event: response.completed`,
	`data: {"type":"response.completed","response":{"id":"resp_fake1","usage":{"input_tokens":1,"input_tokens_details":null,"output_tokens":1,"output_tokens_details":null,"total_tokens":2}}}`, ``, ``,
}, "\n")

// serveSSE answers a POST with body as an event stream; anything else (a WebSocket attempt,
// a HEAD) is 404, which the agents take as "use the POST".
func serveSSE(w http.ResponseWriter, r *http.Request, body string) {
	if r.Method != http.MethodPost {
		http.NotFound(w, r)
		return
	}
	io.Copy(io.Discard, r.Body)
	w.Header().Set("Content-Type", "text/event-stream")
	io.WriteString(w, body)
}

// upstreamProxy is the host's HTTPS proxy for moatc's run proxies (HTTPS_PROXY of the moatc
// process): it sends every CONNECT, whatever host it names, to the fake API, so an agent
// speaks to api.anthropic.com as it would for real and the fake answers. It records the
// hosts asked for.
type upstreamProxy struct {
	addr  string
	mu    sync.Mutex
	hosts []string
}

func newUpstreamProxy(t *testing.T, apiPort int) *upstreamProxy {
	t.Helper()
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &upstreamProxy{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				req, err := http.ReadRequest(bufio.NewReader(c))
				if err != nil || req.Method != http.MethodConnect {
					io.WriteString(c, "HTTP/1.1 405 Method Not Allowed\r\n\r\n")
					return
				}
				p.mu.Lock()
				p.hosts = append(p.hosts, req.Host)
				p.mu.Unlock()
				up, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", apiPort))
				if err != nil {
					io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
					return
				}
				defer up.Close()
				io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
				go io.Copy(up, c)
				io.Copy(c, up)
			}()
		}
	}()
	t.Cleanup(func() { l.Close() })
	return p
}

// TestAgents: each agent is one command. Its CLI comes from the npm registry into the run's
// image; claude and codex each run one prompt under gVisor, through moatc's proxy to a fake of
// their API (reached as api.anthropic.com and api.openai.com, through the host's proxy): the
// fake sees the real key, which the proxy added, and answers; the agent prints the answer;
// the key is nowhere in the container's environment, its state or its log; the strict policy
// keeps everything else out. gemini and copilot build and print their version.
func TestAgents(t *testing.T) {
	requireStack(t)
	api := newFakeAPI(t)
	up := newUpstreamProxy(t, api.port)
	ws := workspace(t)
	// One image for all four: each agent command adds only what the workspace lacks.
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies: [node, claude-code, codex, gemini-cli, copilot]\n"), 0o644)
	keys := map[string]string{"anthropic": "sk-ant-e2e-REALKEY-1f3a", "openai": "sk-openai-e2e-REALKEY-9c2b",
		"google": "gemini-e2e-REALKEY-77aa", "github": "github_pat_e2e_REALKEY_0d41"}
	for name, key := range keys {
		if r := moatcRun(t, opts{stdin: key}, "grant", name); r.code != 0 {
			t.Fatalf("grant %s: %s", name, r.stderr)
		}
	}
	defer func() {
		for name := range keys {
			moatcRun(t, opts{}, "revoke", name)
		}
	}()

	for i, name := range []string{"claude", "codex", "gemini", "copilot"} {
		o := opts{}
		if i == 0 {
			// The first builds the image: node and four agents from npm, slow on a machine
			// whose caches are cold.
			o.timeout = 12 * time.Minute
		}
		r := moatcRun(t, o, name, "-q", ws, "--", "--version")
		if r.code != 0 || !strings.ContainsAny(r.stdout, "0123456789") {
			t.Fatalf("moatc %s -- --version: exit %d\nstdout %s\nstderr %s", name, r.code, r.stdout, tailOf(r.stderr))
		}
		t.Logf("%s: %s", name, strings.TrimSpace(r.stdout))
	}

	for _, tc := range []struct{ agent, grant, header string }{
		{"claude", "anthropic", "X-Api-Key"},
		{"codex", "openai", "Authorization"},
	} {
		t.Run(tc.agent, func(t *testing.T) {
			api.reset()
			name := "agent-" + tc.agent
			r := moatcRun(t, opts{env: []string{"HTTPS_PROXY=http://" + up.addr, "NO_PROXY="}}, tc.agent, "-q", "-n", name,
				"--upstream-ca", api.caFile, "-p", "say the canned answer", ws)
			if r.code != 0 || !strings.Contains(r.stdout, cannedAnswer) {
				t.Fatalf("moatc %s -p: exit %d\nstdout %s\nstderr %s\nupstream CONNECTs %v", tc.agent, r.code, r.stdout, tailOf(r.stderr), up.hosts)
			}
			key := keys[tc.grant]
			sawKey := false
			for _, req := range api.requests() {
				v := req.APIKey
				if tc.header == "Authorization" {
					v = strings.TrimPrefix(req.Authorization, "Bearer ")
				}
				if strings.HasPrefix(req.Path, "/v1/") && v == key {
					sawKey = true
				}
				if strings.Contains(v, "moatc-proxy") {
					t.Errorf("the fake API got the placeholder on %s: the proxy did not put the key", req.Path)
				}
			}
			if !sawKey {
				t.Errorf("the fake API never saw the real key: %+v", api.requests())
			}
			// The key is nowhere the workload can look: the container's environment, the
			// agent's state, the run's log.
			st := status(t, name)
			spec, _ := json.Marshal(mustRun(t, "status", "--json", name).stdout)
			if strings.Contains(string(spec), key) {
				t.Errorf("the key is in the run's record (its environment)")
			}
			// Its state stays for the next run of this workspace, in moatc's home.
			state, _ := filepath.Glob(filepath.Join(home, "agents", tc.agent, filepath.Base(ws)+"-*", "."+map[string]string{"claude": "claude", "codex": "codex"}[tc.agent]+"*"))
			if len(state) == 0 {
				t.Errorf("%s kept no state in moatc's home", tc.agent)
			}
			scanForKey(t, filepath.Join(home, "agents", tc.agent), key)
			scanForKey(t, filepath.Join(home, "runs", st.ID), key)
		})
	}

	// Strict by default: from inside claude's run nothing but its API and npm's registry is
	// reachable, through the proxy or around it.
	probe := `const http=require("http"),net=require("net");const u=new URL(process.env.HTTPS_PROXY);
const c=http.request({host:u.hostname,port:u.port,method:"CONNECT",path:"example.com:443",headers:{"Proxy-Authorization":"Basic "+Buffer.from(decodeURIComponent(u.username)+":"+decodeURIComponent(u.password)).toString("base64")}});
c.on("connect",r=>{console.log("connect example.com: "+r.statusCode+" "+r.headers["x-moatc-blocked"]);d()});c.on("error",e=>{console.log("connect example.com: "+e.code);d()});c.end();
function d(){const s=net.connect({host:"1.1.1.1",port:443,timeout:3000});s.on("connect",()=>{console.log("direct: open");process.exit(0)});
s.on("timeout",()=>{console.log("direct: closed");process.exit(0)});s.on("error",e=>{console.log("direct: closed");process.exit(0)})}`
	r := moatcRun(t, opts{}, "claude", "-q", "--entrypoint", "node", ws, "--", "-e", probe)
	if r.code != 0 || !strings.Contains(r.stdout, "connect example.com: 407 network-policy") || !strings.Contains(r.stdout, "direct: closed") {
		t.Errorf("strict agent run reached beyond its hosts: exit %d stdout %q stderr %s", r.code, r.stdout, tailOf(r.stderr))
	}
	// The agent's exit code is moatc's.
	if r := moatcRun(t, opts{}, "claude", "-q", "--entrypoint", "node", ws, "--", "-e", "process.exit(7)"); r.code != 7 {
		t.Errorf("an agent exiting 7: moatc exited %d: %s", r.code, tailOf(r.stderr))
	}
	// Bad input: an unknown agent, a version npm does not have, a missing grant.
	if r := moatcRun(t, opts{}, "claud"); r.code != 2 || !strings.Contains(r.stderr, "did you mean `moatc claude`") {
		t.Errorf("moatc claud: exit %d stderr %q", r.code, r.stderr)
	}
	if r := moatcRun(t, opts{}, "claude", "-q", "--agent-version", "999.0.0", ws, "--", "--version"); r.code != 125 || !strings.Contains(r.stderr, "No matching version found for @anthropic-ai/claude-code@999.0.0") || !strings.Contains(r.stderr, "full build log") {
		t.Errorf("a version npm does not have: exit %d stderr %s", r.code, tailOf(r.stderr))
	}
	mustRun(t, "revoke", "google")
	if r := moatcRun(t, opts{}, "gemini", "-q", "-p", "hi", ws); r.code != 125 || !strings.Contains(r.stderr, "moatc grant google") {
		t.Errorf("gemini without its grant: exit %d stderr %q", r.code, r.stderr)
	}

	dry := mustRun(t, "claude", "--dry-run", ws).stdout
	if !strings.Contains(dry, "policy:      strict") || strings.Contains(dry, "example.com") || !strings.Contains(dry, "api.anthropic.com") {
		t.Errorf("claude --dry-run:\n%s", dry)
	}
	// agent: in moatc.yaml: `moatc run` with no command starts it, once the file is trusted
	// (it brings a grant). Same dependencies: the same image.
	os.WriteFile(filepath.Join(ws, "moatc.yaml"), []byte("dependencies: [node, claude-code, codex, gemini-cli, copilot]\nagent:\n  name: codex\n  args: [--version]\n"), 0o644)
	if r := moatcRun(t, opts{}, "run", "-q", ws); r.code != 125 || !strings.Contains(r.stderr, "agent:") || !strings.Contains(r.stderr, "moatc trust") {
		t.Errorf("an untrusted agent: key: exit %d stderr %s", r.code, r.stderr)
	}
	mustRun(t, "trust", ws)
	if r := moatcRun(t, opts{}, "run", "-q", ws); r.code != 0 || !strings.Contains(r.stdout, "codex-cli") {
		t.Errorf("moatc run with agent: codex: exit %d stdout %q stderr %s", r.code, r.stdout, tailOf(r.stderr))
	}
}

// scanForKey fails the test if any file under dir holds key.
func scanForKey(t *testing.T, dir, key string) {
	t.Helper()
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err != nil || !fi.Mode().IsRegular() {
			return nil
		}
		if b, err := os.ReadFile(p); err == nil && strings.Contains(string(b), key) {
			t.Errorf("the key is in %s", p)
		}
		return nil
	})
}
