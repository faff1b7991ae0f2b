package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// The bash and zsh scripts ask moatc itself for the words that may come next (the command
// line so far plus --generate-bash-completion): subcommands and flags stay in step with the
// binary. urfave/cli answers that flag before any command's action runs.
const bashCompletion = `# bash completion for moatc
_moatc_complete() {
	local cur="${COMP_WORDS[COMP_CWORD]}" words
	local line=("${COMP_WORDS[@]:0:COMP_CWORD}") w
	COMPREPLY=()
	# After --, every word is the workload's: complete file names, and never ask moatc (the
	# line would be a command it runs).
	for w in "${line[@]}"; do
		[[ "$w" == "--" ]] && return 0
	done
	if [[ "$cur" == -* ]]; then
		line+=("$cur")
	fi
	words=$("${line[@]}" --generate-bash-completion 2>/dev/null) || return 0
	COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o bashdefault -o default -F _moatc_complete moatc
`

const zshCompletion = `#compdef moatc
# zsh completion for moatc
_moatc() {
	local -a opts
	local cur="${words[CURRENT]}"
	local -a line
	line=("${(@)words[1,CURRENT-1]}")
	# After --, every word is the workload's: complete file names, and never ask moatc.
	if (( ${line[(Ie)--]} )); then
		_files
		return
	fi
	if [[ "$cur" == -* ]]; then
		line+=("$cur")
	fi
	opts=("${(@f)$("${(@)line}" --generate-bash-completion 2>/dev/null)}")
	if [[ -n "${opts[1]}" ]]; then
		compadd -a opts
	else
		_files
	fi
}
if [[ "${funcstack[1]}" == "_moatc" ]]; then
	_moatc "$@"
else
	compdef _moatc moatc
fi
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script (bash, zsh or fish)",
		ArgsUsage: "bash|zsh|fish",
		Description: `Prints a script that completes moatc's commands and flags. To install it:

  bash:  moatc completion bash > /etc/bash_completion.d/moatc
         (or, for one user: echo 'source <(moatc completion bash)' >> ~/.bashrc)
  zsh:   moatc completion zsh > "${fpath[1]}/_moatc"
         (or: echo 'source <(moatc completion zsh)' >> ~/.zshrc, after compinit)
  fish:  moatc completion fish > ~/.config/fish/completions/moatc.fish

then start a new shell.`,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usageError{fmt.Errorf("completion needs one shell: bash, zsh or fish")}
			}
			s, err := completionScript(c.App, c.Args().First())
			if err != nil {
				return err
			}
			fmt.Print(s)
			return nil
		},
	}
}

// completionScript returns the script for shell.
func completionScript(app *cli.App, shell string) (string, error) {
	switch shell {
	case "bash":
		return bashCompletion, nil
	case "zsh":
		return zshCompletion, nil
	case "fish":
		s, err := app.ToFishCompletion()
		if err != nil {
			return "", fmt.Errorf("making the fish completion: %w", err)
		}
		// urfave lists --help twice where a command has it twice, and keeps the backquotes
		// that name a flag's value: one line each, plain words.
		var out []string
		seen := map[string]bool{}
		for _, l := range strings.Split(strings.ReplaceAll(s, "`", ""), "\n") {
			if l != "" && seen[l] {
				continue
			}
			seen[l] = true
			out = append(out, l)
		}
		return strings.TrimRight(strings.Join(out, "\n"), "\n") + "\n", nil
	}
	return "", usageError{fmt.Errorf("no completion for shell %q: use bash, zsh or fish", shell)}
}
