// The Prometheus collector: every netmutex_* metric, read at scrape time from the
// server's atomics (Stats counters, the metrics folded in per batch, the loop's gauges).

package server

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// collector exposes a Server's figures. It holds no state of its own: every Collect
// reads the atomics, so the server's hot path never calls into Prometheus.
type collector struct {
	s *Server

	requests, badDatagrams, syscalls                           *prometheus.Desc
	datagramsIn, datagramsOut, framesIn, framesOut, sendErrors *prometheus.Desc
	framesPerDgm, dgmsPerCall                                  *prometheus.Desc
	authRefused, cookies, rateLimited, batches, ticks          *prometheus.Desc
	grants, pushed, pushDropped, sessionsEnded                 *prometheus.Desc
	sessions, locksHeld, waiters, lockDelay, fencesLeft        *prometheus.Desc
	isolations, isoStarted, isoRun, isoFailed, isoDuration     *prometheus.Desc
	isoRunning, isoQueued, fsyncs, stateWriteErrors            *prometheus.Desc
	up, leader                                                 *prometheus.Desc
}

func newCollector(s *Server) *collector {
	d := func(name, help string, labels ...string) *prometheus.Desc {
		return prometheus.NewDesc("netmutex_"+name, help, labels, nil)
	}
	return &collector{
		s:                s,
		requests:         d("requests_total", "Requests handed to the lock machine, by op and by outcome (the reply, an error's code, or dropped: below the ack floor).", "op", "outcome"),
		badDatagrams:     d("bad_datagrams_total", "Datagrams dropped as bad, without reply, by reason.", "reason"),
		syscalls:         d("syscalls_total", "Batched socket calls: in, one receive (recvmmsg on Linux); out, one send (sendmmsg).", "direction"),
		datagramsIn:      d("datagrams_received_total", "Datagrams received, bad ones included."),
		datagramsOut:     d("datagrams_sent_total", "Reply datagrams sent."),
		framesIn:         d("frames_received_total", "Request frames handed to the lock machine (PAD excluded)."),
		framesOut:        d("frames_sent_total", "Reply frames sent, pushed grants included."),
		sendErrors:       d("send_errors_total", "Reply datagrams that could not be sent."),
		framesPerDgm:     d("frames_per_datagram", "Request frames per received datagram that carried any."),
		dgmsPerCall:      d("datagrams_per_syscall", "Datagrams per receive call that returned any (in) and per send call (out).", "direction"),
		authRefused:      d("auth_refused_total", "ERROR AUTH replies sent to datagrams that did not authenticate."),
		cookies:          d("cookies_sent_total", "COOKIE replies sent to CONNECTs without a valid cookie."),
		rateLimited:      d("rate_limited_total", "CONNECTs refused RATE_LIMITED, and ERROR AUTH replies left out, over the per-address rate."),
		batches:          d("batches_total", "Receive calls that returned datagrams: one Apply each."),
		ticks:            d("ticks_total", "Wake-ups of the loop without traffic."),
		grants:           d("grants_total", "Locks granted (a LOCKMANY grant counts once)."),
		pushed:           d("pushed_grants_total", "Grants sent to waiters unasked."),
		pushDropped:      d("pushed_grants_dropped_total", "Grants to waiters not sent: the session ended in the same batch."),
		sessionsEnded:    d("sessions_ended_total", "Sessions ended by DISCONNECT or timeout."),
		sessions:         d("sessions", "Sessions now, isolated ones included."),
		locksHeld:        d("locks_held", "Locks held now."),
		waiters:          d("waiters", "Waiting LOCKs and LOCKMANYs queued now."),
		lockDelay:        d("lock_delay_remaining_seconds", "Time left of the start-up lock-delay, during which no lock is granted."),
		fencesLeft:       d("fences_reserved", "Fences reserved durably and not yet handed out."),
		isolations:       d("isolations_total", "Sessions isolated (a lock's TTL ran out while its session lived)."),
		isoStarted:       d("isolation_runs_started_total", "Isolation command runs started."),
		isoRun:           d("isolation_runs_total", "Isolation command runs finished, whatever their exit status."),
		isoFailed:        d("isolation_runs_failed_total", "Isolation command runs that failed, timed out, could not start or were given up on."),
		isoDuration:      d("isolation_duration_seconds", "How long isolation command runs took."),
		isoRunning:       d("isolation_runs_running", "Isolation command runs going on now."),
		isoQueued:        d("isolation_runs_queued", "Isolation command runs waiting for a free slot."),
		fsyncs:           d("fsyncs_total", "fsyncs of the data directory's state file and of the directory."),
		stateWriteErrors: d("state_write_errors_total", "Writes of the state file that failed."),
		up:               d("loop_running", "1 while the server's network loop runs."),
		leader:           d("leader", "1 while this server serves: a single server, or a cluster node that leads and has applied every earlier entry; 0 for a follower."),
	}
}

// Describe sends every Desc.
func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.requests, c.badDatagrams, c.syscalls, c.datagramsIn,
		c.datagramsOut, c.framesIn, c.framesOut, c.sendErrors, c.framesPerDgm, c.dgmsPerCall,
		c.authRefused, c.cookies, c.rateLimited, c.batches, c.ticks, c.grants, c.pushed,
		c.pushDropped, c.sessionsEnded, c.sessions, c.locksHeld, c.waiters, c.lockDelay,
		c.fencesLeft, c.isolations, c.isoStarted, c.isoRun, c.isoFailed,
		c.isoDuration, c.isoRunning, c.isoQueued, c.fsyncs, c.stateWriteErrors, c.up, c.leader} {
		ch <- d
	}
}

// Collect reads the figures.
func (c *collector) Collect(ch chan<- prometheus.Metric) {
	s, m, st := c.s, c.s.metrics, &c.s.stats
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	histogram := func(d *prometheus.Desc, h *hist, scale float64, labels ...string) {
		n, sum, b := h.snapshot(scale)
		ch <- prometheus.MustNewConstHistogram(d, n, sum, b, labels...)
	}
	for k := range numKinds {
		if kindNames[k] == "" {
			continue
		}
		for o := range numOutcomes {
			// A series appears with its first count, but every op's success is there
			// from the start.
			v := m.ops[k*numOutcomes+o].Load()
			if outcomeNames[o] != "" && (v > 0 || o == successOf(kind(k))) {
				counter(c.requests, v, kindNames[k], outcomeNames[o])
			}
		}
	}
	for i, name := range badNames {
		counter(c.badDatagrams, st.badReason[i].Load(), name)
	}
	counter(c.syscalls, st.syscallsIn.Load(), "in")
	counter(c.syscalls, st.syscallsOut.Load(), "out")
	counter(c.datagramsIn, st.datagrams.Load())
	counter(c.datagramsOut, st.datagramsOut.Load())
	counter(c.framesIn, st.requests.Load())
	counter(c.framesOut, st.replies.Load())
	counter(c.sendErrors, st.sendErrors.Load())
	histogram(c.framesPerDgm, m.framesPerDgm, 1)
	histogram(c.dgmsPerCall, m.dgmsPerRecv, 1, "in")
	histogram(c.dgmsPerCall, m.dgmsPerSend, 1, "out")
	counter(c.authRefused, st.authRefused.Load())
	counter(c.cookies, st.cookies.Load())
	counter(c.rateLimited, st.rateLimited.Load())
	counter(c.batches, st.batches.Load())
	counter(c.ticks, st.ticks.Load())
	counter(c.grants, st.grants.Load())
	counter(c.pushed, st.pushed.Load())
	counter(c.pushDropped, st.pushDropped.Load())
	counter(c.sessionsEnded, m.sessionsEnded.Load())
	gauge(c.sessions, float64(m.sessions.Load()))
	gauge(c.locksHeld, float64(m.locksHeld.Load()))
	gauge(c.waiters, float64(m.waiters.Load()))
	gauge(c.lockDelay, s.lockDelayRemaining().Seconds())
	gauge(c.fencesLeft, float64(m.fencesLeft.Load()))
	counter(c.isolations, st.isolations.Load())
	counter(c.isoStarted, st.isoStarted.Load())
	counter(c.isoRun, st.isoRun.Load())
	counter(c.isoFailed, st.isoFailed.Load())
	histogram(c.isoDuration, m.isoDuration, 1e-9)
	gauge(c.isoRunning, float64(m.isoRunning.Load()))
	gauge(c.isoQueued, float64(m.isoQueued.Load()))
	counter(c.fsyncs, s.store.fsyncs.Load())
	counter(c.stateWriteErrors, s.store.writeErrors.Load())
	up := 1.0
	select {
	case <-s.loopDone:
		up = 0
	default:
	}
	gauge(c.up, up)
	leading := 0.0
	if s.Leading() {
		leading = 1
	}
	gauge(c.leader, leading)
}

// successOf is the outcome of a request of kind k that succeeded.
func successOf(k kind) int {
	switch k {
	case kindConnect:
		return outConnected
	case kindPing, kindTouch, kindUnlockAll:
		return outPong
	case kindDisconnect:
		return outDisconnected
	}
	return outOK
}

// lockDelayRemaining is how much of the start-up lock-delay is left: 0 without one.
func (s *Server) lockDelayRemaining() time.Duration {
	return max(time.Duration(s.delayUntil-s.now()), 0)
}
