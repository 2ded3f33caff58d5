// The floods of issue 9, one function each: what it sends, at what rate, and what it
// reports.

package main

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/netmutex/netmutex"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// floodRefused: refused LOCKs with descending ids from one session, each datagram full of
// LOCK frames for a key another client holds.
func floodRefused(e *env, stop <-chan struct{}) string {
	const key = "held"
	holder, err := netmutex.Open(20, 100*time.Millisecond, []string{e.addr.String()}, &netmutex.Options{KeyFile: e.keyFile, IsolationInfo: "holder"})
	if err != nil {
		return "holder: " + err.Error()
	}
	defer holder.Close(2, 100*time.Millisecond)
	var hl netmutex.Lock
	if err := holder.Lock(20, 100*time.Millisecond, &hl, key, 30*time.Second); err != nil {
		return "holder: " + err.Error()
	}
	s, err := sessionSock(e)
	if err != nil {
		return err.Error()
	}
	defer s.c.Close()
	session, err := s.handshake("refused-flood")
	if err != nil {
		return "handshake: " + err.Error()
	}
	var codes codeCounts
	go s.readLoop(codes.add)
	id := uint64(1) << 40
	frame := wire.AppendLock(nil, 0, 10_000, key)
	per := (wire.MaxDatagram - seal.Overhead - wire.HeaderSize - wire.TrailerSize) / len(frame)
	if e.keys == nil {
		per = (wire.MaxDatagram - wire.HeaderSize - wire.TrailerSize) / len(frame)
	}
	b := make([]byte, 0, wire.MaxDatagram)
	heartbeat := time.Now()
	n := pace(stop, *flagRefRate, func() {
		b = wire.BeginDatagram(b[:0], wire.Header{Session: session})
		for i := 0; i < per; i++ {
			b = wire.AppendLock(b, id, 10_000, key)
			id--
		}
		s.send(wire.FinishDatagram(b))
		if time.Since(heartbeat) > 5*time.Second {
			heartbeat = time.Now()
			holder.Update(5, 100*time.Millisecond, &hl, 30*time.Second)
		}
	})
	time.Sleep(100 * time.Millisecond)
	return fmt.Sprintf("%d datagrams of %d LOCKs (%d refused LOCKs, ids descending); replies: %s", n, per, n*per, codes.String())
}

// floodConnect: CONNECTs from many source ports; a third never answer the cookie, a third
// send it back (each becomes a session, within the caps), a third send a bogus cookie.
func floodConnect(e *env, stop <-chan struct{}) string {
	k := max(*flagConnSock, 3)
	type connSock struct {
		*sock
		mu sync.Mutex // the sender and the reader (answering cookies) take turns
	}
	var socks []*connSock
	var codes codeCounts
	var smu sync.Mutex
	sessions := map[uint64]bool{}
	var wg sync.WaitGroup
	for i := 0; i < k; i++ {
		s, err := sessionSock(e)
		if err != nil {
			return err.Error()
		}
		cs := &connSock{sock: s}
		socks = append(socks, cs)
		answer := i%3 == 1
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The cookie binds the address: the round trip goes from the same socket.
			cs.readLoop(func(f *wire.Frame) {
				codes.add(f)
				switch f.Op {
				case wire.OpCookie:
					if answer {
						cs.mu.Lock()
						cs.send(connectDatagram(f.ID, "connect-flood", f.Cookie))
						cs.mu.Unlock()
					}
				case wire.OpConnected:
					smu.Lock()
					sessions[f.Session] = true
					smu.Unlock()
				}
			})
		}()
	}
	size := int64(wire.MinConnectDatagram)
	if e.keys != nil {
		size += seal.Overhead
	}
	total := *flagConnB / size
	rate := float64(total) / flagDuration.Seconds()
	bogus := make([]byte, wire.CookieSize)
	var sent int64
	pace(stop, rate, func() {
		if sent >= total {
			return
		}
		i := int(sent % int64(k))
		sent++
		var cookie []byte
		if i%3 == 2 {
			rand.Read(bogus)
			cookie = bogus
		}
		cs := socks[i]
		cs.mu.Lock()
		cs.send(connectDatagram(mrand.Uint64()|1, "connect-flood", cookie))
		cs.mu.Unlock()
	})
	time.Sleep(200 * time.Millisecond)
	for _, s := range socks {
		s.c.Close()
	}
	wg.Wait()
	return fmt.Sprintf("%d first CONNECTs (%d B each) from %d sockets; distinct sessions granted: %d; replies: %s", sent, size, k, len(sessions), codes.String())
}

// floodMass: one session locks as many keys as fast as it can, with a short TTL; they
// expire together; then again with a fresh session, until the flood ends.
func floodMass(e *env, stop <-chan struct{}) string {
	ttlMs := uint32(*flagMassTTL / time.Millisecond)
	var notes []string
	var codes codeCounts
	cycles := 0
	for {
		select {
		case <-stop:
			return fmt.Sprintf("%d cycles [%s]; replies: %s", cycles, strings.Join(notes, "; "), codes.String())
		default:
		}
		s, err := sessionSock(e)
		if err != nil {
			return err.Error()
		}
		session, err := s.handshake("mass")
		if err != nil {
			s.c.Close()
			notes = append(notes, "handshake: "+err.Error())
			time.Sleep(100 * time.Millisecond)
			continue
		}
		cycles++
		n := *flagMassN
		base := uint64(1) << 32
		answered := make([]atomic.Bool, n)
		var granted, refused atomic.Int64
		done := make(chan struct{})
		go func() {
			defer close(done)
			s.readLoop(func(f *wire.Frame) {
				codes.add(f)
				if f.ID >= base && f.ID < base+uint64(n) {
					if !answered[f.ID-base].Swap(true) {
						if f.Op == wire.OpOK {
							granted.Add(1)
						} else {
							refused.Add(1)
						}
					}
				}
			})
		}()
		limit := wire.MaxDatagram - wire.TrailerSize
		if e.keys != nil {
			limit -= seal.Overhead
		}
		b := make([]byte, 0, wire.MaxDatagram)
		start := time.Now()
		// Up to 3 passes: what the server's socket buffer dropped goes again (a LOCK
		// retransmitted with its id is idempotent).
		for pass := 0; pass < 3; pass++ {
			b = wire.BeginDatagram(b[:0], wire.Header{Session: session})
			frames := 0
			for i := 0; i < n; i++ {
				if answered[i].Load() {
					continue
				}
				key := "mass-" + strconv.Itoa(i)
				if len(b)+wire.FrameHeaderSize+7+len(key) > limit {
					s.send(wire.FinishDatagram(b))
					b = wire.BeginDatagram(b[:0], wire.Header{Session: session})
					frames = 0
				}
				b = wire.AppendLock(b, base+uint64(i), ttlMs, key)
				frames++
			}
			if frames > 0 {
				s.send(wire.FinishDatagram(b))
			}
			time.Sleep(100 * time.Millisecond)
		}
		locking := time.Since(start)
		// The locks were granted within [start, start+locking]: they expire within the
		// same span TTL later; the server isolates the session and releases them all.
		e.mark("the locking bursts", start, start.Add(locking))
		e.mark("the mass expiries", start.Add(*flagMassTTL), start.Add(*flagMassTTL+locking+500*time.Millisecond))
		// Let them expire together; keep the session alive meanwhile.
		expire := time.Now().Add(*flagMassTTL + time.Second)
		for time.Now().Before(expire) {
			select {
			case <-stop:
				expire = time.Now()
			case <-time.After(200 * time.Millisecond):
				s.send(wire.FinishDatagram(wire.AppendEmpty(wire.BeginDatagram(b[:0], wire.Header{Session: session}), wire.OpTouch, base+uint64(n)+uint64(time.Now().UnixNano()%1000))))
			}
		}
		s.c.Close()
		<-done
		notes = append(notes, fmt.Sprintf("granted %d, refused %d in %v", granted.Load(), refused.Load(), locking.Round(time.Millisecond)))
	}
}

// floodMultiConnect: as many CONNECTs as fit in one datagram, at a fixed rate.
func floodMultiConnect(e *env, stop <-chan struct{}) string {
	s, err := sessionSock(e)
	if err != nil {
		return err.Error()
	}
	limit := wire.MaxDatagram - wire.TrailerSize
	if e.keys != nil {
		limit -= seal.Overhead
	}
	b := wire.BeginDatagram(nil, wire.Header{})
	per := 0
	for len(b)+wire.FrameHeaderSize+3 <= limit {
		per++
		b = wire.AppendConnect(b, uint64(per), "", nil)
	}
	dg := wire.FinishDatagram(b)
	var codes codeCounts
	done := make(chan struct{})
	go func() { defer close(done); s.readLoop(codes.add) }()
	n := pace(stop, *flagMultRate, func() { s.send(dg) })
	time.Sleep(200 * time.Millisecond)
	s.c.Close()
	<-done
	return fmt.Sprintf("%d datagrams of %d CONNECTs (%d B); replies: %s", n, per, len(dg), codes.String())
}

// floodGarbage: random bytes, datagrams sealed under a wrong secret or an unknown key id
// (CONNECT-sized and small) and plain CONNECTs, at line rate.
func floodGarbage(e *env, stop <-chan struct{}) string {
	wrongSecret := make([]byte, seal.KeySize)
	rand.Read(wrongSecret)
	wrong, _ := seal.NewKey(1, wrongSecret, false)
	unknown, _ := seal.NewKey(200, wrongSecret, false)
	var wg sync.WaitGroup
	var codes codeCounts
	var kinds [5]atomic.Int64
	var socks []*sock
	for i := 0; i < max(*flagGarbSend, 1); i++ {
		s, err := newSock(e, nil)
		if err != nil {
			return err.Error()
		}
		socks = append(socks, s)
		wg.Add(2)
		go func() { defer wg.Done(); s.readLoop(codes.add) }()
		go func(i int) {
			defer wg.Done()
			rng := mrand.New(mrand.NewPCG(uint64(i), uint64(time.Now().UnixNano())))
			sealer := seal.NewSealer()
			junk := make([]byte, wire.MaxDatagram)
			rand.Read(junk)
			connect := connectDatagram(7, "garbage", nil)
			ping := wire.FinishDatagram(wire.AppendEmpty(wire.BeginDatagram(nil, wire.Header{Session: 1}), wire.OpPing, 9))
			var sb []byte
			pace(stop, 0, func() {
				k := rng.IntN(len(kinds))
				kinds[k].Add(1)
				switch k {
				case 0: // random bytes, random length
					n := 1 + rng.IntN(len(junk))
					binary.LittleEndian.PutUint64(junk[rng.IntN(len(junk)-8):], rng.Uint64())
					s.sendRaw(junk[:n])
				case 1: // a CONNECT sealed under the right key id, a wrong secret
					sb = sealer.Seal(sb[:0], wrong, connect)
					s.sendRaw(sb)
				case 2: // a small datagram under the right key id, a wrong secret
					sb = sealer.Seal(sb[:0], wrong, ping)
					s.sendRaw(sb)
				case 3: // a CONNECT under an unknown key id
					sb = sealer.Seal(sb[:0], unknown, connect)
					s.sendRaw(sb)
				case 4: // a plain CONNECT
					s.sendRaw(connect)
				}
			})
		}(i)
	}
	<-stop
	time.Sleep(200 * time.Millisecond)
	for _, s := range socks {
		s.c.Close()
	}
	wg.Wait()
	return fmt.Sprintf("%d senders: random %d, wrong-secret CONNECT %d, wrong-secret small %d, unknown-key CONNECT %d, plain CONNECT %d; replies: %s",
		len(socks), kinds[0].Load(), kinds[1].Load(), kinds[2].Load(), kinds[3].Load(), kinds[4].Load(), codes.String())
}
