package main

import (
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"github.com/urfave/cli/v2"
)

// helpWidth is the terminal width help is laid out for.
const helpWidth = 80

// flagIndent is where a flag's usage starts, under its name: the templates put the name at
// column 3 and pad the flag's further lines by 6.
const flagIndent = 8

// installHelp makes help fit helpWidth columns: each flag's usage goes under its name,
// wrapped, and prose (descriptions, command lists) is reflowed; indented lines (examples) are
// kept as written unless too long.
func installHelp() {
	cli.FlagStringer = flagString
	cli.HelpPrinter = func(w io.Writer, templ string, data any) {
		cli.HelpPrinterCustom(w, templ, data, map[string]any{"wrap": reflow})
	}
}

// flagString renders a flag as "-e, --env K=V" and its usage below, wrapped.
func flagString(f cli.Flag) string {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return strings.Join(f.Names(), ", ")
	}
	placeholder, usage := unquoteUsage(df.GetUsage())
	if df.TakesValue() && placeholder == "" {
		placeholder = "value"
	}
	names := append([]string(nil), df.Names()...)
	// Short forms first, as in -e, --env.
	sort.SliceStable(names, func(i, j int) bool { return len(names[i]) == 1 && len(names[j]) > 1 })
	for i, n := range names {
		if len(n) == 1 {
			names[i] = "-" + n
		} else {
			names[i] = "--" + n
		}
	}
	head := strings.Join(names, ", ")
	if placeholder != "" {
		head += " " + placeholder
	}
	if _, isBool := f.(*cli.BoolFlag); !isBool {
		switch d := df.GetDefaultText(); d {
		case "", `""`, "0", "[]":
		default:
			usage += " (default: " + d + ")"
		}
	}
	if env := df.GetEnvVars(); len(env) > 0 {
		usage += " [$" + strings.Join(env, ", $") + "]"
	}
	// The template pads every line after the first by 6; two more put the usage under the name.
	lines := wrapWords(strings.TrimSpace(usage), helpWidth-flagIndent)
	for i := range lines {
		lines[i] = "  " + lines[i]
	}
	return head + "\n" + strings.Join(lines, "\n")
}

// unquoteUsage takes the first `quoted` word of a usage as the flag's placeholder, as
// urfave/cli does.
func unquoteUsage(usage string) (placeholder, text string) {
	i := strings.IndexByte(usage, '`')
	if i < 0 {
		return "", usage
	}
	j := strings.IndexByte(usage[i+1:], '`')
	if j < 0 {
		return "", usage
	}
	placeholder = usage[i+1 : i+1+j]
	return placeholder, usage[:i] + placeholder + usage[i+1+j+1:]
}

// reflow is the templates' wrap: its first line goes where the template is, the others are
// padded by offset. Runs of unindented lines are prose, joined and wrapped; an indented line
// is kept unless it is too long.
func reflow(input string, offset int) string {
	width := helpWidth - offset
	var out, para []string
	flush := func() {
		if len(para) > 0 {
			out = append(out, wrapWords(strings.Join(para, " "), width)...)
			para = nil
		}
	}
	for _, l := range strings.Split(strings.TrimRight(input, "\n"), "\n") {
		if l != "" && l[0] != ' ' && l[0] != '\t' {
			para = append(para, l)
			continue
		}
		flush()
		if l = shrinkGap(l, width); utf8.RuneCountInString(l) <= width {
			out = append(out, l)
			continue
		}
		indent := l[:len(l)-len(strings.TrimLeft(l, " \t"))]
		for i, w := range wrapWords(l, width-len(indent)-2) {
			if i > 0 {
				w = "  " + w
			}
			out = append(out, indent+w)
		}
	}
	flush()
	pad := strings.Repeat(" ", offset)
	for i := 1; i < len(out); i++ {
		if out[i] != "" {
			out[i] = pad + out[i]
		}
	}
	return strings.Join(out, "\n")
}

// shrinkGap narrows the widest run of spaces inside an indented line (the gap before an
// aligned # comment in an example) down to two, as far as the line needs to fit width.
func shrinkGap(l string, width int) string {
	over := utf8.RuneCountInString(l) - width
	body := strings.TrimLeft(l, " \t")
	start, n := -1, 0
	for i := 0; i < len(body); {
		j := i
		for j < len(body) && body[j] == ' ' {
			j++
		}
		if j-i > n {
			start, n = i, j-i
		}
		if j == i {
			j++
		}
		i = j
	}
	if over <= 0 || n <= 2 {
		return l
	}
	keep := max(2, n-over)
	return l[:len(l)-len(body)] + body[:start] + strings.Repeat(" ", keep) + body[start+n:]
}

// wrapWords breaks text into lines of at most width columns, at spaces; a longer word gets a
// line of its own.
func wrapWords(text string, width int) []string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(text) {
		switch {
		case line == "":
			line = w
		case utf8.RuneCountInString(line)+1+utf8.RuneCountInString(w) > width:
			lines = append(lines, line)
			line = w
		default:
			line += " " + w
		}
	}
	if line != "" || len(lines) == 0 {
		lines = append(lines, line)
	}
	return lines
}
