package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/netmutex/netmutex/bench/load"
	goredis "github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"
)

// The Redis lock of the comparison: the single-instance algorithm Redis documents.
// Lock: SET key token NX PX ttl. Unlock: delete the key only if it still holds our
// token, in one Lua script (sent as EVALSHA, falling back to EVAL once).
const redisUnlockScript = `if redis.call("get", KEYS[1]) == ARGV[1] then return redis.call("del", KEYS[1]) else return 0 end`

// errRedisLost is returned by unlock when the key no longer holds our token.
var errRedisLost = errors.New("redis: lock lost before unlock")

// redisServer is a redis-server this program started: loopback, a free port,
// persistence off, stopped by stop.
type redisServer struct {
	cmd     *exec.Cmd
	addr    string
	dir     string
	version string
	exited  chan struct{}
}

// redisInstallScript is the script that installs redis-server, next to this file.
func redisInstallScript() string {
	_, file, _, ok := runtime.Caller(0)
	if ok {
		p := filepath.Join(filepath.Dir(file), "install-redis.sh")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	for _, p := range []string{"bench/compare/install-redis.sh", "install-redis.sh"} {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// installRedisHint says how to get redis-server.
const installRedisHint = "bash bench/compare/install-redis.sh installs it (apt-get, as root or through sudo), or run again with -install-redis, which runs that script"

// findRedis returns the path of redis-server. When it is missing, it runs
// install-redis.sh if install is set, saying so first, its output going to log; if
// install is not set, it returns an error that says how to get it.
func findRedis(install bool, log io.Writer) (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	if !install {
		fmt.Fprintf(log, "redis-server not found: the Redis peers are skipped; %s.\n\n", installRedisHint)
		return "", errors.New("redis-server not found; install it with bash bench/compare/install-redis.sh, or run with -install-redis")
	}
	script := redisInstallScript()
	if script == "" {
		return "", fmt.Errorf("redis-server not found, and install-redis.sh is not next to the sources to install it; install redis-server by hand")
	}
	fmt.Fprintf(log, "redis-server not found; -install-redis is set, so this runs bash %s now:\n"+
		"  apt-get update && apt-get install -y --no-install-recommends redis-server (through sudo unless root)\n", script)
	cmd := exec.Command("bash", script)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("redis-server not found and %s failed: %w", script, err)
	}
	return exec.LookPath("redis-server")
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// startRedis starts redis-server on a free loopback port with persistence off and
// waits until it answers PING.
func startRedis(install bool, log io.Writer) (*redisServer, error) {
	bin, err := findRedis(install, log)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(log, "starting %s on a free loopback port ...\n", bin)
	var lastErr error
	for range 3 { // the free port can be taken between freePort and redis' bind
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		dir, err := os.MkdirTemp("", "netmutex-bench-redis-")
		if err != nil {
			return nil, err
		}
		rs := &redisServer{addr: "127.0.0.1:" + strconv.Itoa(port), dir: dir, exited: make(chan struct{})}
		rs.cmd = exec.Command(bin,
			"--bind", "127.0.0.1", "--port", strconv.Itoa(port),
			"--save", "", "--appendonly", "no", // persistence off
			"--dir", dir, "--daemonize", "no", "--logfile", "",
		)
		var out strings.Builder
		rs.cmd.Stdout, rs.cmd.Stderr = &out, &out
		if err := rs.cmd.Start(); err != nil {
			os.RemoveAll(dir)
			return nil, fmt.Errorf("start %s: %w", bin, err)
		}
		go func() { rs.cmd.Wait(); close(rs.exited) }()
		if lastErr = rs.waitReady(5 * time.Second); lastErr == nil {
			return rs, nil
		}
		rs.stop()
		lastErr = fmt.Errorf("%w; its output: %s", lastErr, strings.TrimSpace(out.String()))
	}
	return nil, lastErr
}

func (rs *redisServer) waitReady(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		select {
		case <-rs.exited:
			return fmt.Errorf("redis-server exited at start")
		default:
		}
		c, err := net.DialTimeout("tcp", rs.addr, 200*time.Millisecond)
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			_, err = c.Write([]byte("INFO server\r\n"))
			buf := make([]byte, 4096)
			n := 0
			if err == nil {
				n, err = c.Read(buf)
			}
			c.Close()
			if err == nil && !strings.Contains(string(buf[:n]), "LOADING") {
				if _, v, ok := strings.Cut(string(buf[:n]), "redis_version:"); ok {
					rs.version, _, _ = strings.Cut(v, "\r\n")
				}
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("redis-server on %s not ready after %v: %v", rs.addr, limit, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpu returns the server process's CPU time so far.
func (rs *redisServer) cpu() (time.Duration, bool) { return load.ProcCPU(rs.cmd.Process.Pid) }

func (rs *redisServer) stop() {
	rs.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-rs.exited:
	case <-time.After(5 * time.Second):
		rs.cmd.Process.Kill()
		<-rs.exited
	}
	os.RemoveAll(rs.dir)
}

// redisSettings is said in every Redis result's note.
func (rs *redisServer) settings() string {
	return fmt.Sprintf("redis-server %s on %s, --save \"\" --appendonly no, otherwise defaults", rs.version, rs.addr)
}

// rueidisSystem is Redis through rueidis with auto-pipelining (its default): every
// goroutine's commands share the client's pipelined connections.
type rueidisSystem struct {
	srv     *redisServer
	clients []rueidis.Client
	unlock  *rueidis.Lua
	ttlMs   int64
	prefix  string
}

func startRueidis(srv *redisServer, conns int, ttl time.Duration) (*rueidisSystem, error) {
	s := &rueidisSystem{srv: srv, unlock: rueidis.NewLuaScript(redisUnlockScript), ttlMs: ttl.Milliseconds(), prefix: load.RunID()}
	for range conns {
		c, err := rueidis.NewClient(rueidis.ClientOption{InitAddress: []string{srv.addr}})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("rueidis: %w", err)
		}
		s.clients = append(s.clients, c)
	}
	return s, nil
}

func (s *rueidisSystem) Name() string { return "redis-rueidis" }
func (s *rueidisSystem) Note() string {
	return fmt.Sprintf("%s; rueidis %d client(s), default ClientOption: auto-pipelining, PipelineMultiplex 2 (4 connections)", s.srv.settings(), len(s.clients))
}
func (s *rueidisSystem) ServerCPU() (time.Duration, bool) { return s.srv.cpu() }

func (s *rueidisSystem) NewLocker(g int) (load.Locker, error) {
	token := s.prefix + "-" + strconv.Itoa(g)
	return &rueidisLocker{s: s, c: s.clients[g%len(s.clients)], token: token, args: []string{token}, keys: make([]string, 1)}, nil
}

func (s *rueidisSystem) Close() error {
	for _, c := range s.clients {
		c.Close()
	}
	return nil
}

type rueidisLocker struct {
	s     *rueidisSystem
	c     rueidis.Client
	token string
	held  string
	keys  []string // reused for the script's KEYS
	args  []string // the token, for the script's ARGV
}

func (l *rueidisLocker) Lock(ctx context.Context, key string) (bool, error) {
	err := l.c.Do(ctx, l.c.B().Set().Key(key).Value(l.token).Nx().PxMilliseconds(l.s.ttlMs).Build()).Error()
	if rueidis.IsRedisNil(err) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	l.held = key
	return true, nil
}

func (l *rueidisLocker) Unlock(ctx context.Context) error {
	l.keys[0] = l.held
	n, err := l.s.unlock.Exec(ctx, l.c, l.keys, l.args).AsInt64()
	if err != nil {
		return err
	}
	if n != 1 {
		return errRedisLost
	}
	return nil
}

// goredisSystem is Redis through go-redis v9 with a connection pool as large as the
// goroutines it serves, so no goroutine waits for a connection.
type goredisSystem struct {
	srv      *redisServer
	clients  []*goredis.Client
	unlock   *goredis.Script
	ttl      time.Duration
	prefix   string
	poolSize int
}

func startGoredis(srv *redisServer, conns, goroutines int, ttl time.Duration) (*goredisSystem, error) {
	s := &goredisSystem{srv: srv, unlock: goredis.NewScript(redisUnlockScript), ttl: ttl, prefix: load.RunID(),
		poolSize: (goroutines + conns - 1) / conns}
	for range conns {
		c := goredis.NewClient(&goredis.Options{Addr: srv.addr, PoolSize: s.poolSize})
		s.clients = append(s.clients, c)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("go-redis: %w", err)
		}
	}
	return s, nil
}

func (s *goredisSystem) Name() string { return "redis-goredis" }
func (s *goredisSystem) Note() string {
	return fmt.Sprintf("%s; go-redis %d client(s), PoolSize %d (= goroutines per client), other Options default", s.srv.settings(), len(s.clients), s.poolSize)
}
func (s *goredisSystem) ServerCPU() (time.Duration, bool) { return s.srv.cpu() }

func (s *goredisSystem) NewLocker(g int) (load.Locker, error) {
	return &goredisLocker{s: s, c: s.clients[g%len(s.clients)], token: s.prefix + "-" + strconv.Itoa(g), keys: make([]string, 1)}, nil
}

func (s *goredisSystem) Close() error {
	var errs []error
	for _, c := range s.clients {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

type goredisLocker struct {
	s     *goredisSystem
	c     *goredis.Client
	token string
	held  string
	keys  []string
}

func (l *goredisLocker) Lock(ctx context.Context, key string) (bool, error) {
	// SET key token NX PX ttl (SetNX picks PX for TTLs that are not whole seconds,
	// EX for whole seconds: the same command, the same meaning).
	ok, err := l.c.SetNX(ctx, key, l.token, l.s.ttl).Result()
	if err != nil {
		return false, err
	}
	if ok {
		l.held = key
	}
	return ok, nil
}

func (l *goredisLocker) Unlock(ctx context.Context) error {
	l.keys[0] = l.held
	n, err := l.s.unlock.Run(ctx, l.c, l.keys, l.token).Int64()
	if err != nil {
		return err
	}
	if n != 1 {
		return errRedisLost
	}
	return nil
}
