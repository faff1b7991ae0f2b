package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/containerd/platforms"
	"github.com/urfave/cli/v2"

	"github.com/moatc/moatc/ctrd"
	"github.com/moatc/moatc/snapshot"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "manage images in moatc's containerd namespace",
		Subcommands: []*cli.Command{
			{
				Name:      "import",
				Usage:     "import an image tar (OCI layout or `docker save`), or a root filesystem directory",
				ArgsUsage: "FILE",
				Description: `Imports images where no registry is reachable. FILE is an OCI image layout tar or a
docker-archive tar ('docker save'); '-' reads standard input.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Usage: "`REF` for an image the archive does not name"},
					jsonFlag,
				},
				Action: imageImportAction,
			},
			{
				Name:      "pack",
				Usage:     "make an image from a root filesystem directory",
				ArgsUsage: "DIR",
				Description: `Packs DIR (a root filesystem, e.g. from debootstrap) into a one-layer image named --name
and imports it, or writes it as an OCI image layout tar with -o (import it later with
'moatc image import'). The image is labelled moatc.built-locally=true.`,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "name", Required: true, Usage: "image `REF`, e.g. busybox:latest"},
					&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Usage: "write an OCI layout tar to `FILE` instead of importing"},
					jsonFlag,
				},
				Action: imagePackAction,
			},
			{
				Name:      "pull",
				Usage:     "pull an image from a registry",
				ArgsUsage: "REF",
				Flags:     []cli.Flag{jsonFlag},
				Action:    imagePullAction,
			},
			{
				Name:      "push",
				Usage:     "push an image of moatc's store to a registry",
				ArgsUsage: "SRC [DEST]",
				Description: `Pushes image SRC of moatc's store (a name as 'moatc image ls' shows it; busybox means
docker.io/library/busybox:latest) to a registry as DEST, a full reference with a tag such as
registry.example:5000/team/app:v1. DEST defaults to SRC's own name. moatc prints
'pushed DEST@DIGEST': that reference names exactly what was pushed.

Credentials come from the docker config, as Docker's do: ~/.docker/config.json, or
$DOCKER_CONFIG/config.json, with its credential helpers ('docker login HOST' writes them).
They are sent only to a registry that asks. Registries on localhost are spoken to over plain
HTTP, and those named with --insecure-registry; all others over HTTPS.

A multi-platform image whose other platforms are not in the store (a pull fetches the host's
alone) is pushed as the host platform's manifest by itself. Layers a pull skipped because
they were unpacked already are fetched first from the registry SRC's name points at.

Examples:
  moatc image push myapp:dev registry.example/team/myapp:dev
  moatc image push localhost:5000/tools:v1      # to the registry its name says
  moatc image push --insecure-registry 10.0.0.5:5000 \
      busybox 10.0.0.5:5000/busybox:1
  moatc image push -q --json myapp:dev ghcr.io/me/myapp:dev
      # prints {"source", "destination", "digest"}`,
				Flags: []cli.Flag{
					&cli.StringSliceFlag{Name: "insecure-registry", Usage: "speak plain HTTP to the registry at `HOST[:PORT]` (without a port: any of its ports); repeatable"},
					&cli.BoolFlag{Name: "quiet", Aliases: []string{"q"}, Usage: "no progress on standard error"},
					jsonFlag,
				},
				Action: imagePushAction,
			},
			{
				Name:    "ls",
				Aliases: []string{"list"},
				Usage:   "list images",
				Flags:   []cli.Flag{jsonFlag},
				Action:  imageListAction,
			},
			{
				Name:      "rm",
				Aliases:   []string{"remove"},
				Usage:     "remove images",
				ArgsUsage: "REF...",
				Flags:     []cli.Flag{jsonFlag},
				Action:    imageRemoveAction,
			},
		},
	}
}

func imageImportAction(c *cli.Context) error {
	var r io.Reader
	switch {
	case c.NArg() != 1:
		return usageError{fmt.Errorf("image import needs one FILE (an OCI layout or `docker save` tar; - for stdin)")}
	case c.Args().First() == "-":
		r = os.Stdin
	default:
		f, err := os.Open(c.Args().First())
		if err != nil {
			return fmt.Errorf("importing image: %w", err)
		}
		defer f.Close()
		r = f
	}
	return importImages(c, r, c.String("name"))
}

func imagePackAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{fmt.Errorf("image pack needs one DIR")}
	}
	full, err := ctrd.Normalize(c.String("name"))
	if err != nil {
		return err
	}
	img := snapshot.Image{Name: full, Rootfs: c.Args().First()}
	if err := img.Check(); err != nil {
		return err
	}
	if out := c.String("output"); out != "" {
		if err := snapshot.WriteOCIFile(out, img); err != nil {
			return err
		}
		if c.Bool("json") {
			return printJSON([]imageDone{{Name: full, Action: "packed", File: out}})
		}
		return nil
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(snapshot.WriteOCI(pw, img)) }()
	return importImages(c, pr, "")
}

func imagePullAction(c *cli.Context) error {
	if c.NArg() != 1 {
		return usageError{fmt.Errorf("image pull needs one REF, e.g. debian:bookworm-slim")}
	}
	cl, closeClient, err := imageClient(c)
	if err != nil {
		return err
	}
	defer closeClient()
	ctx, cancel := signalContext(c)
	defer cancel()
	img, err := cl.Pull(ctx, c.Args().First(), snapshot.Default(), func(d ocispec.Descriptor) {
		fmt.Fprintf(os.Stderr, "fetching %s %s (%s)\n", short(d.MediaType), d.Digest.Encoded()[:12], humanSize(d.Size))
	})
	if err != nil {
		return err
	}
	return printImages(c, "pulled", []string{img.Name()})
}

func imagePushAction(c *cli.Context) error {
	if c.NArg() < 1 || c.NArg() > 2 {
		return usageError{fmt.Errorf("image push needs SRC (see `moatc image ls`) and may take DEST, e.g. moatc image push myapp:dev registry.example/team/myapp:dev")}
	}
	src, dest := c.Args().Get(0), c.Args().Get(1)
	var insecure []string
	for _, v := range c.StringSlice("insecure-registry") {
		for _, h := range strings.Split(v, ",") {
			h = strings.TrimSpace(h)
			if h == "" || strings.Contains(h, "/") {
				return usageError{fmt.Errorf("--insecure-registry %q: give a HOST or HOST:PORT, such as 10.0.0.5:5000 (no scheme, no path)", v)}
			}
			insecure = append(insecure, h)
		}
	}
	srcName, err := ctrd.Normalize(src)
	if err != nil {
		return usageError{err}
	}
	if dest == "" {
		dest = srcName
	}
	destName, err := ctrd.Normalize(dest)
	if err != nil {
		return usageError{err}
	}
	cl, closeClient, err := imageClient(c)
	if err != nil {
		return err
	}
	defer closeClient()
	ctx, cancel := signalContext(c)
	defer cancel()
	opt := ctrd.PushOptions{Insecure: insecure}
	if !c.Bool("quiet") {
		opt.Progress = func(d ocispec.Descriptor) {
			fmt.Fprintf(os.Stderr, "pushing %s %s (%s)\n", short(d.MediaType), d.Digest.Encoded()[:12], humanSize(d.Size))
		}
		opt.Fetch = func(d ocispec.Descriptor) {
			fmt.Fprintf(os.Stderr, "fetching %s %s (%s) from %s first: moatc's store holds it unpacked only\n",
				short(d.MediaType), d.Digest.Encoded()[:12], humanSize(d.Size), ctrd.ShortName(srcName))
		}
	}
	d, err := cl.Push(ctx, src, dest, opt)
	if err != nil {
		return err
	}
	if d.Platform != nil {
		fmt.Fprintf(os.Stderr, "moatc: pushed the %s manifest alone: the image's other platforms are not in moatc's store\n", platforms.Format(*d.Platform))
	}
	if c.Bool("json") {
		return printJSON(imagePushed{Source: srcName, Destination: destName, Digest: d.Digest.String()})
	}
	fmt.Printf("pushed %s@%s\n", destName, d.Digest)
	return nil
}

// imagePushed is `moatc image push --json`'s output.
type imagePushed struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Digest      string `json:"digest"`
}

func imageListAction(c *cli.Context) error {
	cl, closeClient, err := imageClient(c)
	if err != nil {
		return err
	}
	defer closeClient()
	imgs, err := cl.Images(c.Context)
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if imgs == nil {
			imgs = []ctrd.ImageInfo{}
		}
		return printJSON(imgs)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tDIGEST\tSIZE\tCREATED")
	for _, i := range imgs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", i.Name, i.Digest[:19], humanSize(i.Size), i.Created)
	}
	return tw.Flush()
}

func imageRemoveAction(c *cli.Context) error {
	if c.NArg() == 0 {
		return usageError{fmt.Errorf("image rm needs a REF (see `moatc image ls`)")}
	}
	cl, closeClient, err := imageClient(c)
	if err != nil {
		return err
	}
	defer closeClient()
	var done []string
	for _, ref := range c.Args().Slice() {
		if err := cl.RemoveImage(c.Context, ref); err != nil {
			if len(done) > 0 {
				printImages(c, "removed", done)
			}
			return err
		}
		done = append(done, ref)
	}
	return printImages(c, "removed", done)
}

func importImages(c *cli.Context, r io.Reader, name string) error {
	cl, closeClient, err := imageClient(c)
	if err != nil {
		return err
	}
	defer closeClient()
	names, err := cl.Import(c.Context, r, snapshot.Default(), name)
	if err != nil {
		return err
	}
	return printImages(c, "imported", names)
}

// imageDone is one image a changing image command acted on, for --json.
type imageDone struct {
	Name   string `json:"name"`
	Action string `json:"action"` // imported, packed, pulled or removed
	File   string `json:"file,omitempty"`
}

// printImages prints the names, one a line, or with --json a list of imageDone.
func printImages(c *cli.Context, action string, names []string) error {
	if !c.Bool("json") {
		for _, n := range names {
			fmt.Println(n)
		}
		return nil
	}
	done := []imageDone{}
	for _, n := range names {
		done = append(done, imageDone{Name: n, Action: action})
	}
	return printJSON(done)
}

// imageClient is moatc's set-up and its containerd client, for the image commands; done
// closes them.
func imageClient(c *cli.Context) (*ctrd.Client, func(), error) {
	e, err := setup(c)
	if err != nil {
		return nil, nil, err
	}
	cl, err := e.mgr.Client(c.Context)
	if err != nil {
		e.mgr.Close()
		return nil, nil, err
	}
	return cl, e.mgr.Close, nil
}

func shortImage(name string) string { return ctrd.ShortName(name) }

func short(mediaType string) string {
	switch mediaType {
	case ocispec.MediaTypeImageIndex, "application/vnd.docker.distribution.manifest.list.v2+json":
		return "index"
	case ocispec.MediaTypeImageManifest, "application/vnd.docker.distribution.manifest.v2+json":
		return "manifest"
	case ocispec.MediaTypeImageConfig, "application/vnd.docker.container.image.v1+json":
		return "config"
	}
	return "layer"
}

func humanSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
