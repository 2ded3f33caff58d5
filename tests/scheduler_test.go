package tests

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/netmutex/netmutex/examples/scheduler/store"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// schedulerBin is examples/scheduler, built once per run.
func schedulerBin(t *testing.T) string {
	return sharedBinary(t, "github.com/netmutex/netmutex/examples/scheduler", "scheduler")
}

// schedLine is a line a scheduler printed, with when the test read it.
type schedLine struct {
	text string
	at   time.Time
}

// schedProc is examples/scheduler running as a process.
type schedProc struct {
	id     string
	cmd    *exec.Cmd
	lines  chan schedLine // stdout, closed at its end
	mu     sync.Mutex
	out    []string // every stdout line, for failure messages
	stderr strings.Builder
	waited chan struct{} // closed once cmd.Wait returned; err is then set
	err    error
}

func startScheduler(t *testing.T, bin, id string, args ...string) *schedProc {
	t.Helper()
	p := &schedProc{id: id, lines: make(chan schedLine, 1024), waited: make(chan struct{})}
	if id != "" {
		args = append(args, "-worker-id", id)
	}
	p.cmd = exec.Command(bin, args...)
	stdout, err := p.cmd.StdoutPipe()
	require.NoError(t, err)
	p.cmd.Stderr = &p.stderr
	require.NoError(t, p.cmd.Start())
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.mu.Lock()
			p.out = append(p.out, sc.Text())
			p.mu.Unlock()
			select {
			case p.lines <- schedLine{sc.Text(), time.Now()}:
			default: // nobody reads them: out keeps them
			}
		}
		close(p.lines)
		p.err = p.cmd.Wait() // after the last read of stdout, as exec requires
		close(p.waited)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.waited
	})
	return p
}

// wait waits for the process to exit and returns its error.
func (p *schedProc) wait(t *testing.T, within time.Duration) error {
	t.Helper()
	select {
	case <-p.waited:
		return p.err
	case <-time.After(within):
		t.Fatalf("scheduler %s still running after %v; output:\n%s\nstderr: %s", p.id, within, p.output(), p.errText())
		return nil
	}
}

// errText is its standard error once it exited (exec writes it until then).
func (p *schedProc) errText() string {
	select {
	case <-p.waited:
		return p.stderr.String()
	default:
		return "(still running)"
	}
}

func (p *schedProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.out, "\n")
}

// schedEvent parses "<time> <worker> <event> job=<id> fence=<fence> ...".
func schedEvent(line string) (worker, event, job string, fence uint64, ok bool) {
	f := strings.Fields(line)
	if len(f) < 5 || !strings.HasPrefix(f[3], "job=") || !strings.HasPrefix(f[4], "fence=") {
		return "", "", "", 0, false
	}
	fence, err := strconv.ParseUint(strings.TrimPrefix(f[4], "fence="), 10, 64)
	return f[1], f[2], strings.TrimPrefix(f[3], "job="), fence, err == nil
}

// checkJobRecords checks, for each of jobs 1..n, the store's view: the job is done, its
// accepted writes carry fences that never go down (and go up whenever the writer
// changes), and exactly one holder (one fence, one worker) wrote its final record; it
// returns the records.
func checkJobRecords(t *testing.T, st store.Store, n int) map[string]store.Record {
	t.Helper()
	recs := map[string]store.Record{}
	for i := 1; i <= n; i++ {
		job := strconv.Itoa(i)
		rec, ok, err := st.Get(job)
		require.NoError(t, err)
		if !assert.True(t, ok, "job %s: no record", job) {
			continue
		}
		recs[job] = rec
		assert.Equal(t, store.Done, rec.State, "job %s not done: %+v", job, rec)
		var dones []store.Write
		for k, w := range rec.Writes {
			if w.State == store.Done {
				dones = append(dones, w)
			}
			if k == 0 {
				continue
			}
			prev := rec.Writes[k-1]
			assert.GreaterOrEqual(t, w.Fence, prev.Fence, "job %s: write %d's fence went down: %+v", job, k, rec.Writes)
			if w.Worker != prev.Worker {
				assert.Greater(t, w.Fence, prev.Fence, "job %s: another worker wrote with the same fence: %+v", job, rec.Writes)
			}
		}
		if !assert.Len(t, dones, 1, "job %s: want its result written exactly once: %+v", job, rec.Writes) {
			continue
		}
		done := dones[0]
		assert.Equal(t, done.Fence, rec.Fence, "job %s: the final record's fence is not the done write's", job)
		assert.Equal(t, done.Worker, rec.Worker, "job %s: the final record's worker is not the done write's", job)
		for _, w := range rec.Writes {
			if w.Fence == done.Fence {
				assert.Equal(t, done.Worker, w.Worker, "job %s: two workers under one fence", job)
			}
		}
	}
	return recs
}

// TestSchedulerWorkerKilledMidJob runs examples/scheduler as three worker processes
// against netmutexd, sharing a store directory, and kills one with SIGKILL while it holds
// a job's lock mid-job. Every job must end done exactly once in the store's view; the
// killed worker's job must be retaken by another worker only once its lock expired (a
// TTL after its last renewal, and after the isolation command the expiry runs), with a
// higher fence; and a write with the killed holder's fence must be refused by the store.
func TestSchedulerWorkerKilledMidJob(t *testing.T) {
	began := time.Now()
	const (
		// The two live workers finish the other 3 jobs within 1s (3 rounds of 300ms if
		// they queue behind each other for each) and queue for the victim's job while its
		// lock is still held: until 2s after the victim's start at least.
		jobs = 4
		ttl  = 2 * time.Second
		work = 300 * time.Millisecond
		// isoSleep is how long the isolation command runs: the key must stay locked
		// until it ended.
		isoSleep = 200 * time.Millisecond
	)
	isoLog := filepath.Join(t.TempDir(), "isolations")
	isoCmd := fmt.Sprintf(`{ echo "start $(date +%%s%%N)"; cat; echo; sleep %g; echo "end $(date +%%s%%N)"; } >> %s`, isoSleep.Seconds(), isoLog)
	// The session timeout is longer than the TTL: the killed worker's lock expires while
	// its session still counts as connected, so the server isolates it first.
	d := newDaemon(t, netmutexdBin(t), "-max-ttl", "5s", "-session-timeout", "3s", "-isolate-cmd", isoCmd, "-log-level", "info")
	d.start()
	bin := schedulerBin(t)
	dir := t.TempDir()
	args := []string{"-addr", d.addr, "-store", dir, "-jobs", strconv.Itoa(jobs), "-ttl", ttl.String(), "-work", work.String()}
	setup := time.Since(began)

	// The victim starts alone, so that it surely gets a job; the others start while it
	// works on it, and it is killed at once, a few milliseconds into its 300ms job.
	victim := startScheduler(t, bin, "w1", args...)
	var job string
	var f1 uint64
	deadline := time.After(10 * time.Second)
	for job == "" {
		select {
		case ln, ok := <-victim.lines:
			require.True(t, ok, "the victim exited before starting a job; output:\n%s\nstderr: %s", victim.output(), victim.errText())
			if w, ev, j, f, ok := schedEvent(ln.text); ok && w == "w1" && ev == "start" {
				job, f1 = j, f
			}
		case <-deadline:
			t.Fatalf("the victim started no job in 10s; output:\n%s\nstderr: %s", victim.output(), victim.errText())
		}
	}
	others := []*schedProc{startScheduler(t, bin, "w2", args...), startScheduler(t, bin, "w3", args...)}
	require.NoError(t, victim.cmd.Process.Kill()) // SIGKILL: no unlock, no goodbye
	killed := time.Now()
	victim.wait(t, 5*time.Second)
	for _, p := range others {
		require.NoError(t, p.wait(t, 15*time.Second), "worker %s; output:\n%s\nstderr: %s", p.id, p.output(), p.errText())
	}
	finished := time.Now()

	st, err := store.OpenDir(dir)
	require.NoError(t, err)
	recs := checkJobRecords(t, st, jobs)
	for j, rec := range recs {
		assert.Empty(t, rec.Rejected, "job %s: writes refused in a run without stale writers", j)
		for _, w := range rec.Writes {
			if w.Worker == "w1" {
				assert.True(t, j == job && w.State == store.Started && w.Fence == f1,
					"the victim wrote something other than its one start: job %s %+v", j, w)
			}
		}
	}

	// The victim's job: its start (fence f1), then another worker's, with a higher fence,
	// at least a TTL later, and after the isolation command ended.
	rec := recs[job]
	require.NotEmpty(t, rec.Writes)
	vStart := rec.Writes[0]
	require.Equal(t, store.Write{Fence: f1, Worker: "w1", State: store.Started, At: vStart.At}, vStart, "job %s's first write is not the victim's start", job)
	var retake store.Write
	for _, w := range rec.Writes {
		if w.Fence > f1 {
			retake = w
			break
		}
	}
	require.NotZero(t, retake.Fence, "job %s was never retaken: %+v", job, rec.Writes)
	assert.NotEqual(t, "w1", retake.Worker)
	assert.Equal(t, store.Started, retake.State)
	assert.True(t, retake.At.After(killed), "job %s retaken before the kill", job)
	// The victim's lock was granted and renewed before it wrote its start; the server
	// lets it expire no sooner than a TTL after that renewal. The retaker writes its start
	// after its own grant. Allowed slack: a tenth of the TTL, for the time between the
	// victim's renewal and its write.
	gap := retake.At.Sub(vStart.At)
	assert.GreaterOrEqual(t, gap, ttl-ttl/10, "job %s retaken %v after the victim started it: before its lock (TTL %v) could expire", job, gap, ttl)

	// The expiry isolated the victim's session (one isolation, the victim's), and the key
	// stayed locked until the isolation command had ended.
	isoStart, isoEnd, info := schedIsolation(t, isoLog)
	assert.Contains(t, info, "scheduler worker w1 ", "the isolation was not the victim's")
	assert.Contains(t, info, fmt.Sprintf(" pid %d", victim.cmd.Process.Pid))
	assert.GreaterOrEqual(t, isoStart.Sub(vStart.At), ttl-ttl/10, "the victim was isolated %v after it started: before its TTL", isoStart.Sub(vStart.At))
	assert.False(t, retake.At.Before(isoEnd), "job %s retaken %v before the isolation command ended", job, isoEnd.Sub(retake.At))
	// That is only a check if someone asked for the key while it was locked: a worker
	// queued for it (its "wait" line was read) before the isolation began.
	var queued time.Time
	for _, p := range others {
		for ln := range p.lines { // closed: the process exited
			if w, ev, j, _, ok := schedEvent(ln.text); ok && w == p.id && ev == "wait" && j == job && (queued.IsZero() || ln.at.Before(queued)) {
				queued = ln.at
			}
		}
	}
	require.False(t, queued.IsZero(), "no worker queued for job %s", job)
	assert.True(t, queued.Before(isoStart), "the first worker to queue for job %s did so %v after the isolation began: the check above checked nothing", job, queued.Sub(isoStart))

	// A stale write: the killed holder's fence, arriving late (a process that was paused
	// rather than killed would send it). The store refuses it and keeps the record.
	err = st.Put(job, store.Write{Fence: f1, Worker: "w1", State: store.Done, Result: "stale", At: time.Now()})
	assert.ErrorIs(t, err, store.ErrStaleFence, "a write with the killed holder's fence %d was accepted", f1)
	after, _, err := st.Get(job)
	require.NoError(t, err)
	assert.Equal(t, rec.Writes, after.Writes, "the stale write changed the accepted writes")
	assert.Equal(t, rec.Fence, after.Fence)
	assert.Equal(t, rec.Worker, after.Worker)
	if assert.Len(t, after.Rejected, 1) {
		assert.Equal(t, f1, after.Rejected[0].Fence)
	}

	t.Logf("victim w1 killed %v into job %s (fence %d); a worker queued for it %v after its start; lock expired, isolation ran %v-%v after its start; retaken by %s (fence %d) %v after its start, %v after the kill; all %d jobs done %v after the kill; setup (builds, netmutexd) %v, total %v",
		killed.Sub(vStart.At).Round(time.Millisecond), job, f1, queued.Sub(vStart.At).Round(time.Millisecond),
		isoStart.Sub(vStart.At).Round(time.Millisecond), isoEnd.Sub(vStart.At).Round(time.Millisecond),
		retake.Worker, retake.Fence, gap.Round(time.Millisecond), retake.At.Sub(killed).Round(time.Millisecond),
		jobs, finished.Sub(killed).Round(time.Millisecond), setup.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	for _, p := range others {
		t.Logf("%s:\n%s", p.id, p.output())
	}
}

// schedIsolation reads the one isolation the test's command logged: "start <ns>", the
// IsolationInfo, "end <ns>".
func schedIsolation(t *testing.T, isoLog string) (start, end time.Time, info string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(isoLog)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) >= 3 && strings.HasPrefix(lines[len(lines)-1], "end ") {
			require.Len(t, lines, 3, "want exactly one isolation, the victim's: %q", lines)
			ns := func(s string) time.Time {
				n, err := strconv.ParseInt(strings.Fields(s)[1], 10, 64)
				require.NoError(t, err, "isolation log line %q", s)
				return time.Unix(0, n)
			}
			return ns(lines[0]), ns(lines[2]), lines[1]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no isolation logged in %s: %q", isoLog, b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestSchedulerInProcess runs examples/scheduler's other mode, every worker in one
// process (each with a NetMutex of its own), against netmutexd: it must finish every job
// exactly once and say so.
func TestSchedulerInProcess(t *testing.T) {
	const jobs = 12
	d := newDaemon(t, netmutexdBin(t), "-log-level", "info")
	d.start()
	dir := t.TempDir()
	p := startScheduler(t, schedulerBin(t), "", "-addr", d.addr, "-store", dir, "-workers", "4",
		"-jobs", strconv.Itoa(jobs), "-ttl", "1s", "-work", "50ms")
	require.NoError(t, p.wait(t, 15*time.Second), "output:\n%s\nstderr: %s", p.output(), p.errText())
	assert.Contains(t, p.output(), fmt.Sprintf("%d jobs done in", jobs))
	st, err := store.OpenDir(dir)
	require.NoError(t, err)
	checkJobRecords(t, st, jobs)
}
