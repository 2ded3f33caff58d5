// netmutex locks: the held locks from netmutexd's /locks endpoint, as a table or JSON.

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
)

// defaultHTTP is netmutexd's default -http.
const defaultHTTP = "127.0.0.1:15664"

// maxLocksBody bounds what locks reads from the endpoint.
const maxLocksBody = 256 << 20

// locksReply is the JSON of netmutexd's GET /locks.
type locksReply struct {
	Locks                []lockEntry `json:"locks"`
	Sessions             int         `json:"sessions"`
	LockDelayRemainingMS int64       `json:"lock_delay_remaining_ms"`
}

type lockEntry struct {
	Key         string `json:"key"`
	Fence       uint64 `json:"fence"`
	Session     string `json:"session"`
	HolderInfo  string `json:"holder_info"`
	ExpiresInMS int64  `json:"expires_in_ms"`
	Waiters     int    `json:"waiters"`
}

func locksCommand(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("locks", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: netmutex locks [flags]

Lists the locks a netmutexd holds, sorted by key: key, fence, time left before it
expires, waiters, the holder's IsolationInfo on one line; from the server's
HTTP endpoint (GET http://ADDR/locks; netmutexd -http).

Flags:
`)
		fs.PrintDefaults()
		fmt.Fprint(fs.Output(), exitStatusText)
	}
	addr := fs.String("http", defaultHTTP, "`address` (host:port, or an http:// URL) of netmutexd's HTTP endpoint")
	asJSON := fs.Bool("json", false, "print the server's JSON, indented, instead of a table")
	timeout := fs.Duration("timeout", 5*time.Second, "give up on the endpoint after this long")
	if st := parseFlags(fs, args); st >= 0 {
		return st
	}
	if fs.NArg() > 0 {
		return usageError(fs, "unexpected arguments: %q", fs.Args())
	}
	u, err := locksURL(*addr)
	if err != nil {
		return usageError(fs, "-http: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	body, status, err := fetchLocks(ctx, u)
	if err != nil {
		fmt.Fprintf(stderr, "netmutex locks: %v\n", err)
		return status
	}
	var reply locksReply
	if err := json.Unmarshal(body, &reply); err != nil {
		fmt.Fprintf(stderr, "netmutex locks: %s: not the expected JSON: %v\n", u, err)
		return exitProtocol
	}
	if *asJSON {
		var out bytes.Buffer
		if err := json.Indent(&out, bytes.TrimSpace(body), "", "  "); err != nil {
			fmt.Fprintf(stderr, "netmutex locks: %s: %v\n", u, err)
			return exitProtocol
		}
		out.WriteByte('\n')
		stdout.Write(out.Bytes())
		return 0
	}
	printLocks(stdout, &reply)
	return 0
}

// locksURL is the /locks URL of an -http value: host:port, or a URL whose path is
// replaced.
func locksURL(addr string) (string, error) {
	if addr == "" {
		return "", errors.New("empty")
	}
	if !strings.Contains(addr, "://") {
		addr = "http://" + addr
	}
	u, err := url.Parse(addr)
	if err != nil {
		return "", err
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", fmt.Errorf("%q: want host:port or an http:// URL", addr)
	}
	u.Path, u.RawQuery, u.Fragment = "/locks", "", ""
	return u.String(), nil
}

// fetchLocks GETs u and returns its body, or an error and the status to exit with.
func fetchLocks(ctx context.Context, u string) ([]byte, int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, exitUsage, err
	}
	req.Header.Set("Accept", "application/json")
	// One request, no connection kept: netmutex exits right after.
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return nil, exitUnavailable, fmt.Errorf("cannot reach netmutexd's HTTP endpoint (is netmutexd running with -http at this address?): %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxLocksBody))
	if err != nil {
		return nil, exitUnavailable, fmt.Errorf("GET %s: reading the reply: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		hint := ""
		if resp.StatusCode == http.StatusNotFound {
			hint = " (a netmutexd without /locks, or -http names another server)"
		}
		snippet := oneLine(string(bytes.TrimSpace(body[:min(len(body), 200)])))
		return nil, exitUnavailable, fmt.Errorf("GET %s: %s%s: %s", u, resp.Status, hint, snippet)
	}
	return body, 0, nil
}

// printLocks writes reply as a table sorted by key, then a summary line.
func printLocks(w io.Writer, reply *locksReply) {
	locks := slices.Clone(reply.Locks)
	slices.SortFunc(locks, func(a, b lockEntry) int { return strings.Compare(a.Key, b.Key) })
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	// HOLDER last, as ps puts COMMAND: it is long and of any length.
	fmt.Fprintln(tw, "KEY\tFENCE\tEXPIRES IN\tWAITERS\tHOLDER")
	for _, l := range locks {
		holder := oneLine(l.HolderInfo)
		if holder == "" {
			holder = "session " + oneLine(l.Session)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\t%s\n", oneLine(l.Key), l.Fence, formatMS(l.ExpiresInMS), l.Waiters, holder)
	}
	tw.Flush()
	summary := fmt.Sprintf("\n%d %s, %d %s", len(locks), plural(len(locks), "lock"), reply.Sessions, plural(reply.Sessions, "session"))
	if reply.LockDelayRemainingMS > 0 {
		summary += fmt.Sprintf("; lock-delay in force for %s more: no lock is granted until it ends", formatMS(reply.LockDelayRemainingMS))
	}
	fmt.Fprintln(w, summary)
}

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// formatMS prints milliseconds as a duration rounded to what a reader needs.
func formatMS(ms int64) string {
	d := time.Duration(ms) * time.Millisecond
	switch {
	case d <= 0:
		return "0s"
	case d < time.Second:
		return d.String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

// oneLine renders text chosen by clients (keys, IsolationInfo) on one line of a
// terminal: line breaks become "; ", tabs spaces, and every other control or
// non-printable character, invalid UTF-8 included, is escaped as Go would quote it, so
// that no escape sequence reaches the terminal.
func oneLine(s string) string {
	var b strings.Builder
	s = strings.TrimRight(s, "\r\n")
	for i, r := range s {
		switch {
		case r == '\n':
			b.WriteString("; ")
		case r == '\r' && i+1 < len(s) && s[i+1] == '\n':
		case r == '\t':
			b.WriteByte(' ')
		case r == unicode.ReplacementChar && !strings.HasPrefix(s[i:], string(unicode.ReplacementChar)):
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case !unicode.IsPrint(r) && r != ' ':
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
