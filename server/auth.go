// The receive stage's defences (docs/PROTOCOL.md, Security): sealed datagrams, the
// cookie, the CONNECT rate, and the routes that take each reply back the way its request
// came. The checks themselves are in commands.go, the sealing of replies in replies.go.

package server

import (
	"github.com/netmutex/netmutex/internal/batchio"
	"github.com/netmutex/netmutex/internal/seal"
	"github.com/netmutex/netmutex/internal/wire"
)

// guard is the receive stage's state, owned by the loop.
type guard struct {
	routes      []route       // per batch: where the replies to each datagram that drew commands go
	keys        *seal.Keyring // nil: plain datagrams only
	plain       [][]byte      // with keys: per receive slot, the datagram opened
	sealer      *seal.Sealer  // seals every reply, under the key that opened its request
	sealBufs    [][]byte      // with keys: per reply datagram, its sealed form
	maxPlain    int           // the largest plain reply datagram: MaxDatagram less seal.Overhead with keys
	cookies     *cookieJar
	ids         *idSource
	connects    *rateTable // validated CONNECTs per address
	authReplies *rateTable // ERROR AUTH replies per (not validated) address
	clock       int64      // the loop's clock for the batch being processed
	nEarly      int        // reply datagrams of the batch queued by the receive stage
	manyFences  int        // fences the batch's LOCKMANYs may take beyond one per command
}

// initGuard sets up the receive stage's defences for cfg.
func (s *Server) initGuard(cfg Config) {
	s.routes = make([]route, 0, batchio.MaxBatch)
	s.keys = cfg.Keys
	s.maxPlain = wire.MaxDatagram
	if s.keys != nil {
		s.sealer = seal.NewSealer()
		s.maxPlain = wire.MaxDatagram - seal.Overhead
		s.log.Info("datagrams sealed", "key_file", cfg.KeyFile, "keys", s.keys.Len(),
			"sealing_key", s.keys.Sealing().ID)
	} else if cfg.Insecure {
		s.log.Warn("no keys and -insecure: datagrams are not authenticated, sessions are bound to addresses only",
			"addr", cfg.ListenAddr)
	}
	s.cookies = newCookieJar()
	s.ids = newIDSource()
	s.connects = newRateTable(cfg.ConnectRate, maxRateEntries)
	s.authReplies = newRateTable(cfg.ConnectRate, maxRateEntries)
}

// beginBatch resets the per-batch state before a batch is parsed, and ages a few entries
// of the rate tables (O(1) per batch).
func (s *Server) beginBatch(now int64) {
	s.routes = s.routes[:0]
	s.out = s.out[:0]
	s.nEarly = 0
	s.manyFences = 0
	s.clock = now
	s.connects.age(now, 2)
	s.authReplies.age(now, 2)
}
