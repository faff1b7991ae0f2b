package main

import (
	"fmt"
	"io"
	"os"
	"text/tabwriter"

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
