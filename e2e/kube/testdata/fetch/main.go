// fetch GETs each URL it is given with Go's default client (HTTPS_PROXY and SSL_CERT_FILE
// from the environment, as curl honours them) and prints the status and body, or the error.
// The kube tests build it into the workspace of a cluster run.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() {
	c := &http.Client{Timeout: 20 * time.Second}
	failed := false
	for _, u := range os.Args[1:] {
		resp, err := c.Get(u)
		if err != nil {
			fmt.Printf("%s: error: %v\n", u, err)
			failed = true
			continue
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		fmt.Printf("%s: %d %s\n", u, resp.StatusCode, b)
	}
	if failed {
		os.Exit(3)
	}
}
