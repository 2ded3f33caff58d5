// Injecting faults: what happens to one datagram on its way through the proxy, and the
// scheduler that delivers delayed ones at their time.

package faultproxy

import (
	"container/heap"
	"sync"
	"sync/atomic"
	"time"
)

// inject applies the faults of direction d to b and forwards it. Called only by the
// direction's reading goroutine of f; b is reused by the caller after return.
func (p *Proxy) inject(f *flow, d Direction, b []byte) {
	st := &p.stats[d]
	st.received.Add(1)
	p.mu.Lock()
	fl := p.faults[d]
	p.mu.Unlock()
	fd := &f.dir[d]
	rng := fd.rng
	// Draw every decision, used or not, so that one datagram always takes the same
	// number of draws and the sequence stays aligned under any configuration change.
	rDrop, rCorrupt, rDup, rDelay, rReorder := rng.Float64(), rng.Float64(), rng.Float64(), rng.Float64(), rng.Float64()
	dupDelay, delay := rng.Float64(), rng.Float64()
	bits := rng.Uint64()
	switch {
	case fl.Blackhole:
		st.blackholed.Add(1)
		p.releaseHeld(f, d)
		return
	case rDrop < fl.Drop:
		st.dropped.Add(1)
		p.releaseHeld(f, d)
		return
	}
	pkt := append([]byte(nil), b...)
	if rCorrupt < fl.Corrupt && len(pkt) > 0 {
		st.corrupted.Add(1)
		nflip := 1 + int(bits%3)
		bits /= 3
		for i := 0; i < nflip; i++ {
			pos := int(bits % uint64(len(pkt)*8))
			bits = bits*0x9e3779b97f4a7c15 + 1
			pkt[pos/8] ^= 1 << (pos % 8)
		}
	}
	it := &item{f: f, d: d, b: pkt}
	now := time.Now()
	if rDup < fl.Duplicate {
		st.duplicated.Add(1)
		cp := &item{f: f, d: d, b: pkt}
		p.sched.add(cp, now.Add(time.Duration(dupDelay*float64(fl.MaxDelay))))
	}
	switch {
	case rDelay < fl.Delay && fl.MaxDelay > 0:
		st.delayed.Add(1)
		p.sched.add(it, now.Add(time.Duration(delay*float64(fl.MaxDelay))))
	case rReorder < fl.Reorder:
		// Hold it until the flow's next datagram has left, or the window ends.
		st.reordered.Add(1)
		fd.heldMu.Lock()
		prev := fd.held
		fd.held = it
		fd.heldMu.Unlock()
		if prev != nil {
			p.send(prev)
		}
		p.sched.add(it, now.Add(fl.reorderWindow()))
	default:
		p.send(it)
		p.releaseHeld(f, d)
	}
}

// releaseHeld sends the datagram held for reordering in direction d of f, if any: a
// successor went by (or was lost in its place).
func (p *Proxy) releaseHeld(f *flow, d Direction) {
	fd := &f.dir[d]
	fd.heldMu.Lock()
	held := fd.held
	fd.held = nil
	fd.heldMu.Unlock()
	if held != nil {
		p.send(held)
	}
}

// send writes it out once: an item is sent by whoever claims it first (the reorder
// release or the scheduler).
func (p *Proxy) send(it *item) {
	if !it.sent.CompareAndSwap(false, true) {
		return
	}
	st := &p.stats[it.d]
	var err error
	if it.d == ToServer {
		_, err = it.f.up.Write(it.b)
	} else {
		_, err = p.listen.WriteToUDPAddrPort(it.b, it.f.client)
	}
	if err != nil {
		st.sendErrors.Add(1)
		return
	}
	st.forwarded.Add(1)
}

// The scheduler delivers delayed datagrams at their time.

type item struct {
	f    *flow
	d    Direction
	b    []byte
	due  time.Time
	sent atomic.Bool
}

type itemHeap []*item

func (h itemHeap) Len() int           { return len(h) }
func (h itemHeap) Less(i, j int) bool { return h[i].due.Before(h[j].due) }
func (h itemHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *itemHeap) Push(x any)        { *h = append(*h, x.(*item)) }
func (h *itemHeap) Pop() any {
	old := *h
	it := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return it
}

type scheduler struct {
	mu      sync.Mutex
	h       itemHeap
	wake    chan struct{}
	done    chan struct{}
	stopped bool
}

func (s *scheduler) init() {
	s.wake = make(chan struct{}, 1)
	s.done = make(chan struct{})
}

func (s *scheduler) add(it *item, due time.Time) {
	it.due = due
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	heap.Push(&s.h, it)
	first := s.h[0] == it
	s.mu.Unlock()
	if first {
		select {
		case s.wake <- struct{}{}:
		default:
		}
	}
}

func (s *scheduler) stop() {
	s.mu.Lock()
	if !s.stopped {
		s.stopped = true
		close(s.done)
	}
	s.h = nil
	s.mu.Unlock()
}

func (p *Proxy) schedLoop() {
	defer p.wg.Done()
	s := &p.sched
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		s.mu.Lock()
		var due []*item
		now := time.Now()
		for len(s.h) > 0 && !s.h[0].due.After(now) {
			due = append(due, heap.Pop(&s.h).(*item))
		}
		wait := time.Hour
		if len(s.h) > 0 {
			wait = s.h[0].due.Sub(now)
		}
		s.mu.Unlock()
		for _, it := range due {
			fd := &it.f.dir[it.d]
			fd.heldMu.Lock()
			if fd.held == it {
				fd.held = nil // its window ended without a successor
			}
			fd.heldMu.Unlock()
			p.send(it)
		}
		timer.Reset(wait)
		select {
		case <-s.done:
			return
		case <-s.wake:
		case <-timer.C:
		}
	}
}
