package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/moatc/moatc/grant"
)

// errTokenArg refuses a token given as an argument. It never repeats the argument.
var errTokenArg = usageError{errors.New("a token is never an argument: it would land in `ps` and shell history; " +
	"pipe it instead, as in `printf %s \"$TOKEN\" | moatc grant github`")}

func grantCommand() *cli.Command {
	var subs []*cli.Command
	for _, p := range grant.Providers() {
		subs = append(subs, grantProviderCommand(p))
	}
	subs = append(subs, grantAddCommand(), grantListCommand())
	return &cli.Command{
		Name:      "grant",
		Usage:     "store an API token on the host, for runs to use without seeing it",
		ArgsUsage: "github|anthropic|openai|google|add|list",
		Description: `A grant is an API token kept on the host, sealed (AES-256-GCM) in moatc's home
(grants.json, with its key in grants.key or MOATC_GRANT_KEY). A run given the grant
(moatc run --grant github, or grants: [github] in moatc.yaml) reaches the grant's hosts
through moatc's proxy, which adds the token to each request there: the token never enters
the container.

The token is read from stdin when stdin is not a terminal; else from the provider's
environment variable; else from a prompt that does not echo. It is never an argument, where
it would land in ` + "`ps`" + ` and shell history.

  printf %s "$TOKEN" | moatc grant github   # api.github.com, uploads.github.com, git on github.com
  moatc grant anthropic                     # takes ANTHROPIC_API_KEY, or asks
  moatc grant openai < ~/openai.key         # from a file
  moatc grant google                        # a Gemini API key: GEMINI_API_KEY, or asks
  moatc grant add sentry --host sentry.io --header 'Authorization: Bearer {{token}}'
  moatc grant list                          # what is stored (never the tokens)
  moatc revoke github                       # delete a grant`,
		Subcommands:  subs,
		OnUsageError: grantUsageError,
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return cli.ShowSubcommandHelp(c)
			}
			// The word is not echoed: it may be a token typed where the provider belongs.
			return usageError{errors.New("grant takes github, anthropic, openai, google, add or list (see `moatc grant --help`); " +
				"a token is never an argument, where it would land in `ps` and shell history: pipe it, as in `printf %s \"$TOKEN\" | moatc grant github`")}
		},
	}
}

func grantProviderCommand(p grant.Provider) *cli.Command {
	var rules strings.Builder
	for _, r := range p.Rules {
		for _, h := range r.Headers {
			fmt.Fprintf(&rules, "  %-20s %s: %s\n", r.Host, h.Name, h.Template)
		}
	}
	env := "$" + strings.Join(p.Env, ", else $")
	return &cli.Command{
		Name:      p.Name,
		Usage:     fmt.Sprintf("store your %s (for %s)", p.Title, strings.Join(grant.Hosts(grant.Grant{Rules: p.Rules}), ", ")),
		ArgsUsage: " ",
		Description: fmt.Sprintf(`Stores your %s as the grant %s, replacing one stored before. Runs that name it
(moatc run --grant %s) get these headers on their requests from moatc's proxy:
%s
The token is read from stdin when it is piped; else from the environment:
  %s
else from a prompt that does not echo. It is never an argument (it would land in `+"`ps`"+`
and shell history).

  printf %%s "$%s" | moatc grant %s
  moatc grant %s < token-file
  moatc grant %s            # takes %s, or asks`,
			p.Title, p.Name, p.Name, rules.String(), env, p.Env[0], p.Name, p.Name, p.Name, env),
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: grantUsageError,
		Action: func(c *cli.Context) error {
			args, err := grantArgs(c)
			if err != nil || c.Bool("help") {
				return err
			}
			if len(args) > 0 {
				return errTokenArg
			}
			token, err := readGrantToken(p.Title, p.Env, "", "moatc grant "+p.Name)
			if err != nil {
				return err
			}
			return storeGrant(c, grant.Grant{Name: p.Name, Kind: p.Name, Rules: p.Rules}, token)
		},
	}
}

// headerList collects --header values whole: a template may hold a comma, which a
// cli.StringSliceFlag would split on.
type headerList []string

func (h *headerList) Set(v string) error { *h = append(*h, v); return nil }
func (h *headerList) String() string     { return "" }

func grantAddCommand() *cli.Command {
	headers := &headerList{}
	return &cli.Command{
		Name:      "add",
		Usage:     "store a token for any HTTP API, with the headers that carry it",
		ArgsUsage: "NAME --host HOST --header 'Name: template'",
		Description: `Stores a token as the grant NAME for the hosts given. For each request to one of them,
the proxy sets each --header, with the template's placeholder replaced:
  {{token}}          the token itself
  {{basic:USER}}     HTTP basic auth: base64 of USER:token (write 'Basic {{basic:USER}}')
A template holds exactly one placeholder. Hosts are exact names (no port, no wildcard).
The token is read from --token-env's variable when given, else from stdin when it is
piped, else from a prompt that does not echo; never from an argument (it would land in
` + "`ps`" + ` and shell history).

  printf %s "$SENTRY_TOKEN" | moatc grant add sentry --host sentry.io \
      --header 'Authorization: Bearer {{token}}'
  moatc grant add hf --host huggingface.co --token-env HF_TOKEN \
      --header 'Authorization: Bearer {{token}}'
  moatc grant add gitlab --host gitlab.com,gitlab.example.com \
      --header 'Authorization: Basic {{basic:oauth2}}'`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "host", Usage: "a `HOST` the grant is for; repeat it or separate hosts with commas"},
			&cli.GenericFlag{Name: "header", Value: headers, Usage: "a header to set, as `'Name: template'`, e.g. 'Authorization: Bearer {{token}}'; repeatable"},
			&cli.StringFlag{Name: "token-env", Usage: "read the token from the environment `VARIABLE`"},
			jsonFlag,
		},
		OnUsageError: grantUsageError,
		Action: func(c *cli.Context) error {
			args, err := grantArgs(c)
			if err != nil || c.Bool("help") {
				return err
			}
			switch {
			case len(args) == 0:
				return usageError{errors.New("grant add needs a NAME, such as `moatc grant add sentry --host sentry.io --header 'Authorization: Bearer {{token}}'`")}
			case len(args) > 1:
				return errTokenArg
			case len(c.StringSlice("host")) == 0:
				return usageError{errors.New("grant add needs --host: the hosts that get the token, such as --host api.example.com")}
			case len(*headers) == 0:
				return usageError{errors.New("grant add needs --header: how the token is sent, such as --header 'Authorization: Bearer {{token}}'")}
			}
			name := args[0]
			var hs []grant.Header
			for _, v := range *headers {
				n, t, ok := strings.Cut(v, ":")
				if !ok {
					// Not quoted back: it may be a token given in place of the template.
					return usageError{errors.New("a --header is not 'Name: template': write it as --header 'Authorization: Bearer {{token}}'")}
				}
				hs = append(hs, grant.Header{Name: strings.TrimSpace(n), Template: strings.TrimSpace(t)})
			}
			g := grant.Grant{Name: name, Kind: grant.Custom}
			// The app keeps flag values whole (an -e value may hold commas): hosts are split here.
			for _, v := range c.StringSlice("host") {
				for _, h := range strings.Split(v, ",") {
					g.Rules = append(g.Rules, grant.Rule{Host: strings.TrimSpace(h), Headers: hs})
				}
			}
			if err := grant.Validate(g); err != nil {
				return usageError{fmt.Errorf("grant add %s: %w", name, err)}
			}
			token, err := readGrantToken("Token for "+name, nil, c.String("token-env"), "moatc grant add "+name+" ...")
			if err != nil {
				return err
			}
			return storeGrant(c, g, token)
		},
	}
}

func grantListCommand() *cli.Command {
	return &cli.Command{
		Name:         "list",
		Aliases:      []string{"ls"},
		Usage:        "list the stored grants (never their tokens)",
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: grantUsageError,
		Action: func(c *cli.Context) error {
			args, err := grantArgs(c)
			if err != nil || c.Bool("help") {
				return err
			}
			if len(args) > 0 {
				return usageError{errors.New("grant list takes no arguments")}
			}
			gs, err := grant.Open(c.String("home")).List()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				views := []grantView{}
				for _, g := range gs {
					views = append(views, grantView{g, grant.Hosts(g)})
				}
				return printJSON(views)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tKIND\tHOSTS\tCREATED")
			for _, g := range gs {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s ago\n", g.Name, g.Kind, strings.Join(grant.Hosts(g), ","), ago(g.Created))
			}
			return tw.Flush()
		},
	}
}

func revokeCommand() *cli.Command {
	return &cli.Command{
		Name:      "revoke",
		Usage:     "delete a stored grant",
		ArgsUsage: "NAME",
		Description: `Deletes the grant NAME and its sealed token from moatc's home. Runs started from then on
no longer get it. If the token may have leaked, revoke it at its provider too.

  moatc grant list       # the stored grants
  moatc revoke github`,
		Flags:        []cli.Flag{jsonFlag},
		OnUsageError: grantUsageError,
		Action: func(c *cli.Context) error {
			args, err := grantArgs(c)
			if err != nil || c.Bool("help") {
				return err
			}
			if len(args) != 1 {
				return usageError{errors.New("revoke needs one NAME (see `moatc grant list`)")}
			}
			if err := grant.Open(c.String("home")).Remove(args[0]); err != nil {
				return fmt.Errorf("revoking %s: %w", args[0], err)
			}
			if c.Bool("json") {
				return printJSON(map[string]any{"name": args[0], "revoked": true})
			}
			fmt.Printf("revoked grant %s: runs started from now on do not get it\n", args[0])
			return nil
		},
	}
}

// grantView is a grant as `moatc grant` prints it: what is stored, the hosts, never the token.
type grantView struct {
	grant.Grant
	Hosts []string `json:"hosts"`
}

func storeGrant(c *cli.Context, g grant.Grant, token string) error {
	store := grant.Open(c.String("home"))
	if err := store.Put(g, token); err != nil {
		return err
	}
	gs, err := store.List()
	if err != nil {
		return err
	}
	for _, s := range gs {
		if s.Name != g.Name {
			continue
		}
		if c.Bool("json") {
			return printJSON(grantView{s, grant.Hosts(s)})
		}
		fmt.Printf("stored grant %s for %s in %s\n", s.Name, strings.Join(grant.Hosts(s), ", "), store.Path())
		fmt.Printf("runs given it (moatc run --grant %s) get it through the proxy, never in the container\n", s.Name)
		return nil
	}
	return fmt.Errorf("storing grant %s: it is not in %s after writing it; another moatc may have revoked it", g.Name, store.Path())
}

// readGrantToken gets the token without it being an argument: from tokenEnv when given, else
// from stdin when it is not a terminal and not empty, else from the first of envs that is
// set, else from a prompt on the terminal. example is the command, to say how to pipe it.
func readGrantToken(what string, envs []string, tokenEnv, example string) (string, error) {
	if tokenEnv != "" {
		v, ok := os.LookupEnv(tokenEnv)
		if !ok || v == "" {
			return "", fmt.Errorf("reading the token: --token-env %s names a variable that is not set or empty: export it, or pipe the token instead", tokenEnv)
		}
		fmt.Fprintf(os.Stderr, "moatc: using the token in $%s\n", tokenEnv)
		return v, nil
	}
	fd := int(os.Stdin.Fd())
	tty := term.IsTerminal(fd)
	if !tty {
		// +3: room for a maximal token with its CRLF, and one byte to tell it is too long.
		b, err := io.ReadAll(io.LimitReader(os.Stdin, grant.MaxToken+3))
		if err != nil {
			return "", fmt.Errorf("reading the token from stdin: %w", err)
		}
		if len(b) > grant.MaxToken+2 {
			return "", fmt.Errorf("reading the token from stdin: it holds more than %d bytes, more than a token: pipe the token alone", grant.MaxToken)
		}
		if len(b) > 0 {
			return string(b), nil
		}
	}
	for _, e := range envs {
		if v := os.Getenv(e); v != "" {
			fmt.Fprintf(os.Stderr, "moatc: using the token in $%s\n", e)
			return v, nil
		}
	}
	if !tty {
		vars := ""
		switch len(envs) {
		case 0:
		case 1:
			vars = " and $" + envs[0] + " is not set"
		default:
			vars = " and none of $" + strings.Join(envs, ", $") + " is set"
		}
		return "", fmt.Errorf("reading the token: stdin is empty%s: pipe the token, as in `printf %%s \"$TOKEN\" | %s`", vars, example)
	}
	return promptToken(fd, what)
}

// promptToken asks on the terminal without echo, and puts echo back if interrupted.
func promptToken(fd int, what string) (string, error) {
	st, err := term.GetState(fd)
	if err != nil {
		return "", fmt.Errorf("reading the token from the terminal: %w", err)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	done := make(chan struct{})
	defer func() { signal.Stop(sig); close(done) }()
	go func() {
		select {
		case <-sig:
			term.Restore(fd, st)
			fmt.Fprintln(os.Stderr)
			os.Exit(130)
		case <-done:
		}
	}()
	fmt.Fprintf(os.Stderr, "%s (input is hidden): ", what)
	b, err := term.ReadPassword(fd)
	fmt.Fprintln(os.Stderr)
	if err != nil {
		return "", fmt.Errorf("reading the token from the terminal: %w", err)
	}
	return string(b), nil
}

// grantArgs returns the command's arguments, parsing flags that come after them: urfave/cli
// stops at the first argument, and `moatc grant add NAME --host h` should work as shown.
// With --help among them, it shows the help (and the caller returns).
func grantArgs(c *cli.Context) ([]string, error) {
	set := flag.NewFlagSet(c.Command.Name, flag.ContinueOnError)
	set.SetOutput(io.Discard)
	for _, f := range c.Command.Flags {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			set.Var(forwardFlag{c, f.Names()[0], isBool}, n, "")
		}
	}
	var args []string
	rest := c.Args().Slice()
	for len(rest) > 0 {
		if err := set.Parse(rest); err != nil {
			return nil, usageError{err}
		}
		left := set.Args()
		if len(left) == 0 {
			break
		}
		if n := len(rest) - len(left); n > 0 && rest[n-1] == "--" {
			args = append(args, left...)
			break
		}
		args, rest = append(args, left[0]), left[1:]
	}
	if c.Bool("help") {
		return nil, cli.ShowCommandHelp(c.Lineage()[1], c.Command.Name)
	}
	return args, nil
}

// forwardFlag sets a flag of the command's own flag set, where c.String and the rest read it.
type forwardFlag struct {
	c      *cli.Context
	name   string
	isBool bool
}

func (f forwardFlag) Set(v string) error { return f.c.Set(f.name, v) }
func (f forwardFlag) String() string     { return "" }
func (f forwardFlag) IsBoolFlag() bool   { return f.isBool }

// grantUsageError makes a flag mistake exit 2, as the app's own do.
func grantUsageError(_ *cli.Context, err error, _ bool) error { return usageError{err} }
