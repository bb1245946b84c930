package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

var apiSocketFlag = &cli.StringFlag{Name: "api-socket", Usage: "control socket of a running ferry (`PATH`)", Required: true}

// apiClient talks HTTP to a ferry control socket.
func apiClient(path string, timeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}},
	}
}

// apiCall sends one request and returns the body of a 2xx answer, or an
// error carrying the server's message.
func apiCall(socket, method, path string, body io.Reader, timeout time.Duration) (*http.Response, error) {
	req, err := http.NewRequest(method, "http://ferry"+path, body)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := apiClient(socket, timeout).Do(req)
	if err != nil {
		return nil, fmt.Errorf("--api-socket %s: %w (is ferry running with this --api-socket?)", socket, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e struct{ Error string }
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
		if json.Unmarshal(b, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s", e.Error)
		}
		return nil, fmt.Errorf("%s %s: %s: %s", method, path, resp.Status, strings.TrimSpace(string(b)))
	}
	return resp, nil
}

// simpleCommand is a client command that sends one request and prints the
// JSON answer.
func simpleCommand(name, usage, method, path string) *cli.Command {
	return &cli.Command{
		Name:  name,
		Usage: usage,
		Flags: []cli.Flag{apiSocketFlag},
		Action: func(c *cli.Context) error {
			resp, err := apiCall(c.String("api-socket"), method, path, nil, 30*time.Second)
			if err != nil {
				return err
			}
			defer resp.Body.Close()
			_, err = io.Copy(c.App.Writer, resp.Body)
			return err
		},
	}
}
