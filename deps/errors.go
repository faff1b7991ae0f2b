package deps

import (
	"errors"
	"fmt"
	"strings"
)

// Entry is one item of a `dependencies:` list and where it was written, so that every error
// can point at it.
type Entry struct {
	Text string // as written, e.g. "node@22"
	File string // the config file, e.g. "moatc.yaml"; may be empty
	Line int    // 1-based line in File; 0 when unknown
}

// Position is "file:line", "line N" or "" as far as it is known.
func (e Entry) Position() string {
	switch {
	case e.File != "" && e.Line > 0:
		return fmt.Sprintf("%s:%d", e.File, e.Line)
	case e.File != "":
		return e.File
	case e.Line > 0:
		return fmt.Sprintf("line %d", e.Line)
	}
	return ""
}

// Code classifies an Error.
type Code string

const (
	ErrSyntax      Code = "syntax"      // not a well-formed entry: bad name or version syntax
	ErrUnknown     Code = "unknown"     // no registry entry of that name (see Suggestions)
	ErrVersion     Code = "version"     // the entry has no such version, or takes none
	ErrConflict    Code = "conflict"    // two entries that cannot both hold (both in Entries)
	ErrRequires    Code = "requires"    // the entry needs another that is not in the list
	ErrUnsupported Code = "unsupported" // cannot be built here: plain docker, pip without an index
)

// Error is a problem with one entry (or, for a conflict, two). Parse and Resolve return every
// problem they find, joined with errors.Join; Errors splits them again.
type Error struct {
	Code        Code
	Entries     []Entry  // the entry at fault first; a conflict's other entry second
	Msg         string   // what is wrong and how to fix it, without the position
	Suggestions []string // for ErrUnknown: names the user may have meant
}

func (e *Error) Error() string {
	var b strings.Builder
	if len(e.Entries) > 0 {
		if p := e.Entries[0].Position(); p != "" {
			b.WriteString(p + ": ")
		}
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Entry is the entry at fault.
func (e *Error) Entry() Entry {
	if len(e.Entries) == 0 {
		return Entry{}
	}
	return e.Entries[0]
}

// Errors returns the *Errors inside err (one, or several joined), in order.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, x := range j.Unwrap() {
				walk(x)
			}
			return
		}
		walk(errors.Unwrap(err))
	}
	walk(err)
	return out
}

func newError(code Code, entries []Entry, format string, a ...any) *Error {
	return &Error{Code: code, Entries: entries, Msg: fmt.Sprintf(format, a...)}
}

// where names an entry in a message about another one: `node@22 (moatc.yaml:7)`.
func where(e Entry) string {
	if p := e.Position(); p != "" {
		return fmt.Sprintf("%q (%s)", e.Text, p)
	}
	return fmt.Sprintf("%q", e.Text)
}
