package main

import (
	"context"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/shim"
)

func main() {
	a, err := shim.SocketAddress(namespaces.WithNamespace(context.Background(), os.Args[2]), os.Args[1], os.Args[3], false)
	fmt.Println(a, err)
}
