package engine

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/moby/moby/api/types"
	"golang.org/x/sys/unix"
)

// Docker's stream framing without a TTY: each write is a frame, an 8-byte header (the stream:
// 1 stdout, 2 stderr, 3 the system's; three zero bytes; the length, big-endian) and the data.
const (
	frameStdout byte = 1
	frameStderr byte = 2
	frameSystem byte = 3
)

// framer writes each Write as one frame of its stream to w.
type framer struct {
	w      io.Writer
	stream byte
}

func (f *framer) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	hdr := make([]byte, 8, 8+len(p))
	hdr[0] = f.stream
	binary.BigEndian.PutUint32(hdr[4:], uint32(len(p)))
	if _, err := f.w.Write(append(hdr, p...)); err != nil {
		return 0, err
	}
	return len(p), nil
}

// flusher flushes an HTTP answer after each write, so a stream reaches the client as it comes.
type flusher struct {
	w  io.Writer
	rc *http.ResponseController
}

func (f *flusher) Write(p []byte) (int, error) {
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// streamWriters are the writers of a container's stdout and stderr on a stream to a client:
// raw with a TTY (it has one stream), else framed.
func streamWriters(w io.Writer, tty, stdout, stderr bool) (io.Writer, io.Writer) {
	var out, errw io.Writer = io.Discard, io.Discard
	if tty {
		if stdout {
			out = w
		}
		return out, errw
	}
	if stdout {
		out = &framer{w: w, stream: frameStdout}
	}
	if stderr {
		errw = &framer{w: w, stream: frameStderr}
	}
	return out, errw
}

// streamType is the media type of such a stream.
func streamType(tty bool) string {
	if tty {
		return types.MediaTypeRawStream
	}
	return types.MediaTypeMultiplexedStream
}

// hijack takes the connection over for a stream both ways (attach, exec start), answering
// 101 to a client that asked to upgrade to tcp, as Docker's clients do, or 200 otherwise. It
// returns the connection and a reader of what the client sent after its request.
func hijack(w http.ResponseWriter, r *http.Request, mediaType string) (net.Conn, *bufio.Reader, error) {
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return nil, nil, fmt.Errorf("taking over the connection: %w", err)
	}
	head := "HTTP/1.1 200 OK\r\nContent-Type: " + mediaType + "\r\n\r\n"
	if strings.EqualFold(r.Header.Get("Upgrade"), "tcp") {
		head = "HTTP/1.1 101 UPGRADED\r\nContent-Type: " + mediaType + "\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
	}
	if _, err := brw.Writer.WriteString(head); err != nil {
		conn.Close()
		return nil, nil, err
	}
	if err := brw.Writer.Flush(); err != nil {
		conn.Close()
		return nil, nil, err
	}
	return conn, brw.Reader, nil
}

// closeWrite ends the stream from the engine's side while the client may still be sending:
// the client sees the end of the output, not a reset.
func closeWrite(conn net.Conn) {
	if cw, ok := conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
}

// writeJSONBody writes v after headers already sent.
func writeJSONBody(w io.Writer, v any) {
	b, _ := json.Marshal(v)
	w.Write(append(b, '\n'))
}

// watchHangup calls gone once the client has closed its connection entirely, not just its
// sending side (as the CLI does at the end of its stdin, and at once without stdin): the
// kernel then reports POLLHUP on the socket. It returns when ctx ends.
func watchHangup(ctx context.Context, conn net.Conn, gone func()) {
	sc, ok := conn.(syscall.Conn)
	if !ok {
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hup := false
		raw.Control(func(fd uintptr) {
			fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
			if n, err := unix.Poll(fds, 0); err == nil && n > 0 {
				hup = fds[0].Revents&(unix.POLLHUP|unix.POLLERR) != 0
			}
		})
		if hup {
			gone()
			return
		}
	}
}
