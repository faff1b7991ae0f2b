package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"

	"github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/common"
)

// Errors carry their HTTP status as containerd's error classes (errdefs), which the lower
// layers (ctrd, containerd itself) already use: a handler wraps or returns them, and
// writeError picks the status Docker gives that class.

// apiError is an error whose message is the one the client prints.
type apiError struct {
	class error // an errdefs class: ErrNotFound, ErrConflict, ...
	msg   string
}

func (e *apiError) Error() string { return e.msg }
func (e *apiError) Unwrap() error { return e.class }

func classed(class error, format string, args ...any) error {
	return &apiError{class: class, msg: fmt.Sprintf(format, args...)}
}

func notFound(format string, args ...any) error {
	return classed(errdefs.ErrNotFound, format, args...)
}

func invalid(format string, args ...any) error {
	return classed(errdefs.ErrInvalidArgument, format, args...)
}

func conflict(format string, args ...any) error {
	return classed(errdefs.ErrConflict, format, args...)
}

func forbidden(format string, args ...any) error {
	return classed(errdefs.ErrPermissionDenied, format, args...)
}

func notImplemented(format string, args ...any) error {
	return classed(errdefs.ErrNotImplemented, format, args...)
}

// errNotModified is Docker's 304: starting a running container, stopping a stopped one.
var errNotModified = classed(errdefs.ErrNotModified, "not modified")

// errTooLarge is a request body over the limit.
type errTooLarge struct{ limit int64 }

func (e errTooLarge) Error() string {
	return fmt.Sprintf("the request body is larger than moatc accepts (%d bytes at most)", e.limit)
}

// statusOf maps an error's class to Docker's status code.
func statusOf(err error) int {
	var tl errTooLarge
	switch {
	case errors.As(err, &tl):
		return http.StatusRequestEntityTooLarge
	case errdefs.IsNotFound(err):
		return http.StatusNotFound
	case errdefs.IsInvalidArgument(err):
		return http.StatusBadRequest
	case errdefs.IsConflict(err), errdefs.IsAlreadyExists(err), errdefs.IsFailedPrecondition(err):
		return http.StatusConflict
	case errdefs.IsPermissionDenied(err):
		return http.StatusForbidden
	case errdefs.IsUnauthorized(err):
		return http.StatusUnauthorized
	case errdefs.IsNotModified(err):
		return http.StatusNotModified
	case errdefs.IsNotImplemented(err):
		return http.StatusNotImplemented
	case errdefs.IsUnavailable(err):
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// writeError writes Docker's error answer: {"message": ...} as application/json (clients
// print a body of any other type raw). 304 has no body.
func writeError(w http.ResponseWriter, err error) {
	code := statusOf(err)
	if code == http.StatusNotModified {
		w.WriteHeader(code)
		return
	}
	writeJSON(w, code, common.ErrorResponse{Message: err.Error()})
}

// writeJSON writes v as the answer.
func writeJSON(w http.ResponseWriter, code int, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding the answer: %w", err)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
	return nil
}
