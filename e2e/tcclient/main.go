// Command tcclient is the testcontainers-go client of e2e/engine_tc_test.go: a testcontainers
// session (ryuk enabled) against the engine in DOCKER_HOST that starts a busybox httpd with an
// exposed port, fetches its page through the mapped port, prints what it saw as JSON and exits
// without terminating the container, so that only the reaper can remove it.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"

	"github.com/testcontainers/testcontainers-go"
	"github.com/testcontainers/testcontainers-go/wait"
)

type seen struct {
	ID       string `json:"id"`
	Endpoint string `json:"endpoint"`
	Body     string `json:"body"`
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "tcclient:", err)
		os.Exit(1)
	}
}

func run() error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	image := os.Getenv("TCCLIENT_IMAGE")
	if image == "" {
		image = "busybox"
	}
	c, err := testcontainers.Run(ctx, image,
		testcontainers.WithExposedPorts("8080/tcp"),
		testcontainers.WithCmd("sh", "-c", "mkdir -p /www && echo hello-from-testcontainers > /www/index.html && exec httpd -f -p 8080 -h /www"),
		testcontainers.WithWaitStrategy(wait.ForListeningPort("8080/tcp").WithStartupTimeout(time.Minute)),
	)
	if err != nil {
		return fmt.Errorf("starting the container: %w", err)
	}
	ep, err := c.PortEndpoint(ctx, "8080/tcp", "http")
	if err != nil {
		return fmt.Errorf("its endpoint: %w", err)
	}
	resp, err := http.Get(ep + "/index.html")
	if err != nil {
		return fmt.Errorf("fetching its page: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	return json.NewEncoder(os.Stdout).Encode(seen{ID: c.GetContainerID(), Endpoint: ep, Body: string(body)})
}
